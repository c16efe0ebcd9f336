//! Medicloud: documents, each sealed under a KMS data key of its own,
//! streamed in and out (upload, list, download, share, revoke, delete).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::forms::{Revoke, Share};
use crate::web::{self, AppError, Empty, Post, User};

/// Multipart framing and the CSRF field beside the file.
const UPLOAD_OVERHEAD: u64 = 64 * 1024;

pub(super) fn routes() -> Router<web::State> {
    Router::new()
        .route("/medicloud", get(page))
        .route("/medicloud/documents/{id}", get(download))
        .route("/medicloud/documents/{id}/share", post(share))
        .route("/medicloud/documents/{id}/revoke", post(revoke))
        .route("/medicloud/documents/{id}/delete", post(delete))
}

pub(super) fn upload_routes(app: web::State) -> Router {
    let limit =
        usize::try_from(app.upload_limit.saturating_add(UPLOAD_OVERHEAD)).unwrap_or(usize::MAX);
    Router::new()
        .route("/medicloud/upload", post(upload))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

#[derive(Serialize)]
struct DocumentView {
    id: String,
    name: String,
    mime: &'static str,
    size: u64,
    sha256: String,
    created_at: u64,
    owner: String,
    mine: bool,
}

#[derive(Serialize)]
struct Page {
    me: web::Me,
    documents: Vec<DocumentView>,
    limit_mib: u64,
}

async fn page(State(app): State<web::State>, user: User) -> Result<Response, AppError> {
    let docs = app.clinic.medicloud().list(&user.principal).await?;
    app.render(
        "medicloud.html",
        Page {
            documents: docs
                .into_iter()
                .map(|d| DocumentView {
                    mine: d.owner == user.principal.user,
                    owner: d.owner.subject().to_owned(),
                    mime: d.file_type.mime(),
                    id: d.id,
                    name: d.name,
                    size: d.size,
                    sha256: d.sha256,
                    created_at: d.created_at,
                })
                .collect(),
            me: user.view(),
            limit_mib: app.upload_limit / (1024 * 1024),
        },
    )
}

/// Longest CSRF field read before the token is judged.
const TOKEN_FIELD_MAX: usize = 256;

/// A file part that sends nothing for this long ends the upload (the
/// server's body deadline, `limits.body_idle_secs`, usually ends it first).
const UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// What the request handler feeds the upload task.
enum Piece {
    Data(Bytes),
    End,
}

/// `multipart/form-data` with `csrf` first, then `file`: the token is
/// checked before a byte of the file is read; the file streams into the
/// clinic (sealed chunk by chunk), never whole in memory. The clinic's
/// upload runs in a task of its own, fed piece by piece: a client that goes
/// away (or stalls for [`UPLOAD_IDLE`]) ends the feed without its end
/// marker, which the upload sees as an error, so it stores nothing and
/// removes its partial blob.
async fn upload(
    State(app): State<web::State>,
    user: User,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, AppError> {
    web::same_origin(&headers, &app.public_url)?;
    // A declared length over the limit is refused before a byte is read.
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > app.upload_limit.saturating_add(UPLOAD_OVERHEAD)) {
        return Err(AppError::TooLarge);
    }
    // One user holds only a few of the server's upload slots, from the
    // first byte of the body (a trickled token field counts).
    let _mine = app.upload_slot(&user.principal.user)?;
    // Without a multipart body there is no token to check: refused as forged.
    let mut multipart = multipart.map_err(|_| AppError::Forged)?;
    let too_large = |e: &MultipartError| e.status() == StatusCode::PAYLOAD_TOO_LARGE;
    let mut token_field = match multipart.next_field().await {
        Ok(Some(f)) if f.name() == Some("csrf") => f,
        Ok(_) => return Err(AppError::Forged),
        Err(e) if too_large(&e) => return Err(AppError::TooLarge),
        Err(_) => return Err(AppError::Forged),
    };
    let mut token = Vec::new();
    while let Some(chunk) = token_field.chunk().await.map_err(|_| AppError::Forged)? {
        token.extend_from_slice(&chunk);
        if token.len() > TOKEN_FIELD_MAX {
            return Err(AppError::Forged);
        }
    }
    drop(token_field);
    let token = std::str::from_utf8(&token).map_err(|_| AppError::Forged)?;
    if !user.session.csrf_matches(token) {
        return Err(AppError::Forged);
    }
    let Ok(_permit) = app.uploads.clone().try_acquire_owned() else {
        return Err(AppError::Busy);
    };
    let mut field = match multipart.next_field().await {
        Ok(Some(f)) if f.name() == Some("file") => f,
        Ok(_) => return Err(AppError::BadRequest("expected a file")),
        Err(e) if too_large(&e) => return Err(AppError::TooLarge),
        Err(_) => return Err(AppError::BadRequest("malformed upload")),
    };
    let name = field.file_name().unwrap_or_default().to_owned();
    let declared = field.content_type().unwrap_or_default().to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(4);
    let body = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Piece::Data(b)) => Some((Ok(b), Some(rx))),
            Some(Piece::End) => None,
            None => Some((Err(std::io::Error::other("upload interrupted")), None)),
        }
    });
    let clinic = app.clinic.clone();
    let who = user.principal.clone();
    let task = tokio::spawn(async move {
        clinic
            .medicloud()
            .upload(&who, &name, &declared, StreamReader::new(Box::pin(body)))
            .await
    });
    let mut over = false;
    loop {
        match tokio::time::timeout(UPLOAD_IDLE, field.chunk()).await {
            Ok(Ok(Some(b))) => {
                if tx.send(Piece::Data(b)).await.is_err() {
                    break; // the upload ended early (refused): its error says why
                }
            }
            Ok(Ok(None)) => {
                let _ = tx.send(Piece::End).await;
                break;
            }
            Ok(Err(e)) => {
                over = too_large(&e);
                break;
            }
            Err(_) => break,
        }
    }
    drop(tx);
    match task.await {
        Ok(Ok(_)) => Ok(web::see_other("/medicloud")),
        Ok(Err(_)) if over => Err(AppError::TooLarge),
        Ok(Err(careconnect::core::CoreError::Io(_))) => {
            Err(AppError::BadRequest("the upload was interrupted"))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(AppError::Internal("upload task failed".into())),
    }
}

/// `attachment` with the display name reduced to safe ASCII.
fn disposition(name: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._-()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or(HeaderValue::from_static("attachment"))
}

/// Streams the document. Access is decided (and audited) before the
/// status line; the body is opened and verified chunk by chunk. Should a
/// chunk fail to verify, the response is cut short of its Content-Length
/// and ends in an error, so no client takes it for the whole file.
async fn download(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    user: User,
) -> Result<Response, AppError> {
    let doc = app.clinic.medicloud().open(&user.principal, &id).await?;
    let info = doc.info().clone();
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move { doc.write_to(&mut writer).await });
    let tail = futures::stream::once(async move {
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "document failed to open part-way");
                Some(Err(std::io::Error::other("document failed to verify")))
            }
            Err(_) => Some(Err(std::io::Error::other("download task failed"))),
        }
    })
    .filter_map(futures::future::ready);
    let body = Body::from_stream(ReaderStream::new(reader).chain(tail));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(info.file_type.mime()),
            ),
            (header::CONTENT_DISPOSITION, disposition(&info.name)),
            (header::CONTENT_LENGTH, HeaderValue::from(info.size)),
        ],
        body,
    )
        .into_response())
}

async fn share(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    post: Post<Share>,
) -> Result<Response, AppError> {
    let with = app
        .user_id(post.form.user.trim())
        .map_err(|_| AppError::BadRequest("user"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_at = post.form.expires_at(now)?;
    app.clinic
        .medicloud()
        .share(&post.user.principal, &id, &with, expires_at)
        .await?;
    Ok(web::see_other("/medicloud"))
}

async fn revoke(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    post: Post<Revoke>,
) -> Result<Response, AppError> {
    let with = app
        .user_id(post.form.user.trim())
        .map_err(|_| AppError::BadRequest("user"))?;
    app.clinic
        .medicloud()
        .revoke(&post.user.principal, &id, &with)
        .await?;
    Ok(web::see_other("/medicloud"))
}

async fn delete(
    State(app): State<web::State>,
    web::Path(id): web::Path<String>,
    post: Post<Empty>,
) -> Result<Response, AppError> {
    app.clinic
        .medicloud()
        .delete(&post.user.principal, &id)
        .await?;
    Ok(web::see_other("/medicloud"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_cannot_break_out_of_the_header() {
        let v = disposition("a\"; filename=evil.exe\r\n.pdf");
        assert_eq!(
            v.to_str().unwrap(),
            "attachment; filename=\"a__ filename_evil.exe__.pdf\""
        );
    }
}
