//! FinCare: transactions (pseudonymous, never clinical) with a date filter,
//! and their CSV export.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use careconnect::core::finance::{DateRange, Transaction};
use serde::{Deserialize, Serialize};

use crate::web::{self, AppError, User};

pub(super) fn routes() -> Router<web::State> {
    Router::new()
        .route("/fincare", get(page))
        .route("/fincare/transactions.csv", get(export))
}

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD`; empty fields mean unbounded.
#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl Filter {
    fn range(&self) -> DateRange {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        DateRange {
            from: some(&self.from),
            to: some(&self.to),
        }
    }
}

#[derive(Serialize)]
struct Page<'a> {
    me: web::Me,
    from: &'a str,
    to: &'a str,
    query: String,
    transactions: &'a [Transaction],
    total_pence: u64,
}

async fn page(
    State(app): State<web::State>,
    user: User,
    web::Query(filter): web::Query<Filter>,
) -> Result<Response, AppError> {
    let txs = app
        .clinic
        .finance()
        .transactions(&user.principal, &filter.range())
        .await?;
    let query = serde_urlencoded::to_string([("from", &filter.from), ("to", &filter.to)])
        .map_err(|_| AppError::BadRequest("filter"))?;
    app.render(
        "fincare.html",
        Page {
            me: user.view(),
            from: &filter.from,
            to: &filter.to,
            query,
            total_pence: txs.iter().map(|t| u64::from(t.amount_pence)).sum(),
            transactions: &txs,
        },
    )
}

async fn export(
    State(app): State<web::State>,
    user: User,
    web::Query(filter): web::Query<Filter>,
) -> Result<Response, AppError> {
    let csv = app
        .clinic
        .finance()
        .export_csv(&user.principal, &filter.range())
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"transactions.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}
