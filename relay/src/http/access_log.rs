//! `GET /v1/qualifications/{id}/access-log`: the patient's 閲覧記録 — who looked at their
//! prescriptions — shown through the facility where they just confirmed eligibility with their
//! マイナ保険証 and agreed to share their information (the relay has no patient login; the card,
//! its PIN or face check, and the consent on the reader are the patient's identification).

use actix_web::{get, web};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::Caller;
use super::qualifications::{RECEPTION, parse_qualification_id, usable};
use super::state::AppState;
use crate::db::{self, DbError};
use crate::domain::access::{self, AccessSource, ReadAction};
use crate::domain::identifiers::InsuranceIdentity;

/// The newest entries shown; older ones are kept and an operator can produce them on request.
const MAX_ENTRIES: i64 = 500;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessLog {
    pub qualification_id: Uuid,
    /// Newest first.
    pub entries: Vec<AccessEntry>,
    /// True when older entries exist beyond the newest 500.
    pub truncated: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessEntry {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub facility: AccessFacility,
    /// The staff role (doctor, clinic_clerk, pharmacist, pharmacy_clerk, admin, or system).
    pub role: String,
    pub source: AccessSource,
    /// The action code (stable, for software).
    pub action: String,
    /// The action in words for the patient.
    pub description: String,
    pub prescription_id: Option<Uuid>,
    /// The prescription's 交付年月日, to tell the patient which prescription.
    #[schema(value_type = Option<String>, format = Date)]
    pub issued_on: Option<Date>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessFacility {
    pub code: String,
    pub name: Option<String>,
    /// clinic or pharmacy; absent for the relay's own actions (e.g. expiry).
    pub kind: Option<String>,
}

/// The patient's access log, for the facility holding their card qualification.
#[utoipa::path(
    get, path = "/v1/qualifications/{id}/access-log", tag = "eligibility",
    params(("id" = Uuid, Path, description = "a card qualification made by the caller's facility, with the patient's consent to share information")),
    responses(
        (status = 200, body = AccessLog, description = "OK; the look itself is recorded"),
        (status = 401, body = Problem, description = "no, expired or invalid token"),
        (status = 403, body = Problem, description = "wrong role (reception staff of a clinic or pharmacy)"),
        (status = 404, body = Problem, description = "QUALIFICATION_NOT_FOUND (also another facility's, or no person identified)"),
        (status = 410, body = Problem, description = "QUALIFICATION_EXPIRED: confirm eligibility again"),
        (status = 422, body = Problem, description = "CARD_PATH_REQUIRED (only the patient's own card identifies them for this), INFO_SHARING_UNAVAILABLE"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/qualifications/{id}/access-log")]
pub async fn for_patient(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<AccessLog>, ApiError> {
    caller.require(RECEPTION)?;
    let id = parse_qualification_id(&id)?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    // Only the card path: a fallback qualification rests on what the visitor says, which must not
    // be enough to learn where somebody else was treated.
    let q = usable(&client, &caller, id, true).await?;
    let person = q.person.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "QUALIFICATION_NOT_FOUND",
            "this qualification identified no registered person; confirm eligibility with the card again",
        )
    })?;
    db::access_log::record_person_read(
        &client,
        person.id,
        caller.actor(),
        ReadAction::AccessLogViewed,
    )
    .await?;
    let identities: Vec<InsuranceIdentity> = person
        .coverages
        .iter()
        .map(|c| c.identity.clone())
        .collect();
    let mut rows = db::access_log::for_person(
        &client,
        person.id,
        &identities,
        person.birth_date,
        MAX_ENTRIES + 1,
    )
    .await?;
    let truncated = rows.len() as i64 > MAX_ENTRIES;
    rows.truncate(MAX_ENTRIES as usize);
    Ok(web::Json(AccessLog {
        qualification_id: id,
        truncated,
        note: "電子処方箋と資格確認・重複投薬等チェックの記録のうち、あなたの情報に触れたものをすべて新しい順に表示しています。心当たりのない記録があれば、受付またはリレーの運営者にお知らせください。".into(),
        entries: rows
            .into_iter()
            .map(|r| AccessEntry {
                description: access::label(r.source, &r.action).to_string(),
                at: r.at,
                facility: AccessFacility {
                    code: r.facility_code,
                    name: r.facility_name,
                    kind: r.facility_kind,
                },
                role: r.role,
                source: r.source,
                action: r.action,
                prescription_id: r.prescription_id,
                issued_on: r.issued_on,
            })
            .collect(),
    }))
}
