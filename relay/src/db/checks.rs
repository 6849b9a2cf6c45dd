//! SQL for `checks`, `check_consents` and `check_overrides`: each duplicate/contraindication check
//! as run, who revealed its causing drugs after verbal consent, and the doctor's override. All
//! three refuse UPDATE and DELETE.

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;
use uuid::Uuid;

use super::events::Actor;
use super::{DbError, GenericClient};
use crate::domain::checks::Hit;
use crate::domain::identifiers::InsuranceIdentity;

pub struct NewCheck<'a> {
    pub id: Uuid,
    pub actor: Actor<'a>,
    pub context: &'a str,
    pub qualification_id: Option<Uuid>,
    pub person_id: Option<Uuid>,
    pub identity: Option<&'a InsuranceIdentity>,
    pub birth_date: Date,
    pub outcome: &'a str,
    pub details_visible: bool,
    pub exclude_own: bool,
    pub drug_codes: Vec<String>,
    pub hits: &'a [Hit],
    pub unavailable_reason: Option<&'a str>,
}

/// Records a check; the row as stored.
pub async fn insert(c: &impl GenericClient, n: &NewCheck<'_>) -> Result<StoredCheck, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO checks (id, facility_code, staff_id, role, context, qualification_id,
                 person_id, insurer_number, symbol, number, branch, birth_date, outcome,
                 details_visible, exclude_own, drug_codes, hits, unavailable_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             RETURNING {CHECK_COLUMNS}"
        ))
        .await?;
    let hits = serde_json::to_value(n.hits).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let i = n.identity;
    let row = c
        .query_one(
            &stmt,
            &[
                &n.id,
                &n.actor.facility,
                &n.actor.staff,
                &n.actor.role,
                &n.context,
                &n.qualification_id,
                &n.person_id,
                &i.map(|i| i.insurer_number.as_str()),
                &i.map(|i| i.symbol.as_str()),
                &i.map(|i| i.number.as_str()),
                &i.map(|i| i.branch.as_str()),
                &n.birth_date,
                &n.outcome,
                &n.details_visible,
                &n.exclude_own,
                &n.drug_codes,
                &hits,
                &n.unavailable_reason,
            ],
        )
        .await?;
    from_row(&row)
}

/// A check as stored, with every cause (the HTTP layer decides what may be shown).
#[derive(Debug, Clone)]
pub struct StoredCheck {
    pub id: Uuid,
    pub at: Timestamp,
    pub facility_code: String,
    pub staff_id: String,
    pub context: String,
    pub qualification_id: Option<Uuid>,
    pub person_id: Option<Uuid>,
    pub identity: Option<InsuranceIdentity>,
    pub birth_date: Date,
    pub outcome: String,
    pub details_visible: bool,
    pub drug_codes: Vec<String>,
    pub hits: Vec<Hit>,
    pub unavailable_reason: Option<String>,
}

const CHECK_COLUMNS: &str = "id, at, facility_code, context, qualification_id, outcome,
    details_visible, drug_codes, hits, unavailable_reason, staff_id, person_id, birth_date,
    insurer_number, symbol, number, branch";

pub async fn get(c: &impl GenericClient, id: Uuid) -> Result<Option<StoredCheck>, DbError> {
    let stmt = c
        .prepare_cached(&format!("SELECT {CHECK_COLUMNS} FROM checks WHERE id = $1"))
        .await?;
    c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

fn from_row(r: &tokio_postgres::Row) -> Result<StoredCheck, DbError> {
    let id: Uuid = r.get(0);
    let hits: serde_json::Value = r.get(8);
    let identity = match (
        r.get::<_, Option<&str>>(13),
        r.get::<_, Option<&str>>(14),
        r.get::<_, Option<&str>>(15),
        r.get::<_, Option<&str>>(16),
    ) {
        (Some(i), Some(s), Some(n), Some(b)) => Some(
            InsuranceIdentity::parse(i, s, n, b)
                .map_err(|_| DbError::Corrupt(format!("check {id}: unreadable identity")))?,
        ),
        _ => None,
    };
    Ok(StoredCheck {
        id,
        at: r.get(1),
        facility_code: r.get(2),
        staff_id: r.get(10),
        context: r.get(3),
        qualification_id: r.get(4),
        person_id: r.get(11),
        identity,
        birth_date: r.get(12),
        outcome: r.get(5),
        details_visible: r.get(6),
        drug_codes: r.get(7),
        hits: serde_json::from_value(hits)
            .map_err(|_| DbError::Corrupt(format!("check {id}: unreadable hits")))?,
        unavailable_reason: r.get(9),
    })
}

/// A recorded verbal consent (口頭同意).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Named apart from the card reader's `Consent` (domain::eligibility), which has the same Rust name.
#[schema(as = VerbalConsent)]
pub struct Consent {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub staff_id: String,
    pub role: String,
    pub hit_ids: Vec<String>,
    pub note: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

pub async fn add_consent(
    c: &impl GenericClient,
    check_id: Uuid,
    actor: Actor<'_>,
    hit_ids: &[String],
    note: Option<&str>,
    expires_at: Timestamp,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO check_consents (check_id, facility_code, staff_id, role, hit_ids, note, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &check_id,
            &actor.facility,
            &actor.staff,
            &actor.role,
            &hit_ids,
            &note,
            &expires_at,
        ],
    )
    .await?;
    Ok(())
}

pub async fn consents(c: &impl GenericClient, check_id: Uuid) -> Result<Vec<Consent>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT at, staff_id, role, hit_ids, note, expires_at FROM check_consents
              WHERE check_id = $1 ORDER BY id",
        )
        .await?;
    Ok(c.query(&stmt, &[&check_id])
        .await?
        .iter()
        .map(|r| Consent {
            at: r.get(0),
            staff_id: r.get(1),
            role: r.get(2),
            hit_ids: r.get(3),
            note: r.get(4),
            expires_at: r.get(5),
        })
        .collect())
}

/// The doctor's decision to proceed despite the hits (「重複等あり・医師許可」).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Override {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub staff_id: String,
    pub role: String,
    pub reason: String,
}

/// Records the override; `false` when the check already has one (the first stands).
pub async fn add_override(
    c: &impl GenericClient,
    check_id: Uuid,
    actor: Actor<'_>,
    reason: &str,
) -> Result<bool, DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO check_overrides (check_id, facility_code, staff_id, role, reason)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (check_id) DO NOTHING",
        )
        .await?;
    Ok(c.execute(
        &stmt,
        &[
            &check_id,
            &actor.facility,
            &actor.staff,
            &actor.role,
            &reason,
        ],
    )
    .await?
        == 1)
}

pub async fn override_of(
    c: &impl GenericClient,
    check_id: Uuid,
) -> Result<Option<Override>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT at, staff_id, role, reason FROM check_overrides WHERE check_id = $1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&check_id]).await?.map(|r| Override {
        at: r.get(0),
        staff_id: r.get(1),
        role: r.get(2),
        reason: r.get(3),
    }))
}
