//! FinCare (finance): transactions with amount, date, description and a
//! pseudonymous patient id, filtered by date, exported as CSV.
//!
//! A transaction is written by a payment in the same atomic step that marks
//! the prescription paid ([`crate::patients::CareConnect::pay`]). It
//! carries no clinical data (the description is fixed text, never the
//! drug) and no name or real id: the patient appears as a keyed HMAC of
//! their identity under a key nothing else uses (stable, not reversible).
//! It is sealed under the clinic keyring, not the patient's, so an erasure
//! leaves the books intact.

use careconnect_authz::{Action, Principal, Resource};
use careconnect_storage::Collection;
use serde::{Deserialize, Serialize};

use crate::clinic::Clinic;
use crate::error::CoreError;
use crate::rows;

/// The collection of finance transactions.
pub const TRANSACTIONS_COLLECTION: &str = "core_transactions";

/// One transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Its id.
    pub id: String,
    /// The day, as Unix seconds at 00:00 UTC. Finance sees days only: a
    /// time to the second would match the payment's entry in the audit log
    /// and link the two pseudonyms. Within a day, transactions are listed
    /// by id (a keyed MAC: no order of payment shows).
    pub at: u64,
    /// Amount in pence.
    pub amount_pence: u32,
    /// What it was for (no clinical detail).
    pub description: String,
    /// The patient's pseudonym.
    pub pseudonym: String,
}

/// A date range, inclusive, as `YYYY-MM-DD` days in UTC; either end open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DateRange {
    /// First day included.
    pub from: Option<String>,
    /// Last day included.
    pub to: Option<String>,
}

impl DateRange {
    /// The range as Unix seconds, `[from, to)`.
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for a date that is not `YYYY-MM-DD` or a
    /// range that ends before it starts.
    pub fn bounds(&self) -> Result<(u64, u64), CoreError> {
        let day = |s: &Option<String>, end: bool| -> Result<Option<u64>, CoreError> {
            let Some(s) = s.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
                return Ok(None);
            };
            let d = crate::records::parse_date(s).ok_or(CoreError::Invalid("date"))?;
            let secs = d.midnight().assume_utc().unix_timestamp();
            let secs = if end { secs + 86_400 } else { secs };
            Ok(Some(u64::try_from(secs.max(0)).unwrap_or(0)))
        };
        let from = day(&self.from, false)?.unwrap_or(0);
        let to = day(&self.to, true)?.unwrap_or(u64::MAX);
        if from >= to {
            return Err(CoreError::Invalid("date range"));
        }
        Ok((from, to))
    }
}

/// FinCare.
#[derive(Debug, Clone, Copy)]
pub struct FinCare<'a> {
    clinic: &'a Clinic,
}

impl Clinic {
    /// FinCare: transactions and their CSV export.
    pub fn finance(&self) -> FinCare<'_> {
        FinCare { clinic: self }
    }
}

/// A CSV cell that a spreadsheet would run as a formula (`=`, `+`, `-`,
/// `@`, tab, CR) made inert with a leading apostrophe (OWASP's advice).
pub fn neutralise_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// A Unix time's day, `YYYY-MM-DD` UTC.
pub(crate) fn format_day(at: u64) -> String {
    let t = i64::try_from(at)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// The start (00:00 UTC) of the day `at` falls in.
pub(crate) fn day_of(at: u64) -> u64 {
    at - at % 86_400
}

impl FinCare<'_> {
    /// Transactions in `range`, oldest first.
    ///
    /// # Errors
    ///
    /// [`CoreError::Invalid`] for a bad range; [`CoreError::Denied`]
    /// (audited) for anyone but finance (administrators: audited override).
    pub async fn transactions(
        &self,
        who: &Principal,
        range: &DateRange,
    ) -> Result<Vec<Transaction>, CoreError> {
        self.list(who, range, Action::ListTransactions).await
    }

    async fn list(
        &self,
        who: &Principal,
        range: &DateRange,
        action: Action,
    ) -> Result<Vec<Transaction>, CoreError> {
        let c = &self.clinic.inner;
        let (from, to) = range.bounds()?;
        c.decide(who, action, &Resource::Finance, "transactions".into())
            .await?;
        let coll = Collection::new(TRANSACTIONS_COLLECTION)?;
        let mut out: Vec<Transaction> = c
            .all(&coll)
            .await?
            .iter()
            .filter_map(|r| {
                rows::open::<Transaction>(&c.keys.current(), &coll, r)
                    .filter(|t| t.id == r.id.as_str())
            })
            // Rows written before days only were kept show their day too.
            .map(|t| Transaction {
                at: day_of(t.at),
                ..t
            })
            .filter(|t| t.at >= from && t.at < to)
            .collect();
        out.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The transactions in `range` as CSV (header `id,date_utc,amount,
    /// description,patient_pseudonym`; amounts in pounds), every cell
    /// neutralised against formula injection.
    ///
    /// # Errors
    ///
    /// As [`FinCare::transactions`].
    pub async fn export_csv(
        &self,
        who: &Principal,
        range: &DateRange,
    ) -> Result<String, CoreError> {
        let txs = self.list(who, range, Action::ExportTransactions).await?;
        let mut w = csv::Writer::from_writer(Vec::new());
        let io = |_| CoreError::Corrupt("csv");
        w.write_record([
            "id",
            "date_utc",
            "amount",
            "description",
            "patient_pseudonym",
        ])
        .map_err(io)?;
        for t in &txs {
            let amount = format!("{}.{:02}", t.amount_pence / 100, t.amount_pence % 100);
            let time = format_day(t.at);
            w.write_record([
                neutralise_formula(&t.id).as_ref(),
                neutralise_formula(&time).as_ref(),
                neutralise_formula(&amount).as_ref(),
                neutralise_formula(&t.description).as_ref(),
                neutralise_formula(&t.pseudonym).as_ref(),
            ])
            .map_err(io)?;
        }
        let bytes = w.into_inner().map_err(|_| CoreError::Corrupt("csv"))?;
        String::from_utf8(bytes).map_err(|_| CoreError::Corrupt("csv"))
    }
}
