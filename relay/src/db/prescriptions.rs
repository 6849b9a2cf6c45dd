//! SQL for `prescriptions` and `dispensings`. The receive is one atomic UPDATE: whichever pharmacy's
//! statement takes the row lock first moves it to `dispensing`; every other one re-checks the WHERE
//! clause against the new row version and matches nothing.

use jiff::Timestamp;
use jiff::civil::Date;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{DbError, GenericClient, IdentityArrays, identity_in};
use crate::domain::dispensing::Dispensing;
use crate::domain::eligibility::Claim;
use crate::domain::identifiers::{ExchangeNumber, FacilityCode, InsuranceIdentity};
use crate::domain::lifecycle::{IssueType, Status, Validity};
use crate::domain::prescription::Prescription;

/// A prescription row as the relay keeps it.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: Uuid,
    pub issuer_code: String,
    pub issued_by: String,
    pub issue_type: IssueType,
    pub status: Status,
    pub exchange_number: String,
    pub issued_on: Date,
    pub refill_count: Option<i16>,
    pub validity: Validity,
    pub document: Prescription,
    pub holder_code: Option<String>,
    pub held_since: Option<Timestamp>,
    pub cancellation_pending: bool,
    pub cancellation_reason: Option<String>,
    pub cancelled_at: Option<Timestamp>,
    pub has_important_note: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The qualification the current holder received it with.
    pub qualification_id: Option<Uuid>,
    /// The check run inside registration and what let it through.
    pub check: CheckLink,
    /// The e-prescription this paper reissue replaces (outage fallback).
    pub replaces: Option<Uuid>,
}

/// The duplicate/contraindication check run inside a registration or a dispensing, the override
/// that covered its hits, and whether an unavailable check was acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckLink {
    pub check_id: Option<Uuid>,
    pub override_check_id: Option<Uuid>,
    pub unavailable_acknowledged: bool,
}

const COLUMNS: &str = "id, issuer_code, issued_by, issue_type, status, exchange_number, issued_on,
    refill_count, valid_until, uses_dispensed, next_refill_date, document, holder_code, held_since,
    cancellation_pending, cancellation_reason, cancelled_at, has_important_note, created_at, updated_at,
    qualification_id, check_id, override_check_id, check_unavailable_acknowledged, replaces";

fn from_row(row: &tokio_postgres::Row) -> Result<Record, DbError> {
    let issue_type: String = row.get(3);
    let status: String = row.get(4);
    let document: serde_json::Value = row.get(11);
    let corrupt = |what: &str| {
        DbError::Corrupt(format!(
            "prescription {} has an unreadable {what}",
            row.get::<_, Uuid>(0)
        ))
    };
    Ok(Record {
        id: row.get(0),
        issuer_code: row.get(1),
        issued_by: row.get(2),
        issue_type: IssueType::parse(&issue_type).ok_or_else(|| corrupt("issue_type"))?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status"))?,
        exchange_number: row.get(5),
        issued_on: row.get(6),
        refill_count: row.get(7),
        validity: Validity {
            valid_until: row.get(8),
            uses_dispensed: row.get(9),
            next_refill_date: row.get(10),
        },
        document: serde_json::from_value(document).map_err(|_| corrupt("document"))?,
        holder_code: row.get(12),
        held_since: row.get(13),
        cancellation_pending: row.get(14),
        cancellation_reason: row.get(15),
        cancelled_at: row.get(16),
        has_important_note: row.get(17),
        created_at: row.get(18),
        updated_at: row.get(19),
        qualification_id: row.get(20),
        check: CheckLink {
            check_id: row.get(21),
            override_check_id: row.get(22),
            unavailable_acknowledged: row.get(23),
        },
        replaces: row.get(24),
    })
}

/// Inserts a registered prescription with `exchange_number`; `None` when that number is already
/// taken by one of the patient's open prescriptions (the caller draws another).
pub async fn insert(
    c: &impl GenericClient,
    id: Uuid,
    issuer: &FacilityCode,
    issued_by: &str,
    p: &Prescription,
    exchange_number: &ExchangeNumber,
    check: CheckLink,
) -> Result<Option<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO prescriptions (id, issuer_code, issued_by, issue_type, status, exchange_number,
                 insurer_number, symbol, number, branch, birth_date, issued_on, valid_until,
                 refill_count, document, check_id, override_check_id, check_unavailable_acknowledged)
             VALUES ($1, $2, $3, $4, 'registered', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                     $15, $16, $17)
             ON CONFLICT (insurer_number, symbol, number, branch, exchange_number)
                 WHERE status IN ('registered', 'dispensing') DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .await?;
    let document =
        serde_json::to_value(p).map_err(|e| DbError::Corrupt(format!("document: {e}")))?;
    let refill = p.refill_count.map(i16::from);
    let row = c
        .query_opt(
            &stmt,
            &[
                &id,
                &issuer.as_str(),
                &issued_by,
                &p.issue_type.as_str(),
                &exchange_number.as_str(),
                &p.insurance.insurer_number.as_str(),
                &p.insurance.symbol.as_str(),
                &p.insurance.number.as_str(),
                &p.insurance.branch.as_str(),
                &p.patient.birth_date,
                &p.issued_on,
                &p.valid_until,
                &refill,
                &document,
                &check.check_id,
                &check.override_check_id,
                &check.unavailable_acknowledged,
            ],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn get(c: &impl GenericClient, id: Uuid) -> Result<Option<Record>, DbError> {
    fetch(c, id, "").await
}

/// Locks the row for a state change in the caller's transaction.
pub async fn get_for_update(c: &impl GenericClient, id: Uuid) -> Result<Option<Record>, DbError> {
    fetch(c, id, "FOR UPDATE").await
}

async fn fetch(c: &impl GenericClient, id: Uuid, lock: &str) -> Result<Option<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM prescriptions WHERE id = $1 {lock}"
        ))
        .await?;
    c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The clinic's own prescriptions matching an (optional) insurance identity and issue-date range,
/// newest first.
pub struct Search<'a> {
    pub issuer: &'a str,
    pub insurer_number: Option<&'a str>,
    pub symbol: Option<&'a str>,
    pub number: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub issued_from: Date,
    pub issued_to: Date,
    pub limit: i64,
}

pub async fn search(c: &impl GenericClient, s: &Search<'_>) -> Result<Vec<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM prescriptions
             WHERE issuer_code = $1
               AND ($2::text IS NULL OR insurer_number = $2)
               AND ($3::text IS NULL OR symbol = $3)
               AND ($4::text IS NULL OR number = $4)
               AND ($5::text IS NULL OR branch = $5)
               AND issued_on BETWEEN $6 AND $7
             ORDER BY issued_on DESC, created_at DESC
             LIMIT $8"
        ))
        .await?;
    c.query(
        &stmt,
        &[
            &s.issuer,
            &s.insurer_number,
            &s.symbol,
            &s.number,
            &s.branch,
            &s.issued_from,
            &s.issued_to,
            &s.limit,
        ],
    )
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// The match of a receive: the 引換番号 and the whole insurance identity ($1–$5), and the birth
/// date when one is given ($6).
const MATCHES_NUMBER: &str = "exchange_number = $1 AND insurer_number = $2 AND symbol = $3
    AND number = $4 AND branch = $5 AND ($6::date IS NULL OR birth_date = $6)";

fn number_params<'a>(
    number: &'a ExchangeNumber,
    identity: &'a InsuranceIdentity,
    birth_date: &'a Option<Date>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![
        number.as_string(),
        identity.insurer_number.as_string(),
        identity.symbol.as_string(),
        identity.number.as_string(),
        identity.branch.as_string(),
        birth_date,
    ]
}

/// A registered prescription's use is receivable on `$8` (the first use through 使用期限, a later
/// refill use within 7 days of its planned date): the SQL twin of `Validity::window`.
/// A paper reissue is receivable only once the e-prescription it replaces is cancelled, so the
/// two can never both be dispensed.
const RECEIVABLE_ON_8: &str =
    "CASE WHEN uses_dispensed = 0 OR next_refill_date IS NULL THEN $8 <= valid_until
    ELSE $8 BETWEEN next_refill_date - 7 AND next_refill_date + 7 END
    AND (replaces IS NULL OR EXISTS (SELECT 1 FROM prescriptions replaced
                                     WHERE replaced.id = prescriptions.replaces
                                       AND replaced.status = 'cancelled'))";

/// The receive by 引換番号: one statement that moves a receivable prescription matching the number
/// and the whole insurance identity (and the birth date when given) to `dispensing`, held by
/// `pharmacy`. `None` when nothing receivable matched.
pub async fn receive_by_number(
    c: &impl GenericClient,
    number: &ExchangeNumber,
    identity: &InsuranceIdentity,
    birth_date: Option<Date>,
    pharmacy: &str,
    today: Date,
    qualification_id: Option<Uuid>,
) -> Result<Option<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE prescriptions
                SET status = 'dispensing', holder_code = $7, held_since = now(), updated_at = now(),
                    qualification_id = $9
              WHERE {MATCHES_NUMBER}
                AND status = 'registered'
                AND {RECEIVABLE_ON_8}
             RETURNING {COLUMNS}"
        ))
        .await?;
    let mut params = number_params(number, identity, &birth_date);
    params.push(&pharmacy);
    params.push(&today);
    params.push(&qualification_id);
    let row = c.query_opt(&stmt, &params).await?;
    row.as_ref().map(from_row).transpose()
}

/// After a receive matched nothing: the prescription the number and identity point at, if any,
/// preferring an open one (numbers are unique only among open prescriptions).
pub async fn find_by_number(
    c: &impl GenericClient,
    number: &ExchangeNumber,
    identity: &InsuranceIdentity,
    birth_date: Option<Date>,
) -> Result<Option<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM prescriptions WHERE {MATCHES_NUMBER}
              ORDER BY (status IN ('registered', 'dispensing')) DESC, created_at DESC
              LIMIT 1"
        ))
        .await?;
    let row = c
        .query_opt(&stmt, &number_params(number, identity, &birth_date))
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Records that a registered prescription's window has closed.
pub async fn mark_expired(c: &impl GenericClient, id: Uuid) -> Result<bool, DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE prescriptions SET status = 'expired', updated_at = now()
              WHERE id = $1 AND status = 'registered'",
        )
        .await?;
    Ok(c.execute(&stmt, &[&id]).await? == 1)
}

pub async fn set_cancelled(c: &impl GenericClient, id: Uuid, reason: &str) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE prescriptions
                SET status = 'cancelled', cancellation_pending = false, cancellation_reason = $2,
                    cancelled_at = now(), holder_code = NULL, held_since = NULL,
                    qualification_id = NULL, updated_at = now()
              WHERE id = $1",
        )
        .await?;
    c.execute(&stmt, &[&id, &reason]).await?;
    Ok(())
}

pub async fn set_cancellation_pending(
    c: &impl GenericClient,
    id: Uuid,
    reason: &str,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE prescriptions
                SET cancellation_pending = true, cancellation_reason = $2, updated_at = now()
              WHERE id = $1 AND status = 'dispensing'",
        )
        .await?;
    c.execute(&stmt, &[&id, &reason]).await?;
    Ok(())
}

/// 受付取消: back to `registered`, no holder.
/// Prescriptions held `dispensing` since before `hours` ago (the "調剤中 forever" list), of one
/// pharmacy or of all, longest held first.
pub async fn held_longer_than(
    c: &impl GenericClient,
    pharmacy: Option<&str>,
    hours: i64,
) -> Result<Vec<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM prescriptions
              WHERE status = 'dispensing' AND held_since < now() - make_interval(hours => $2)
                AND ($1::text IS NULL OR holder_code = $1)
              ORDER BY holder_code, held_since LIMIT 5000"
        ))
        .await?;
    let hours = i32::try_from(hours).unwrap_or(i32::MAX);
    c.query(&stmt, &[&pharmacy, &hours])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Links a paper reissue to the e-prescription it replaces.
pub async fn set_replaces(c: &impl GenericClient, id: Uuid, replaces: Uuid) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached("UPDATE prescriptions SET replaces = $2 WHERE id = $1")
        .await?;
    c.execute(&stmt, &[&id, &replaces]).await?;
    Ok(())
}

/// The replaced e-prescription was dispensed after all: its paper reissue is cancelled so the two
/// can never both be dispensed. Returns the reissue cancelled, if any.
pub async fn cancel_replacement_of(
    c: &impl GenericClient,
    replaced: Uuid,
    reason: &str,
) -> Result<Option<Uuid>, DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE prescriptions
                SET status = 'cancelled', cancellation_reason = $2, cancelled_at = now(),
                    updated_at = now()
              WHERE replaces = $1 AND status IN ('registered', 'expired')
             RETURNING id",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&replaced, &reason])
        .await?
        .map(|r| r.get(0)))
}

pub async fn set_released(c: &impl GenericClient, id: Uuid) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE prescriptions
                SET status = 'registered', holder_code = NULL, held_since = NULL,
                    qualification_id = NULL, updated_at = now()
              WHERE id = $1 AND status = 'dispensing'",
        )
        .await?;
    c.execute(&stmt, &[&id]).await?;
    Ok(())
}

/// A dispensing result about to be recorded, with who recorded it and what the prescription
/// becomes.
pub struct NewDispensing<'a> {
    pub pharmacy: &'a str,
    pub pharmacist: &'a str,
    pub dispensing: &'a Dispensing,
    pub next_status: Status,
    /// The claim basis of the qualification it was received under.
    pub claim: Option<&'a Claim>,
    pub check: CheckLink,
}

/// Records a dispensing result and moves the prescription on: to `dispensed` after its last use,
/// back to `registered` (no holder) while refill uses remain, or to `cancelled` when a cancellation
/// was pending and uses remained.
pub async fn record_dispensing(
    c: &impl GenericClient,
    record: &Record,
    n: NewDispensing<'_>,
) -> Result<i16, DbError> {
    let NewDispensing {
        pharmacy,
        pharmacist,
        dispensing: d,
        next_status,
        claim,
        check,
    } = n;
    let use_number = record.validity.uses_dispensed + 1;
    let items = serde_json::to_value(&d.items).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let inquiry = d
        .inquiry
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| DbError::Corrupt(e.to_string()))?;
    let claim = claim
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| DbError::Corrupt(e.to_string()))?;
    let insert = c
        .prepare_cached(
            "INSERT INTO dispensings (prescription_id, use_number, pharmacy_code, pharmacist,
                 dispensed_on, items, inquiry, important_note, next_refill_date, qualification_id,
                 claim, check_id, override_check_id, check_unavailable_acknowledged)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .await?;
    c.execute(
        &insert,
        &[
            &record.id,
            &use_number,
            &pharmacy,
            &pharmacist,
            &d.dispensed_on,
            &items,
            &inquiry,
            &d.important_note,
            &d.next_refill_date,
            &record.qualification_id,
            &claim,
            &check.check_id,
            &check.override_check_id,
            &check.unavailable_acknowledged,
        ],
    )
    .await?;
    let update = c
        .prepare_cached(
            "UPDATE prescriptions
                SET status = $2, uses_dispensed = $3, next_refill_date = $4,
                    holder_code = CASE WHEN $2 = 'dispensed' THEN holder_code END,
                    held_since = CASE WHEN $2 = 'dispensed' THEN held_since END,
                    qualification_id = CASE WHEN $2 = 'dispensed' THEN qualification_id END,
                    cancellation_pending = false,
                    cancelled_at = CASE WHEN $2 = 'cancelled' THEN now() END,
                    has_important_note = has_important_note OR $5,
                    updated_at = now()
              WHERE id = $1",
        )
        .await?;
    c.execute(
        &update,
        &[
            &record.id,
            &next_status.as_str(),
            &use_number,
            &d.next_refill_date,
            &d.important_note.is_some(),
        ],
    )
    .await?;
    Ok(use_number)
}

/// A dispensing result as stored.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DispensingRecord {
    pub use_number: i16,
    pub pharmacy_code: String,
    pub pharmacist: String,
    #[serde(flatten)]
    pub dispensing: Dispensing,
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: Timestamp,
    /// The claim basis and numbers of the qualification it was dispensed under; shown to the
    /// dispensing pharmacy only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// The duplicate/contraindication check run inside this dispensing.
    pub check_id: Option<Uuid>,
    /// The override (the prescriber's, or the pharmacist's record of a 疑義照会) that let it through.
    pub override_check_id: Option<Uuid>,
}

const DISPENSING_COLUMNS: &str = "prescription_id, use_number, pharmacy_code, pharmacist,
    dispensed_on, items, inquiry, important_note, next_refill_date, recorded_at, claim, check_id,
    override_check_id";

fn dispensing_from_row(r: &tokio_postgres::Row) -> Result<(Uuid, DispensingRecord), DbError> {
    let prescription_id: Uuid = r.get(0);
    let corrupt = |_| DbError::Corrupt(format!("dispensing of {prescription_id}"));
    let items: serde_json::Value = r.get(5);
    let inquiry: Option<serde_json::Value> = r.get(6);
    Ok((
        prescription_id,
        DispensingRecord {
            use_number: r.get(1),
            pharmacy_code: r.get(2),
            pharmacist: r.get(3),
            dispensing: Dispensing {
                dispensed_on: r.get(4),
                items: serde_json::from_value(items).map_err(corrupt)?,
                inquiry: inquiry
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(corrupt)?,
                important_note: r.get(7),
                next_refill_date: r.get(8),
            },
            recorded_at: r.get(9),
            claim: r
                .get::<_, Option<serde_json::Value>>(10)
                .map(serde_json::from_value)
                .transpose()
                .map_err(corrupt)?,
            check_id: r.get(11),
            override_check_id: r.get(12),
        },
    ))
}

pub async fn dispensings(
    c: &impl GenericClient,
    prescription_id: Uuid,
) -> Result<Vec<DispensingRecord>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {DISPENSING_COLUMNS} FROM dispensings
              WHERE prescription_id = $1 ORDER BY use_number"
        ))
        .await?;
    c.query(&stmt, &[&prescription_id])
        .await?
        .iter()
        .map(|r| dispensing_from_row(r).map(|(_, d)| d))
        .collect()
}

/// The dispensings of several prescriptions in one statement (the check history), by prescription.
pub async fn dispensings_of(
    c: &impl GenericClient,
    prescription_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<DispensingRecord>>, DbError> {
    let mut out: std::collections::HashMap<Uuid, Vec<DispensingRecord>> = Default::default();
    if prescription_ids.is_empty() {
        return Ok(out);
    }
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {DISPENSING_COLUMNS} FROM dispensings
              WHERE prescription_id = ANY($1) ORDER BY prescription_id, use_number"
        ))
        .await?;
    for row in c.query(&stmt, &[&prescription_ids]).await? {
        let (id, d) = dispensing_from_row(&row)?;
        out.entry(id).or_default().push(d);
    }
    Ok(out)
}

/// The patient's outstanding prescriptions at every clinic (the card path): registered or held,
/// under any of the person's insurance identities and their birth date, newest first.
pub async fn outstanding_for(
    c: &impl GenericClient,
    identities: &[InsuranceIdentity],
    birth_date: Date,
) -> Result<Vec<Record>, DbError> {
    let since = jiff::civil::date(1900, 1, 1);
    of_patient(
        c,
        identities,
        birth_date,
        since,
        "status IN ('registered', 'dispensing')",
        200,
    )
    .await
}

/// The patient's prescriptions under any of `identities` with this birth date, issued since
/// `since` and matching `condition` (SQL over the row), newest first.
fn of_patient_sql(condition: &str, limit: i64) -> String {
    format!(
        "SELECT {COLUMNS} FROM prescriptions
          WHERE {} AND birth_date = $5 AND issued_on >= $6 AND {condition}
          ORDER BY issued_on DESC, created_at DESC LIMIT {limit}",
        identity_in(1)
    )
}

/// The plan PostgreSQL chooses for [`history`] (for benchmarks and the index test): the check
/// must stay an index lookup however many prescriptions the relay holds.
pub async fn explain_history(
    c: &impl GenericClient,
    identities: &[InsuranceIdentity],
    birth_date: Date,
    since: Date,
) -> Result<String, DbError> {
    let sql = format!(
        "EXPLAIN {}",
        of_patient_sql(HISTORY_CONDITION, HISTORY_LIMIT)
    );
    let stmt = c.prepare(&sql).await?;
    let rows = query_of_patient(c, &stmt, identities, birth_date, since).await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

async fn query_of_patient(
    c: &impl GenericClient,
    stmt: &tokio_postgres::Statement,
    identities: &[InsuranceIdentity],
    birth_date: Date,
    since: Date,
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let a = IdentityArrays::new(identities);
    Ok(c.query(
        stmt,
        &[
            &a.insurers,
            &a.symbols,
            &a.numbers,
            &a.branches,
            &birth_date,
            &since,
        ],
    )
    .await?)
}

async fn of_patient(
    c: &impl GenericClient,
    identities: &[InsuranceIdentity],
    birth_date: Date,
    since: Date,
    condition: &str,
    limit: i64,
) -> Result<Vec<Record>, DbError> {
    let stmt = c.prepare_cached(&of_patient_sql(condition, limit)).await?;
    query_of_patient(c, &stmt, identities, birth_date, since)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// The card-path receive: one statement that moves prescription `id` to `dispensing` for
/// `pharmacy` if it is receivable today and belongs to one of the identities and the birth date.
pub async fn receive_by_id(
    c: &impl GenericClient,
    id: Uuid,
    identities: &[InsuranceIdentity],
    birth_date: Date,
    pharmacy: &str,
    today: Date,
    qualification_id: Uuid,
) -> Result<Option<Record>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE prescriptions
                SET status = 'dispensing', holder_code = $7, held_since = now(), updated_at = now(),
                    qualification_id = $9
              WHERE id = $6 AND {} AND birth_date = $5
                AND status = 'registered'
                AND {RECEIVABLE_ON_8}
             RETURNING {COLUMNS}",
            identity_in(1)
        ))
        .await?;
    let a = IdentityArrays::new(identities);
    let row = c
        .query_opt(
            &stmt,
            &[
                &a.insurers,
                &a.symbols,
                &a.numbers,
                &a.branches,
                &birth_date,
                &id,
                &pharmacy,
                &today,
                &qualification_id,
            ],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Whether `facility` issued, held or dispensed a prescription for one of the identities with
/// this birth date: a returning patient (再診) for the verbal confirmation.
pub async fn seen_at(
    c: &impl GenericClient,
    facility: &str,
    identities: &[InsuranceIdentity],
    birth_date: Date,
) -> Result<bool, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT EXISTS (
                SELECT 1 FROM prescriptions p
                 WHERE {} AND p.birth_date = $5
                   AND (p.issuer_code = $6 OR p.holder_code = $6
                        OR EXISTS (SELECT 1 FROM dispensings d
                                    WHERE d.prescription_id = p.id AND d.pharmacy_code = $6)))",
            identity_in(1)
        ))
        .await?;
    let a = IdentityArrays::new(identities);
    Ok(c.query_one(
        &stmt,
        &[
            &a.insurers,
            &a.symbols,
            &a.numbers,
            &a.branches,
            &birth_date,
            &facility,
        ],
    )
    .await?
    .get(0))
}

/// Cancelled prescriptions never count (domain.md §7); the partial index `prescriptions_history`
/// has the same condition.
const HISTORY_CONDITION: &str = "status <> 'cancelled'";
const HISTORY_LIMIT: i64 = 1000;

/// The patient's prescriptions issued since `since` that were not cancelled (the check history),
/// under any of the identities with this birth date.
pub async fn history(
    c: &impl GenericClient,
    identities: &[InsuranceIdentity],
    birth_date: Date,
    since: Date,
) -> Result<Vec<Record>, DbError> {
    of_patient(
        c,
        identities,
        birth_date,
        since,
        HISTORY_CONDITION,
        HISTORY_LIMIT,
    )
    .await
}
