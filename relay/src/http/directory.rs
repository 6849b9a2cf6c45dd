//! `GET /v1/directory`: every registered facility with its mail and FAX addresses, for clients to
//! cache (the pharmacy client's offline mode mails the clinic directly when the relay is down).
//! `version` is a hash of the entries, also sent as a strong `ETag`; `If-None-Match` with it
//! answers 304 without a body.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, web};
use jiff::Timestamp;
use serde::Serialize;
use sha2::Digest;

use super::error::{ApiError, Problem};
use super::extract::Caller;
use super::state::AppState;
use crate::auth::Role;
use crate::db::{DbError, facilities};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DirectoryEntry {
    pub code: String,
    /// `clinic` or `pharmacy`.
    pub kind: String,
    pub name: String,
    pub address: Option<String>,
    pub phone: Option<String>,
    pub email: String,
    /// The mail address of the facility's FAX gateway, if it has one.
    pub fax_email: Option<String>,
    pub accepts_e_prescriptions: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Directory {
    /// Changes whenever any entry changes (hash of the entries); also the `ETag`.
    pub version: String,
    #[schema(value_type = String, format = DateTime)]
    pub generated_at: Timestamp,
    /// The latest change to any facility.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
    pub facilities: Vec<DirectoryEntry>,
}

/// The facility directory, by code. Send `If-None-Match: "<version>"` to get 304 when unchanged.
#[utoipa::path(
    get, path = "/v1/directory", tag = "directory",
    params(("If-None-Match" = Option<String>, Header)),
    responses(
        (status = 200, body = Directory, description = "OK (with ETag)"),
        (status = 304, description = "unchanged since the version sent in If-None-Match"),
        (status = 403, body = Problem, description = "wrong role (clinic and pharmacy staff only)"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/directory")]
pub async fn directory(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[
        Role::Doctor,
        Role::ClinicClerk,
        Role::Pharmacist,
        Role::PharmacyClerk,
    ])?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let (all, updated_at) = facilities::list_all(&client).await?;
    let entries: Vec<DirectoryEntry> = all
        .into_iter()
        .map(|f| DirectoryEntry {
            code: f.code.as_str().to_string(),
            kind: f.kind.as_str().to_string(),
            name: f.name,
            address: f.address,
            phone: f.phone,
            email: f.email,
            fax_email: f.fax_email,
            accepts_e_prescriptions: f.accepts_e_prescriptions,
        })
        .collect();
    let canonical = serde_json::to_vec(&entries).map_err(|_| ApiError::internal())?;
    let digest = sha2::Sha256::digest(&canonical);
    let version: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{version}\"");
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if unchanged {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .json(Directory {
            version,
            generated_at: Timestamp::now(),
            updated_at,
            facilities: entries,
        }))
}
