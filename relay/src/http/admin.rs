//! `/v1/admin`: the facility registry and the eligibility registry (role `admin`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::{DbError, disasters, facilities, insured, staff};
use crate::domain::eligibility::DisasterDraft;
use crate::domain::facility::{Facility, FacilityDraft, InsuredDraft};
use crate::domain::time::today;

/// Register a clinic or pharmacy.
#[utoipa::path(
    post, path = "/v1/admin/facilities", tag = "admin",
    request_body = FacilityDraft,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Facility, description = "created"), (status = 403, body = Problem, description = "wrong role or facility"),
              (status = 409, body = Problem, description = "FACILITY_EXISTS"),
              (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[post("/v1/admin/facilities")]
pub async fn create_facility(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.parse::<FacilityDraft>()?;
    let facility = body.value.validate().map_err(ApiError::validation)?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        if !facilities::insert(tx, &facility).await? {
            return Err(ApiError::conflict(
                "FACILITY_EXISTS",
                format!("facility {} is already registered", facility.code),
            ));
        }
        Reply::new(StatusCode::CREATED, &facility)
    })
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InsuredCreated {
    /// The coverage just added.
    pub insured_id: Uuid,
    /// The person it belongs to (earlier coverages of the same person are kept).
    pub person_id: Uuid,
    pub insured: crate::domain::facility::InsuredPerson,
}

/// The registry's answer to a coverage that could not be added, as an HTTP problem.
pub fn insert_refusal(outcome: &insured::Inserted) -> Option<ApiError> {
    use insured::Inserted::*;
    Some(match outcome {
        Created { .. } => return None,
        Exists => ApiError::conflict(
            "COVERAGE_EXISTS",
            "this insurance identity already has a coverage starting on valid_from",
        ),
        CardInUse => ApiError::conflict(
            "CARD_IN_USE",
            "card.card_id belongs to another person of the registry",
        ),
        PersonMismatch => ApiError::conflict(
            "PERSON_MISMATCH",
            "the person found by person_ref, card or insurance identity has another birth date or person_ref",
        ),
        Concurrent => ApiError::conflict(
            "REGISTRY_BUSY",
            "the same person was being added by another request; send this one again",
        ),
    })
}

/// Add an insured person's coverage to the eligibility registry.
#[utoipa::path(
    post, path = "/v1/admin/insured", tag = "admin",
    request_body = InsuredDraft,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = InsuredCreated, description = "created"), (status = 403, body = Problem, description = "wrong role or facility"),
              (status = 409, body = Problem, description = "COVERAGE_EXISTS, CARD_IN_USE, PERSON_MISMATCH; REGISTRY_BUSY (retry)"),
              (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[post("/v1/admin/insured")]
pub async fn create_insured(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.parse::<InsuredDraft>()?;
    let person = body.value.validate(today()).map_err(ApiError::validation)?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let outcome = insured::insert(tx, &person).await?;
        if let Some(err) = insert_refusal(&outcome) {
            return Err(err);
        }
        let insured::Inserted::Created {
            coverage_id,
            person_id,
        } = outcome
        else {
            return Err(ApiError::internal());
        };
        Reply::new(
            StatusCode::CREATED,
            InsuredCreated {
                insured_id: coverage_id,
                person_id,
                insured: person.clone(),
            },
        )
    })
    .await
}

/// A staff account the relay knows by name (printed on documents), with its 目視確認モード flag.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffDraft {
    pub facility_code: String,
    pub staff_id: String,
    #[schema(value_type = String, example = "pharmacy_clerk")]
    pub role: Role,
    pub name: String,
    #[serde(default)]
    pub name_kana: Option<String>,
    /// A 目視確認用パスコード has been issued to this account, so it may confirm a card holder by
    /// sight (`auth: visual`).
    #[serde(default)]
    pub visual_check_enabled: bool,
}

/// Add or update a staff account.
#[utoipa::path(
    post, path = "/v1/admin/staff", tag = "admin",
    request_body = StaffDraft,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = StaffDraft, description = "stored"), (status = 403, body = Problem, description = "wrong role"),
              (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[post("/v1/admin/staff")]
pub async fn upsert_staff(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.parse::<StaffDraft>()?;
    let d = body.value.clone();
    let mut e = crate::domain::FieldErrors::new();
    let code = e.take(
        "facility_code",
        crate::domain::identifiers::FacilityCode::parse(&d.facility_code),
    );
    let staff_id = d.staff_id.trim().to_string();
    if staff_id.is_empty()
        || staff_id.chars().count() > 64
        || staff_id.chars().any(char::is_control)
    {
        e.add(
            "staff_id",
            "FORMAT",
            "staff_id is 1–64 characters, as in the token's sub claim",
        );
    }
    let name = d.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        e.add(
            "name",
            "REQUIRED",
            "name is required (at most 100 characters)",
        );
    }
    let (Some(code), true) = (code, e.is_empty()) else {
        return Err(ApiError::validation(e.into_vec()));
    };
    let stored = StaffDraft {
        facility_code: code.to_string(),
        staff_id,
        name,
        ..d
    };
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let Some(facility) = facilities::get(tx, &code).await? else {
            return Err(ApiError::field(
                "facility_code",
                "UNKNOWN_FACILITY",
                format!("facility {code} is not registered; register it first"),
            ));
        };
        let fits = match stored.role {
            Role::Admin => true,
            r => {
                r.is_clinic() == (facility.kind == crate::domain::identifiers::FacilityKind::Clinic)
            }
        };
        if !fits {
            return Err(ApiError::field(
                "role",
                "ROLE_FACILITY_MISMATCH",
                format!(
                    "role {} does not work at a {}",
                    stored.role.as_str(),
                    facility.kind.as_str()
                ),
            ));
        }
        staff::upsert(
            tx,
            &staff::StaffMember {
                facility_code: code.as_str(),
                staff_id: &stored.staff_id,
                role: stored.role.as_str(),
                name: &stored.name,
                name_kana: stored.name_kana.as_deref(),
                visual_check_enabled: stored.visual_check_enabled,
            },
        )
        .await?;
        Reply::new(StatusCode::OK, &stored)
    })
    .await
}

/// Declare a disaster (災害時モード) for prefectures and/or municipalities and a period.
#[utoipa::path(
    post, path = "/v1/admin/disasters", tag = "admin",
    request_body = DisasterDraft,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = disasters::DisasterRecord, description = "declared"), (status = 403, body = Problem, description = "wrong role"),
              (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[post("/v1/admin/disasters")]
pub async fn declare_disaster(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.parse::<DisasterDraft>()?;
    let disaster = body.value.validate().map_err(ApiError::validation)?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let record = disasters::insert(tx, &disaster, &caller.staff).await?;
        tracing::info!(disaster = %record.disaster_id, "disaster declared");
        Reply::new(StatusCode::CREATED, record)
    })
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DisasterList {
    pub disasters: Vec<disasters::DisasterRecord>,
}

/// Every disaster declaration, newest first.
#[utoipa::path(
    get, path = "/v1/admin/disasters", tag = "admin",
    responses((status = 200, body = DisasterList, description = "OK"), (status = 403, body = Problem, description = "wrong role")),
    security(("bearer" = []))
)]
#[get("/v1/admin/disasters")]
pub async fn list_disasters(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<DisasterList>, ApiError> {
    caller.require(&[Role::Admin])?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    Ok(web::Json(DisasterList {
        disasters: disasters::list(&client).await?,
    }))
}

/// End a disaster declaration now (ending it twice keeps the first end).
#[utoipa::path(
    post, path = "/v1/admin/disasters/{id}/end", tag = "admin",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = disasters::DisasterRecord, description = "ended"), (status = 403, body = Problem, description = "wrong role"),
              (status = 404, body = Problem, description = "DISASTER_NOT_FOUND")),
    security(("bearer" = []))
)]
#[post("/v1/admin/disasters/{id}/end")]
pub async fn end_disaster(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let not_found =
        || ApiError::not_found("DISASTER_NOT_FOUND", "no disaster declaration has this id");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    idempotent(&state, &req, &caller, &key, b"", async |tx| {
        let record = disasters::end(tx, id).await?.ok_or_else(not_found)?;
        Reply::new(StatusCode::OK, record)
    })
    .await
}
