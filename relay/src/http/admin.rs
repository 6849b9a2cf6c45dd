//! `/v1/admin`: the facility registry and the eligibility registry (role `admin`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use serde::Serialize;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::{facilities, insured};
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
    pub insured_id: Uuid,
    pub insured: crate::domain::facility::InsuredPerson,
}

/// Add an insured person's coverage to the eligibility registry.
#[utoipa::path(
    post, path = "/v1/admin/insured", tag = "admin",
    request_body = InsuredDraft,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = InsuredCreated, description = "created"), (status = 403, body = Problem, description = "wrong role or facility"),
              (status = 409, body = Problem, description = "COVERAGE_EXISTS"),
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
        let Some(id) = insured::insert(tx, &person).await? else {
            return Err(ApiError::conflict(
                "COVERAGE_EXISTS",
                "this insurance identity already has a coverage starting on valid_from",
            ));
        };
        Reply::new(
            StatusCode::CREATED,
            InsuredCreated {
                insured_id: id,
                insured: person.clone(),
            },
        )
    })
    .await
}
