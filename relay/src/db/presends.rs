//! SQL for `presends` (事前送付). At most one current row per prescription (a partial unique
//! index); presending elsewhere supersedes the current row, which is kept.

use jiff::Timestamp;
use jiff::civil::Date;
use uuid::Uuid;

use super::{DbError, GenericClient};
use crate::domain::lifecycle::{Status, Validity};
use crate::domain::prescription::Prescription;

/// A presend row.
#[derive(Debug, Clone)]
pub struct Presend {
    pub id: Uuid,
    pub prescription_id: Uuid,
    pub clinic_code: String,
    pub pharmacy_code: String,
    pub presented_by: String,
    pub presented_at: Timestamp,
    pub prepared_at: Option<Timestamp>,
    pub prepared_by: Option<String>,
    pub superseded_at: Option<Timestamp>,
}

const COLUMNS: &str = "id, prescription_id, clinic_code, pharmacy_code, presented_by, presented_at,
    prepared_at, prepared_by, superseded_at";

fn from_row(row: &tokio_postgres::Row) -> Presend {
    Presend {
        id: row.get(0),
        prescription_id: row.get(1),
        clinic_code: row.get(2),
        pharmacy_code: row.get(3),
        presented_by: row.get(4),
        presented_at: row.get(5),
        prepared_at: row.get(6),
        prepared_by: row.get(7),
        superseded_at: row.get(8),
    }
}

/// The current presend of a prescription. Callers lock the prescription row first.
pub async fn current(
    c: &impl GenericClient,
    prescription_id: Uuid,
) -> Result<Option<Presend>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM presends WHERE prescription_id = $1 AND superseded_at IS NULL"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&prescription_id])
        .await?
        .as_ref()
        .map(from_row))
}

/// Marks the current presend of a prescription superseded (kept for the record).
pub async fn supersede(c: &impl GenericClient, id: Uuid) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE presends SET superseded_at = now() WHERE id = $1 AND superseded_at IS NULL",
        )
        .await?;
    c.execute(&stmt, &[&id]).await?;
    Ok(())
}

/// Inserts a new current presend.
pub async fn insert(
    c: &impl GenericClient,
    id: Uuid,
    prescription_id: Uuid,
    clinic_code: &str,
    pharmacy_code: &str,
    presented_by: &str,
) -> Result<Presend, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO presends (id, prescription_id, clinic_code, pharmacy_code, presented_by)
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &id,
                &prescription_id,
                &clinic_code,
                &pharmacy_code,
                &presented_by,
            ],
        )
        .await?;
    Ok(from_row(&row))
}

pub async fn get(c: &impl GenericClient, id: Uuid) -> Result<Option<Presend>, DbError> {
    fetch(c, id, "").await
}

/// A presend, locked for a change in the caller's transaction (lock its prescription first).
pub async fn get_for_update(c: &impl GenericClient, id: Uuid) -> Result<Option<Presend>, DbError> {
    fetch(c, id, "FOR UPDATE").await
}

async fn fetch(c: &impl GenericClient, id: Uuid, lock: &str) -> Result<Option<Presend>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM presends WHERE id = $1 {lock}"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(from_row))
}

/// Sets `prepared_at` (once; a repeated call keeps the first time) and returns the row.
pub async fn mark_prepared(
    c: &impl GenericClient,
    id: Uuid,
    prepared_by: &str,
) -> Result<Presend, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE presends SET prepared_at = COALESCE(prepared_at, now()),
                 prepared_by = COALESCE(prepared_by, $2)
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(from_row(&c.query_one(&stmt, &[&id, &prepared_by]).await?))
}

/// A current presend at a pharmacy with what the pharmacy needs to prepare.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub presend: Presend,
    pub status: Status,
    pub holder_code: Option<String>,
    pub exchange_number: String,
    pub issued_on: Date,
    pub validity: Validity,
    pub clinic_name: String,
    pub document: Prescription,
}

/// The current presends at `pharmacy` whose prescription is still `registered` or held by this
/// pharmacy, oldest first. Lazily expired ones are still `registered` here; the caller decides.
pub async fn incoming(c: &impl GenericClient, pharmacy: &str) -> Result<Vec<Incoming>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT s.id, s.prescription_id, s.clinic_code, s.pharmacy_code, s.presented_by,
                    s.presented_at, s.prepared_at, s.prepared_by, s.superseded_at,
                    p.status, p.holder_code, p.exchange_number, p.issued_on, p.valid_until,
                    p.uses_dispensed, p.next_refill_date, f.name, p.document
             FROM presends s
             JOIN prescriptions p ON p.id = s.prescription_id
             JOIN facilities f ON f.code = p.issuer_code
             WHERE s.pharmacy_code = $1 AND s.superseded_at IS NULL
               AND (p.status = 'registered' OR (p.status = 'dispensing' AND p.holder_code = $1))
             ORDER BY s.presented_at, s.id",
        )
        .await?;
    c.query(&stmt, &[&pharmacy])
        .await?
        .iter()
        .map(|row| {
            let presend = from_row(row);
            let corrupt = |what: &str| {
                DbError::Corrupt(format!(
                    "prescription {} has an unreadable {what}",
                    presend.prescription_id
                ))
            };
            let status: String = row.get(9);
            let document: serde_json::Value = row.get(17);
            Ok(Incoming {
                status: Status::parse(&status).ok_or_else(|| corrupt("status"))?,
                holder_code: row.get(10),
                exchange_number: row.get(11),
                issued_on: row.get(12),
                validity: Validity {
                    valid_until: row.get(13),
                    uses_dispensed: row.get(14),
                    next_refill_date: row.get(15),
                },
                clinic_name: row.get(16),
                document: serde_json::from_value(document).map_err(|_| corrupt("document"))?,
                presend,
            })
        })
        .collect()
}
