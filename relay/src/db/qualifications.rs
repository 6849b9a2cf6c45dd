//! SQL for `qualifications`: every eligibility confirmation, confirmed or refused. The table
//! refuses UPDATE and DELETE, so it is the audit of 資格確認 as well.

use jiff::Timestamp;
use jiff::civil::Date;
use uuid::Uuid;

use super::events::Actor;
use super::{DbError, GenericClient, IdentityArrays, identity_in};
use crate::domain::eligibility::{ClaimBasis, Method};
use crate::domain::identifiers::InsuranceIdentity;

/// A qualification about to be recorded.
pub struct NewQualification<'a> {
    pub id: Uuid,
    pub actor: Actor<'a>,
    pub method: Method,
    /// `Some(code)` for a refusal.
    pub refusal_code: Option<&'a str>,
    pub person_id: Option<Uuid>,
    pub identity: Option<&'a InsuranceIdentity>,
    pub birth_date: Option<Date>,
    pub claim_basis: Option<ClaimBasis>,
    pub info_sharing: bool,
    pub disaster_id: Option<Uuid>,
    pub expires_at: Option<Timestamp>,
    pub detail: &'a serde_json::Value,
}

pub async fn insert(c: &impl GenericClient, q: &NewQualification<'_>) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO qualifications (id, facility_code, staff_id, role, method, outcome,
                 refusal_code, person_id, insurer_number, symbol, number, branch, birth_date,
                 claim_basis, info_sharing, disaster_id, expires_at, detail)
             VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::text IS NULL THEN 'confirmed' ELSE 'refused' END,
                 $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .await?;
    let i = q.identity;
    c.execute(
        &stmt,
        &[
            &q.id,
            &q.actor.facility,
            &q.actor.staff,
            &q.actor.role,
            &q.method.as_str(),
            &q.refusal_code,
            &q.person_id,
            &i.map(|i| i.insurer_number.as_str()),
            &i.map(|i| i.symbol.as_str()),
            &i.map(|i| i.number.as_str()),
            &i.map(|i| i.branch.as_str()),
            &q.birth_date,
            &q.claim_basis.map(|b| b.as_str()),
            &q.info_sharing,
            &q.disaster_id,
            &q.expires_at,
            q.detail,
        ],
    )
    .await?;
    Ok(())
}

/// A confirmed qualification as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: Uuid,
    pub at: Timestamp,
    pub facility_code: String,
    pub method: Method,
    pub person_id: Option<Uuid>,
    pub identity: Option<InsuranceIdentity>,
    pub birth_date: Option<Date>,
    pub info_sharing: bool,
    pub disaster_id: Option<Uuid>,
    pub expires_at: Timestamp,
    /// The answer given when it was confirmed.
    pub detail: serde_json::Value,
}

/// A confirmed qualification by id (refusals are never returned).
pub async fn get_confirmed(c: &impl GenericClient, id: Uuid) -> Result<Option<Stored>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT id, at, facility_code, method, person_id, insurer_number, symbol, number,
                    branch, birth_date, info_sharing, disaster_id, expires_at, detail
               FROM qualifications WHERE id = $1 AND outcome = 'confirmed'",
        )
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let corrupt = |what: &str| DbError::Corrupt(format!("qualification {id}: unreadable {what}"));
    let method: String = r.get(3);
    let identity = match (
        r.get::<_, Option<&str>>(5),
        r.get::<_, Option<&str>>(6),
        r.get::<_, Option<&str>>(7),
        r.get::<_, Option<&str>>(8),
    ) {
        (Some(i), Some(s), Some(n), Some(b)) => {
            Some(InsuranceIdentity::parse(i, s, n, b).map_err(|_| corrupt("insurance identity"))?)
        }
        _ => None,
    };
    Ok(Some(Stored {
        id: r.get(0),
        at: r.get(1),
        facility_code: r.get(2),
        method: Method::parse(&method).ok_or_else(|| corrupt("method"))?,
        person_id: r.get(4),
        identity,
        birth_date: r.get(9),
        info_sharing: r.get(10),
        disaster_id: r.get(11),
        expires_at: r.get(12),
        detail: r.get(13),
    }))
}

/// Whether `facility` confirmed this patient's eligibility before: the same person of the
/// registry, or one of the identities with the same birth date.
pub async fn confirmed_before(
    c: &impl GenericClient,
    facility: &str,
    person_id: Option<Uuid>,
    identities: &[InsuranceIdentity],
    birth_date: Option<Date>,
) -> Result<bool, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM qualifications
              WHERE facility_code = $1 AND outcome = 'confirmed'
                AND (($2::uuid IS NOT NULL AND person_id = $2)
                     OR ({} AND ($7::date IS NULL OR birth_date = $7))))",
            identity_in(3)
        ))
        .await?;
    let a = IdentityArrays::new(identities);
    Ok(c.query_one(
        &stmt,
        &[
            &facility,
            &person_id,
            &a.insurers,
            &a.symbols,
            &a.numbers,
            &a.branches,
            &birth_date,
        ],
    )
    .await?
    .get(0))
}
