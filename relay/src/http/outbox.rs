//! `/v1/admin/outbox`: operators see the mail outbox (dead letters first of all) and requeue dead
//! messages (role `admin`). Bodies and attachment contents are never shown.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::DbError;
use crate::db::outbox::{self, Entry, Requeue, Status};

/// At most this many messages per listing, newest first.
const LIST_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// `pending`, `sent` or `dead`; all messages when absent.
    pub status: Option<Status>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxList {
    pub messages: Vec<Entry>,
}

/// The mail outbox, newest first (at most 500): recipients, subject, attempts and the last
/// delivery error of each message; no bodies.
#[utoipa::path(
    get, path = "/v1/admin/outbox", tag = "admin",
    params(OutboxQuery),
    responses((status = 200, body = OutboxList, description = "OK"), (status = 403, body = Problem, description = "wrong role"),
              (status = 422, body = Problem, description = "unknown status")),
    security(("bearer" = []))
)]
#[get("/v1/admin/outbox")]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<OutboxQuery>,
) -> Result<web::Json<OutboxList>, ApiError> {
    caller.require(&[Role::Admin])?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    Ok(web::Json(OutboxList {
        messages: outbox::list(&client, query.status, LIST_LIMIT).await?,
    }))
}

/// Requeue a dead message: it gets a fresh set of delivery attempts, the first at once.
#[utoipa::path(
    post, path = "/v1/admin/outbox/{id}/retry", tag = "admin",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Entry, description = "requeued"), (status = 403, body = Problem, description = "wrong role"),
              (status = 404, body = Problem, description = "OUTBOX_MESSAGE_NOT_FOUND"),
              (status = 409, body = Problem, description = "OUTBOX_MESSAGE_NOT_DEAD (with `message_status`): only dead messages are requeued")),
    security(("bearer" = []))
)]
#[post("/v1/admin/outbox/{id}/retry")]
pub async fn retry(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let not_found =
        || ApiError::not_found("OUTBOX_MESSAGE_NOT_FOUND", "no outbox message has this id");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    idempotent(&state, &req, &caller, &key, b"", async |tx| {
        match outbox::requeue_dead(tx, id).await? {
            Requeue::Requeued(entry) => {
                tracing::info!(outbox_id = %id, kind = %entry.kind, staff = %caller.staff, "dead mail requeued");
                Reply::new(StatusCode::OK, *entry)
            }
            Requeue::NotDead(status) => Err(ApiError::conflict(
                "OUTBOX_MESSAGE_NOT_DEAD",
                format!(
                    "the message is {}: only dead messages are requeued",
                    status.as_str()
                ),
            )
            .with("message_status", status)),
            Requeue::NotFound => Err(not_found()),
        }
    })
    .await
}
