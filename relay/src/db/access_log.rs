//! SQL for `access_log` (append-only reads of patients' prescriptions) and the patient's view of
//! every look at their data: events, reads, eligibility confirmations and checks, in one list.

use jiff::Timestamp;
use jiff::civil::Date;
use uuid::Uuid;

use super::events::Actor;
use super::{DbError, GenericClient, IdentityArrays, identity_in};
use crate::domain::access::{AccessSource, ReadAction};
use crate::domain::identifiers::InsuranceIdentity;

/// Records that `actor` read these prescriptions (one row each, one statement).
pub async fn record_reads(
    c: &impl GenericClient,
    prescription_ids: &[Uuid],
    actor: Actor<'_>,
    action: ReadAction,
    detail: &serde_json::Value,
) -> Result<(), DbError> {
    if prescription_ids.is_empty() {
        return Ok(());
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO access_log (prescription_id, facility_code, staff_id, role, action, detail)
             SELECT id, $2, $3, $4, $5, $6 FROM unnest($1::uuid[]) AS id",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &prescription_ids,
            &actor.facility,
            &actor.staff,
            &actor.role,
            &action.as_str(),
            detail,
        ],
    )
    .await?;
    Ok(())
}

/// Records a read of a person's record as a whole (not of one prescription).
pub async fn record_person_read(
    c: &impl GenericClient,
    person_id: Uuid,
    actor: Actor<'_>,
    action: ReadAction,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO access_log (person_id, facility_code, staff_id, role, action)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &person_id,
            &actor.facility,
            &actor.staff,
            &actor.role,
            &action.as_str(),
        ],
    )
    .await?;
    Ok(())
}

/// One line of the patient's log.
#[derive(Debug, Clone)]
pub struct AccessEntry {
    pub at: Timestamp,
    pub source: AccessSource,
    pub action: String,
    pub facility_code: String,
    pub facility_name: Option<String>,
    pub facility_kind: Option<String>,
    pub role: String,
    pub prescription_id: Option<Uuid>,
    pub issued_on: Option<Date>,
}

/// Everything that touched the person's prescriptions or record, newest first, at most `limit`
/// entries: prescriptions are matched by any of the person's insurance identities and birth date
/// (as the card path finds them), the rest by the person.
pub async fn for_person(
    c: &impl GenericClient,
    person_id: Uuid,
    identities: &[InsuranceIdentity],
    birth_date: Date,
    limit: i64,
) -> Result<Vec<AccessEntry>, DbError> {
    let identity = identity_in(1);
    let stmt = c
        .prepare_cached(&format!(
            "WITH mine AS (
                 SELECT id, issued_on FROM prescriptions WHERE {identity} AND birth_date = $5
             ),
             mine_checks AS (
                 SELECT id, at, facility_code, role FROM checks
                  WHERE person_id = $6 OR ({identity} AND birth_date = $5)
             ),
             entries AS (
                 SELECT e.at, 'event' AS source, e.action, e.facility_code, e.role, e.prescription_id
                   FROM prescription_events e JOIN mine m ON m.id = e.prescription_id
                 UNION ALL
                 SELECT a.at, 'read', a.action, a.facility_code, a.role, a.prescription_id
                   FROM access_log a JOIN mine m ON m.id = a.prescription_id
                 UNION ALL
                 SELECT a.at, 'read', a.action, a.facility_code, a.role, NULL
                   FROM access_log a WHERE a.person_id = $6
                 UNION ALL
                 SELECT q.at, 'qualification', q.method, q.facility_code, q.role, NULL
                   FROM qualifications q WHERE q.person_id = $6 AND q.outcome = 'confirmed'
                 UNION ALL
                 SELECT k.at, 'check', 'checked', k.facility_code, k.role, NULL FROM mine_checks k
                 UNION ALL
                 SELECT cc.at, 'check', 'revealed', cc.facility_code, cc.role, NULL
                   FROM check_consents cc JOIN mine_checks k ON k.id = cc.check_id
             )
             SELECT en.at, en.source, en.action, en.facility_code, f.name, f.kind, en.role,
                    en.prescription_id, m.issued_on
               FROM entries en
               LEFT JOIN facilities f ON f.code = en.facility_code
               LEFT JOIN mine m ON m.id = en.prescription_id
              ORDER BY en.at DESC, en.source, en.action
              LIMIT $7"
        ))
        .await?;
    let a = IdentityArrays::new(identities);
    let rows = c
        .query(
            &stmt,
            &[
                &a.insurers,
                &a.symbols,
                &a.numbers,
                &a.branches,
                &birth_date,
                &person_id,
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let source = match r.get::<_, &str>(1) {
                "event" => AccessSource::Event,
                "read" => AccessSource::Read,
                "qualification" => AccessSource::Qualification,
                "check" => AccessSource::Check,
                other => return Err(DbError::Corrupt(format!("access log source {other}"))),
            };
            Ok(AccessEntry {
                at: r.get(0),
                source,
                action: r.get(2),
                facility_code: r.get(3),
                facility_name: r.get(4),
                facility_kind: r.get(5),
                role: r.get(6),
                prescription_id: r.get(7),
                issued_on: r.get(8),
            })
        })
        .collect()
}
