//! SQL for `prescription_events`, the append-only log (the table refuses UPDATE and DELETE).

use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use super::{DbError, GenericClient};
use crate::domain::lifecycle::EventAction;

/// Who performed an action: the token's staff id, facility and role.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub staff: &'a str,
    pub facility: &'a str,
    pub role: &'a str,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor: String,
    pub facility_code: String,
    pub role: String,
    pub action: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

pub async fn append(
    c: &impl GenericClient,
    prescription_id: Uuid,
    actor: Actor<'_>,
    action: EventAction,
    detail: serde_json::Value,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO prescription_events (prescription_id, actor, facility_code, role, action, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &prescription_id,
            &actor.staff,
            &actor.facility,
            &actor.role,
            &action.as_str(),
            &detail,
        ],
    )
    .await?;
    Ok(())
}

pub async fn list(c: &impl GenericClient, prescription_id: Uuid) -> Result<Vec<Event>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT id, at, actor, facility_code, role, action, detail FROM prescription_events
             WHERE prescription_id = $1 ORDER BY id",
        )
        .await?;
    Ok(c.query(&stmt, &[&prescription_id])
        .await?
        .iter()
        .map(|r| Event {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            facility_code: r.get(3),
            role: r.get(4),
            action: r.get(5),
            detail: r.get(6),
        })
        .collect())
}
