//! One transaction per state-changing request, with the `Idempotency-Key` bound to it: the stored
//! response is written in the same transaction as the change, so a replay always describes a
//! committed change and a rolled-back request leaves nothing behind (the key may be reused).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::extract::{Caller, IdempotencyKey, fingerprint};
use super::state::AppState;
use crate::db::{self, idempotency};

/// The outcome of a state change: status and JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Reply {
    /// A refusal that is still committed: the audit of a refused 資格確認 must survive the answer.
    pub fn problem(err: &ApiError) -> Self {
        Self {
            status: err.status(),
            body: err.body(),
        }
    }

    pub fn new(status: StatusCode, body: impl Serialize) -> Result<Self, ApiError> {
        Ok(Self {
            status,
            body: serde_json::to_value(body).map_err(|e| {
                tracing::error!(error = %e, "response did not serialise");
                ApiError::internal()
            })?,
        })
    }
}

/// Runs `work` inside a transaction guarded by the caller's idempotency key (if any).
pub async fn idempotent<F>(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    key: &IdempotencyKey,
    canonical_body: &[u8],
    work: F,
) -> Result<HttpResponse, ApiError>
where
    F: AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<Reply, ApiError>,
{
    let mut client = state.pool.get().await.map_err(db::DbError::from)?;
    let tx = client.transaction().await.map_err(db::DbError::from)?;
    let facility = caller.facility.as_str();
    if let Some(key) = &key.0 {
        let hash = fingerprint(req, canonical_body);
        match idempotency::claim(&tx, facility, key, &hash).await? {
            idempotency::Claim::Fresh => {}
            idempotency::Claim::Replay { status, body } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return Ok(respond(status, body, true));
            }
            idempotency::Claim::Mismatch => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this Idempotency-Key was already used for a different request; use a new key for a new request",
                ));
            }
        }
    }
    let reply = work(&tx).await?;
    if let Some(key) = &key.0 {
        idempotency::store(&tx, facility, key, reply.status.as_u16(), &reply.body).await?;
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(respond(reply.status, reply.body, false))
}

/// JSON for success, `application/problem+json` for a committed refusal.
fn respond(status: StatusCode, body: serde_json::Value, replayed: bool) -> HttpResponse {
    let mut res = HttpResponse::build(status);
    if replayed {
        res.insert_header(("Idempotent-Replayed", "true"));
    }
    if status.is_client_error() || status.is_server_error() {
        res.content_type("application/problem+json");
    }
    res.json(body)
}
