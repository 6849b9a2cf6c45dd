//! SQL for `disasters` (災害時モード declarations).

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;
use uuid::Uuid;

use super::{DbError, GenericClient};
use crate::domain::eligibility::{Disaster, DisasterRef};
use crate::domain::identifiers::FacilityCode;

/// A declaration as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DisasterRecord {
    pub disaster_id: Uuid,
    pub name: String,
    pub prefectures: Vec<String>,
    pub municipalities: Vec<String>,
    #[schema(value_type = String, format = Date)]
    pub starts_on: Date,
    #[schema(value_type = Option<String>, format = Date)]
    pub ends_on: Option<Date>,
    /// Set when an operator ended the declaration early.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    pub declared_by: String,
    pub note: Option<String>,
}

const COLUMNS: &str =
    "id, name, prefectures, municipalities, starts_on, ends_on, ended_at, declared_by, note";

fn from_row(r: &tokio_postgres::Row) -> DisasterRecord {
    DisasterRecord {
        disaster_id: r.get(0),
        name: r.get(1),
        prefectures: r.get(2),
        municipalities: r.get(3),
        starts_on: r.get(4),
        ends_on: r.get(5),
        ended_at: r.get(6),
        declared_by: r.get(7),
        note: r.get(8),
    }
}

pub async fn insert(
    c: &impl GenericClient,
    d: &Disaster,
    declared_by: &str,
) -> Result<DisasterRecord, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO disasters (id, name, prefectures, municipalities, starts_on, ends_on,
                 declared_by, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
        ))
        .await?;
    let prefectures: Vec<&str> = d.prefectures.iter().map(|p| p.as_str()).collect();
    let municipalities: Vec<&str> = d.municipalities.iter().map(|m| m.as_str()).collect();
    let row = c
        .query_one(
            &stmt,
            &[
                &Uuid::now_v7(),
                &d.name,
                &prefectures,
                &municipalities,
                &d.starts_on,
                &d.ends_on,
                &declared_by,
                &d.note,
            ],
        )
        .await?;
    Ok(from_row(&row))
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<DisasterRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM disasters ORDER BY starts_on DESC, id DESC LIMIT 500"
        ))
        .await?;
    Ok(c.query(&stmt, &[]).await?.iter().map(from_row).collect())
}

/// Ends a declaration now; `None` when there is no such declaration. Ending twice keeps the
/// first end.
pub async fn end(c: &impl GenericClient, id: Uuid) -> Result<Option<DisasterRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE disasters SET ended_at = COALESCE(ended_at, now()) WHERE id = $1
             RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(from_row))
}

/// The declaration in force on `today` for a facility's prefecture (from its code) or
/// municipality, if any (the most recent when several overlap).
pub async fn active_for(
    c: &impl GenericClient,
    facility: &FacilityCode,
    municipality: Option<&str>,
    today: Date,
) -> Result<Option<DisasterRef>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT id, name FROM disasters
              WHERE ended_at IS NULL AND starts_on <= $3 AND (ends_on IS NULL OR ends_on >= $3)
                AND ($1 = ANY(prefectures) OR ($2::text IS NOT NULL AND $2 = ANY(municipalities)))
              ORDER BY starts_on DESC, id DESC LIMIT 1",
        )
        .await?;
    Ok(
        c.query_opt(&stmt, &[&facility.prefecture(), &municipality, &today])
            .await?
            .map(|r| DisasterRef {
                id: r.get(0),
                name: r.get(1),
            }),
    )
}

/// The name of a declaration, for marking what was done under it.
pub async fn reference(c: &impl GenericClient, id: Uuid) -> Result<Option<DisasterRef>, DbError> {
    let stmt = c
        .prepare_cached("SELECT id, name FROM disasters WHERE id = $1")
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.map(|r| DisasterRef {
        id: r.get(0),
        name: r.get(1),
    }))
}
