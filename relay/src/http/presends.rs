//! 事前送付 (pre-sending): the issuing clinic forwards a prescription to the pharmacy the patient
//! names (`POST /v1/prescriptions/{id}/presend`); the pharmacy lists what was sent to it
//! (`GET /v1/presends`) and marks it prepared (`POST /v1/presends/{id}/prepared`). A presend does
//! not hold the prescription: the receive stays exclusive and still needs the insurance identity,
//! so the listing never shows the insurer or insured numbers.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::prescriptions::own_facility;
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::presends::{Incoming, Presend};
use crate::db::{DbError, events, facilities, prescriptions, presends};
use crate::domain::identifiers::{FacilityCode, FacilityKind};
use crate::domain::lifecycle::{EventAction, Status, effective_status};
use crate::domain::prescription::Rp;
use crate::domain::time::today;

const CLINIC_ROLES: &[Role] = &[Role::Doctor, Role::ClinicClerk];
const PHARMACY_ROLES: &[Role] = &[Role::Pharmacist, Role::PharmacyClerk];

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresendRequest {
    /// 薬局コード of the pharmacy the patient names (10 digits).
    pub pharmacy: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Named apart from prescriptions::FacilityRef, whose name may be null.
#[schema(as = PresendFacility)]
pub struct FacilityRef {
    pub code: String,
    pub name: String,
}

/// The clinic's view of a presend.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PresendView {
    pub id: Uuid,
    pub prescription_id: Uuid,
    pub pharmacy: FacilityRef,
    #[schema(value_type = String, format = DateTime)]
    pub presented_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub prepared_at: Option<Timestamp>,
    /// The pharmacy of the presend this one replaced, if any.
    pub replaced_pharmacy: Option<String>,
}

/// Where an incoming presend stands at the pharmacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresendStatus {
    /// Sent, not prepared yet.
    Sent,
    /// 準備済み: the pharmacy has prepared the medicines.
    Prepared,
    /// The patient came: this pharmacy holds the prescription now.
    Received,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncomingPatient {
    pub name: String,
    pub name_kana: Option<String>,
    #[schema(value_type = String, format = Date)]
    pub birth_date: Date,
}

/// What a pharmacy sees of a pre-sent prescription: enough to prepare, never the insurance
/// identity (the patient presents it at the receive).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncomingPresend {
    pub id: Uuid,
    pub prescription_id: Uuid,
    pub status: PresendStatus,
    pub exchange_number: String,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_until: Date,
    pub refill_count: Option<u8>,
    pub clinic: FacilityRef,
    pub patient: IncomingPatient,
    pub rps: Vec<Rp>,
    pub remarks: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub presented_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub prepared_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IncomingList {
    pub presends: Vec<IncomingPresend>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IncomingQuery {
    /// `sent`, `prepared` or `received`; all current presends when absent.
    pub status: Option<PresendStatus>,
}

fn parse_id(raw: &str, not_found: fn() -> ApiError) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

fn prescription_not_found() -> ApiError {
    ApiError::not_found("PRESCRIPTION_NOT_FOUND", "no prescription has this id")
}

fn presend_not_found() -> ApiError {
    ApiError::not_found("PRESEND_NOT_FOUND", "no presend has this id")
}

/// 事前送付: at the patient's request, forward a `registered` prescription to the pharmacy the
/// patient names. Again to another pharmacy replaces the earlier presend; to the same pharmacy
/// answers the current one.
#[utoipa::path(
    post, path = "/v1/prescriptions/{id}/presend", tag = "presends",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = PresendRequest,
    responses(
        (status = 201, body = PresendView, description = "pre-sent (replacing an earlier presend, if any)"),
        (status = 200, body = PresendView, description = "already pre-sent to this pharmacy"),
        (status = 403, body = Problem, description = "wrong role, or not the issuing institution"),
        (status = 404, body = Problem, description = "PRESCRIPTION_NOT_FOUND"),
        (status = 409, body = Problem, description = "PRESCRIPTION_NOT_PRESENDABLE (with `current_status`): only a registered prescription can be pre-sent"),
        (status = 422, body = Problem, description = "VALIDATION_FAILED on `pharmacy`: UNKNOWN_PHARMACY, NOT_ACCEPTING_E_PRESCRIPTIONS, or a malformed code"),
        (status = 503, body = Problem, description = "retry with the same Idempotency-Key"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions/{id}/presend")]
pub async fn presend(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(CLINIC_ROLES)?;
    let body = body.parse::<PresendRequest>()?;
    let id = parse_id(&id, prescription_not_found)?;
    let code = FacilityCode::parse(&body.value.pharmacy)
        .map_err(|e| ApiError::field("pharmacy", e.code, e.message))?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let r = prescriptions::get_for_update(tx, id)
            .await?
            .ok_or_else(prescription_not_found)?;
        if r.issuer_code != caller.facility.as_str() {
            return Err(ApiError::forbidden(
                "only the issuing institution may pre-send a prescription",
            ));
        }
        let pharmacy = match facilities::get(tx, &code).await? {
            Some(f) if f.kind == FacilityKind::Pharmacy => f,
            _ => {
                return Err(ApiError::field(
                    "pharmacy",
                    "UNKNOWN_PHARMACY",
                    format!("{code} is not a pharmacy registered with the relay"),
                ));
            }
        };
        if !pharmacy.accepts_e_prescriptions {
            return Err(ApiError::field(
                "pharmacy",
                "NOT_ACCEPTING_E_PRESCRIPTIONS",
                format!(
                    "{} ({code}) does not take e-prescriptions; give the patient the 控え or a paper prescription",
                    pharmacy.name
                ),
            ));
        }
        let status = effective_status(r.status, &r.validity, today());
        if status != Status::Registered {
            return Err(ApiError::conflict(
                "PRESCRIPTION_NOT_PRESENDABLE",
                format!(
                    "the prescription is {}: only a registered prescription can be pre-sent",
                    status.as_str()
                ),
            )
            .with("current_status", status.as_str()));
        }
        let view = |p: &Presend, replaced: Option<String>| PresendView {
            id: p.id,
            prescription_id: p.prescription_id,
            pharmacy: FacilityRef {
                code: p.pharmacy_code.clone(),
                name: pharmacy.name.clone(),
            },
            presented_at: p.presented_at,
            prepared_at: p.prepared_at,
            replaced_pharmacy: replaced,
        };
        let previous = presends::current(tx, id).await?;
        if let Some(p) = &previous
            && p.pharmacy_code == code.as_str()
        {
            return Reply::new(StatusCode::OK, view(p, None));
        }
        if let Some(p) = &previous {
            presends::supersede(tx, p.id).await?;
        }
        let replaced = previous.map(|p| p.pharmacy_code);
        let p = presends::insert(
            tx,
            Uuid::now_v7(),
            id,
            caller.facility.as_str(),
            code.as_str(),
            &caller.staff,
        )
        .await?;
        events::append(
            tx,
            id,
            caller.actor(),
            EventAction::Presend,
            serde_json::json!({"pharmacy": code.as_str(), "presend_id": p.id, "replaces": replaced}),
        )
        .await?;
        Reply::new(StatusCode::CREATED, view(&p, replaced))
    })
    .await
}

fn incoming_view(i: Incoming, pharmacy: &str) -> IncomingPresend {
    let status = if i.status == Status::Dispensing && i.holder_code.as_deref() == Some(pharmacy) {
        PresendStatus::Received
    } else if i.presend.prepared_at.is_some() {
        PresendStatus::Prepared
    } else {
        PresendStatus::Sent
    };
    let d = i.document;
    IncomingPresend {
        id: i.presend.id,
        prescription_id: i.presend.prescription_id,
        status,
        exchange_number: i.exchange_number,
        issued_on: i.issued_on,
        valid_until: i.validity.valid_until,
        refill_count: d.refill_count,
        clinic: FacilityRef {
            code: i.presend.clinic_code,
            name: i.clinic_name,
        },
        patient: IncomingPatient {
            name: d.patient.name,
            name_kana: d.patient.name_kana,
            birth_date: d.patient.birth_date,
        },
        rps: d.rps,
        remarks: d.remarks,
        presented_at: i.presend.presented_at,
        prepared_at: i.presend.prepared_at,
    }
}

/// What was pre-sent to the caller's pharmacy: the current presends of prescriptions still open
/// (registered, or held by this pharmacy), oldest first, with the RPs to prepare. No insurance
/// identity: the patient presents it at the receive.
#[utoipa::path(
    get, path = "/v1/presends", tag = "presends",
    params(IncomingQuery),
    responses(
        (status = 200, body = IncomingList, description = "OK"),
        (status = 403, body = Problem, description = "wrong role, or not a registered pharmacy"),
        (status = 422, body = Problem, description = "unknown status"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/presends")]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<IncomingQuery>,
) -> Result<web::Json<IncomingList>, ApiError> {
    caller.require(PHARMACY_ROLES)?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    own_facility(&client, &caller, FacilityKind::Pharmacy).await?;
    let pharmacy = caller.facility.as_str();
    let today = today();
    let list = presends::incoming(&client, pharmacy)
        .await?
        .into_iter()
        .filter(|i| effective_status(i.status, &i.validity, today) != Status::Expired)
        .map(|i| incoming_view(i, pharmacy))
        .filter(|v| query.status.is_none_or(|s| s == v.status))
        .collect();
    Ok(web::Json(IncomingList { presends: list }))
}

/// The pharmacy marks a presend prepared (準備済み). A repeated call keeps the first time.
#[utoipa::path(
    post, path = "/v1/presends/{id}/prepared", tag = "presends",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = IncomingPresend, description = "prepared (also when it already was)"),
        (status = 403, body = Problem, description = "wrong role, or pre-sent to another pharmacy"),
        (status = 404, body = Problem, description = "PRESEND_NOT_FOUND"),
        (status = 409, body = Problem, description = "PRESEND_NOT_CURRENT: replaced by a presend elsewhere, or the prescription is no longer open here (`current_status`)"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/presends/{id}/prepared")]
pub async fn prepared(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(PHARMACY_ROLES)?;
    let id = parse_id(&id, presend_not_found)?;
    idempotent(&state, &req, &caller, &key, b"", async |tx| {
        let pharmacy = caller.facility.as_str();
        // Lock the prescription before the presend, in the presend handler's order.
        let prescription_id = presends::get(tx, id)
            .await?
            .ok_or_else(presend_not_found)?
            .prescription_id;
        let r = prescriptions::get_for_update(tx, prescription_id)
            .await?
            .ok_or_else(presend_not_found)?;
        let p = presends::get_for_update(tx, id)
            .await?
            .ok_or_else(presend_not_found)?;
        if p.pharmacy_code != pharmacy {
            return Err(ApiError::forbidden(
                "this prescription was pre-sent to another pharmacy",
            ));
        }
        if p.superseded_at.is_some() {
            return Err(ApiError::conflict(
                "PRESEND_NOT_CURRENT",
                "the patient had it pre-sent to another pharmacy since",
            )
            .with("current_status", "superseded"));
        }
        let status = effective_status(r.status, &r.validity, today());
        let open = status == Status::Registered
            || (status == Status::Dispensing && r.holder_code.as_deref() == Some(pharmacy));
        if !open {
            let status = if status == Status::Dispensing {
                "held_by_another_pharmacy"
            } else {
                status.as_str()
            };
            return Err(ApiError::conflict(
                "PRESEND_NOT_CURRENT",
                format!("the prescription is no longer open here ({status})"),
            )
            .with("current_status", status));
        }
        let p = if p.prepared_at.is_none() {
            let p = presends::mark_prepared(tx, id, &caller.staff).await?;
            events::append(
                tx,
                prescription_id,
                caller.actor(),
                EventAction::PresendPrepared,
                serde_json::json!({"presend_id": id}),
            )
            .await?;
            p
        } else {
            p
        };
        let clinic_name = facilities::name_of(tx, &r.issuer_code)
            .await?
            .unwrap_or_default();
        let incoming = Incoming {
            presend: p,
            status: r.status,
            holder_code: r.holder_code,
            exchange_number: r.exchange_number,
            issued_on: r.issued_on,
            validity: r.validity,
            clinic_name,
            document: r.document,
        };
        Reply::new(StatusCode::OK, incoming_view(incoming, pharmacy))
    })
    .await
}
