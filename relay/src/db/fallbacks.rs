//! SQL for `fallbacks` and `fallback_events` (sql/V9__fallbacks.sql): the outage fallback cases
//! and their append-only history.

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;
use uuid::Uuid;

use super::events::Actor;
use super::{DbError, GenericClient};
use crate::domain::fallback::{FallbackMode, FallbackStatus};

/// A case as stored, with the prescription facts every view needs.
#[derive(Debug, Clone)]
pub struct FallbackRecord {
    pub id: Uuid,
    pub prescription_id: Uuid,
    pub exchange_number: String,
    pub issued_on: Date,
    pub patient_name: String,
    pub clinic_code: String,
    pub pharmacy_code: String,
    pub reason: String,
    pub preferred: FallbackMode,
    pub note: Option<String>,
    pub status: FallbackStatus,
    pub mode: Option<FallbackMode>,
    pub cancellation: Option<String>,
    pub reissued_prescription_id: Option<Uuid>,
    pub requested_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub dispensed_on: Option<Date>,
    pub original_mailed_on: Option<Date>,
    pub tracking: Option<String>,
    pub original_received_on: Option<Date>,
    pub original_matches: Option<bool>,
    pub original_note: Option<String>,
    pub offline: Option<OfflineRequest>,
}

/// A request made while the relay was unreachable (pharmacy-client's queue), uploaded later.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OfflineRequest {
    /// The client's id for the queued record: one case per id and pharmacy.
    pub local_id: String,
    /// When the pharmacist asked, at the counter.
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: Timestamp,
    /// When the client mailed the clinic directly, if it could.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub clinic_mailed_at: Option<Timestamp>,
}

const SELECT: &str = "SELECT f.id, f.prescription_id, p.exchange_number, p.issued_on,
        p.document->'patient'->>'name', f.clinic_code, f.pharmacy_code, f.reason, f.preferred,
        f.note, f.status, f.mode, f.cancellation, f.reissued_prescription_id, f.requested_at,
        f.resolved_at, f.dispensed_on, f.original_mailed_on, f.tracking, f.original_received_on,
        f.original_matches, f.original_note, f.offline_local_id, f.offline_requested_at,
        f.clinic_mailed_directly_at
   FROM fallbacks f JOIN prescriptions p ON p.id = f.prescription_id";

fn from_row(r: &tokio_postgres::Row) -> Result<FallbackRecord, DbError> {
    let id: Uuid = r.get(0);
    let corrupt = |what: &str| DbError::Corrupt(format!("fallback {id}: unreadable {what}"));
    let preferred: String = r.get(8);
    let status: String = r.get(10);
    let mode: Option<String> = r.get(11);
    Ok(FallbackRecord {
        id,
        prescription_id: r.get(1),
        exchange_number: r.get(2),
        issued_on: r.get(3),
        patient_name: r.get::<_, Option<String>>(4).unwrap_or_default(),
        clinic_code: r.get(5),
        pharmacy_code: r.get(6),
        reason: r.get(7),
        preferred: FallbackMode::parse(&preferred).ok_or_else(|| corrupt("preferred"))?,
        note: r.get(9),
        status: FallbackStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        mode: match mode {
            Some(m) => Some(FallbackMode::parse(&m).ok_or_else(|| corrupt("mode"))?),
            None => None,
        },
        cancellation: r.get(12),
        reissued_prescription_id: r.get(13),
        requested_at: r.get(14),
        resolved_at: r.get(15),
        dispensed_on: r.get(16),
        original_mailed_on: r.get(17),
        tracking: r.get(18),
        original_received_on: r.get(19),
        original_matches: r.get(20),
        original_note: r.get(21),
        offline: match (r.get::<_, Option<String>>(22), r.get(23)) {
            (Some(local_id), Some(requested_at)) => Some(OfflineRequest {
                local_id,
                requested_at,
                clinic_mailed_at: r.get(24),
            }),
            _ => None,
        },
    })
}

pub struct NewFallback<'a> {
    pub id: Uuid,
    pub prescription_id: Uuid,
    pub clinic_code: &'a str,
    pub pharmacy_code: &'a str,
    pub reason: &'a str,
    pub preferred: FallbackMode,
    pub note: Option<&'a str>,
    pub offline: Option<&'a OfflineRequest>,
}

/// Inserts a requested case; `Err(existing)` when the prescription already has an open case, or
/// when this pharmacy already uploaded the same offline record.
pub async fn insert(
    c: &impl GenericClient,
    n: &NewFallback<'_>,
) -> Result<Result<(), Uuid>, DbError> {
    if let Some(o) = n.offline {
        let earlier = c
            .query_opt(
                "SELECT id FROM fallbacks WHERE pharmacy_code = $1 AND offline_local_id = $2",
                &[&n.pharmacy_code, &o.local_id],
            )
            .await?;
        if let Some(r) = earlier {
            return Ok(Err(r.get(0)));
        }
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO fallbacks (id, prescription_id, clinic_code, pharmacy_code, reason,
                 preferred, note, status, offline_local_id, offline_requested_at,
                 clinic_mailed_directly_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'requested', $8, $9, $10)
             ON CONFLICT (prescription_id)
                 WHERE status NOT IN ('withdrawn', 'closed', 'paper_reissued') DO NOTHING",
        )
        .await?;
    let inserted = c
        .execute(
            &stmt,
            &[
                &n.id,
                &n.prescription_id,
                &n.clinic_code,
                &n.pharmacy_code,
                &n.reason,
                &n.preferred.as_str(),
                &n.note,
                &n.offline.map(|o| o.local_id.as_str()),
                &n.offline.map(|o| o.requested_at),
                &n.offline.and_then(|o| o.clinic_mailed_at),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let existing = c
        .query_opt(
            "SELECT id FROM fallbacks WHERE prescription_id = $1
                AND status NOT IN ('withdrawn', 'closed', 'paper_reissued')",
            &[&n.prescription_id],
        )
        .await?
        .map(|r| r.get::<_, Uuid>(0))
        // The other case ended between the two statements: report it as busy, not as a bug.
        .ok_or_else(|| DbError::Unavailable("fallback case changed concurrently".into()))?;
    Ok(Err(existing))
}

pub async fn get(c: &impl GenericClient, id: Uuid) -> Result<Option<FallbackRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!("{SELECT} WHERE f.id = $1"))
        .await?;
    c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The case, locked until the transaction ends (steps are taken one at a time).
pub async fn get_for_update(
    c: &impl GenericClient,
    id: Uuid,
) -> Result<Option<FallbackRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!("{SELECT} WHERE f.id = $1 FOR UPDATE OF f"))
        .await?;
    c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// What a step writes besides the new status; `None` leaves a column as it is.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub mode: Option<FallbackMode>,
    pub cancellation: Option<&'a str>,
    pub reissued_prescription_id: Option<Uuid>,
    pub dispensed_on: Option<Date>,
    pub original_mailed_on: Option<Date>,
    pub tracking: Option<&'a str>,
    pub original_received_on: Option<Date>,
    pub original_matches: Option<bool>,
    pub original_note: Option<&'a str>,
}

pub async fn apply(
    c: &impl GenericClient,
    id: Uuid,
    status: FallbackStatus,
    ch: &Change<'_>,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE fallbacks SET status = $2,
                    mode = COALESCE($3, mode),
                    resolved_at = CASE WHEN $3::text IS NOT NULL THEN now() ELSE resolved_at END,
                    cancellation = COALESCE($4, cancellation),
                    reissued_prescription_id = COALESCE($5, reissued_prescription_id),
                    dispensed_on = COALESCE($6, dispensed_on),
                    original_mailed_on = COALESCE($7, original_mailed_on),
                    tracking = COALESCE($8, tracking),
                    original_received_on = COALESCE($9, original_received_on),
                    original_matches = COALESCE($10, original_matches),
                    original_note = COALESCE($11, original_note),
                    updated_at = now()
              WHERE id = $1",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &id,
            &status.as_str(),
            &ch.mode.map(FallbackMode::as_str),
            &ch.cancellation,
            &ch.reissued_prescription_id,
            &ch.dispensed_on,
            &ch.original_mailed_on,
            &ch.tracking,
            &ch.original_received_on,
            &ch.original_matches,
            &ch.original_note,
        ],
    )
    .await?;
    Ok(())
}

/// A pending cancellation of `prescription_id` was applied: the cases waiting for it say so.
/// Returns the cases changed.
pub async fn cancellation_applied(
    c: &impl GenericClient,
    prescription_id: Uuid,
) -> Result<Vec<Uuid>, DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE fallbacks SET cancellation = 'applied', updated_at = now()
              WHERE prescription_id = $1 AND cancellation = 'pending' RETURNING id",
        )
        .await?;
    Ok(c.query(&stmt, &[&prescription_id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn append_event(
    c: &impl GenericClient,
    fallback_id: Uuid,
    actor: Actor<'_>,
    action: &str,
    from: Option<FallbackStatus>,
    to: FallbackStatus,
    detail: serde_json::Value,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO fallback_events (fallback_id, facility_code, staff_id, role, action,
                 from_status, to_status, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &fallback_id,
            &actor.facility,
            &actor.staff,
            &actor.role,
            &action,
            &from.map(FallbackStatus::as_str),
            &to.as_str(),
            &detail,
        ],
    )
    .await?;
    Ok(())
}

/// One step of a case's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FallbackEvent {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub facility_code: String,
    pub staff_id: String,
    pub action: String,
    pub from_status: Option<String>,
    pub to_status: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

pub async fn events(
    c: &impl GenericClient,
    fallback_id: Uuid,
) -> Result<Vec<FallbackEvent>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT at, facility_code, staff_id, action, from_status, to_status, detail
               FROM fallback_events WHERE fallback_id = $1 ORDER BY id",
        )
        .await?;
    Ok(c.query(&stmt, &[&fallback_id])
        .await?
        .iter()
        .map(|r| FallbackEvent {
            at: r.get(0),
            facility_code: r.get(1),
            staff_id: r.get(2),
            action: r.get(3),
            from_status: r.get(4),
            to_status: r.get(5),
            detail: r.get(6),
        })
        .collect())
}

/// The cases of a clinic (`as_clinic`) or of a pharmacy, newest first, optionally by status.
pub async fn list(
    c: &impl GenericClient,
    facility: &str,
    as_clinic: bool,
    status: Option<FallbackStatus>,
) -> Result<Vec<FallbackRecord>, DbError> {
    let column = if as_clinic {
        "f.clinic_code"
    } else {
        "f.pharmacy_code"
    };
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT} WHERE {column} = $1 AND ($2::text IS NULL OR f.status = $2)
              ORDER BY f.requested_at DESC LIMIT 500"
        ))
        .await?;
    c.query(&stmt, &[&facility, &status.map(FallbackStatus::as_str)])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// The clinic's FAX cases resolved in `[from, to]` (Japan dates) whose paper original is not
/// yet posted, by pharmacy then resolution time: what it owes by post.
pub async fn originals_owed(
    c: &impl GenericClient,
    clinic: &str,
    from: Date,
    to: Date,
) -> Result<Vec<FallbackRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT} WHERE f.clinic_code = $1 AND f.mode = 'fax'
                AND f.status IN ('faxed', 'dispensed_from_fax')
                AND (f.resolved_at AT TIME ZONE 'Asia/Tokyo')::date BETWEEN $2 AND $3
              ORDER BY f.pharmacy_code, f.resolved_at"
        ))
        .await?;
    c.query(&stmt, &[&clinic, &from, &to])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Reminder candidates: FAX cases faxed more than `days` ago whose original is not yet posted
/// (remind the clinic), and originals posted more than `days` ago not yet recorded as received
/// (remind the pharmacy).
pub async fn originals_overdue(
    c: &impl GenericClient,
    days: i32,
) -> Result<Vec<FallbackRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT} WHERE (f.status IN ('faxed', 'dispensed_from_fax')
                       AND f.resolved_at < now() - make_interval(days => $1))
                    OR (f.status = 'original_mailed'
                       AND f.original_mailed_on < (now() AT TIME ZONE 'Asia/Tokyo')::date - $1)
              ORDER BY f.requested_at LIMIT 1000"
        ))
        .await?;
    c.query(&stmt, &[&days])
        .await?
        .iter()
        .map(from_row)
        .collect()
}
