//! Request extractors: the authenticated [`Caller`], JSON bodies that name the offending field on
//! any type error ([`JsonBody`]), and the `Idempotency-Key` header.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;
use sha2::Digest;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::{AuthError, Role};
use crate::db::events::Actor;
use crate::domain::FieldError;
use crate::domain::identifiers::FacilityCode;

/// Who is calling: the verified claims of the bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub staff: String,
    pub facility: FacilityCode,
    pub role: Role,
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
            Err(ApiError::forbidden(format!(
                "role {} may not do this; it needs one of: {}",
                self.role.as_str(),
                names.join(", ")
            )))
        }
    }

    pub fn actor(&self) -> Actor<'_> {
        Actor {
            staff: &self.staff,
            facility: self.facility.as_str(),
            role: self.role.as_str(),
        }
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(ApiError::internal)?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthenticated("an Authorization: Bearer <token> header is required")
        })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
        })?;
    let claims = state.keys.verify(token).map_err(|e| {
        let reason = match e {
            AuthError::Expired => "the token has expired; obtain a new one".to_string(),
            other => format!("the token was refused: {other}"),
        };
        ApiError::unauthenticated(reason)
    })?;
    let facility = FacilityCode::parse(&claims.facility).map_err(|e| {
        ApiError::unauthenticated(format!("the token's facility claim is invalid: {e}"))
    })?;
    Ok(Caller {
        staff: claims.sub,
        facility,
        role: claims.role,
    })
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticate(req))
    }
}

/// A request body with its media type (lower-case, without parameters; `application/json` when
/// the client sent none — curl `-d` users forget it). Read before the role check, parsed after.
pub struct RawBody {
    pub mime: String,
    pub bytes: web::Bytes,
}

impl RawBody {
    pub fn is_json(&self) -> bool {
        self.mime == "application/json" || self.mime.ends_with("+json")
    }

    /// The body as JSON, or 415 when it was sent as something else.
    pub fn json(&self) -> Result<JsonBytes, ApiError> {
        if self.is_json() {
            Ok(JsonBytes(self.bytes.clone()))
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("send the body as application/json, not {}", self.mime),
            ))
        }
    }
}

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let mime = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "application/json".into());
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes = bytes.await.map_err(|e| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_NOT_READABLE",
                    format!("the request body could not be read: {e}"),
                )
            })?;
            Ok(RawBody { mime, bytes })
        })
    }
}

/// The raw bytes of a JSON body. Parsing waits for [`JsonBytes::parse`], so a handler checks the
/// caller's role before it looks at the body: a wrong role is 403 whatever the body holds.
pub struct JsonBytes(web::Bytes);

impl JsonBytes {
    pub fn parse<T: DeserializeOwned>(&self) -> Result<JsonBody<T>, ApiError> {
        parse_json(&self.0)
    }
}

impl FromRequest for JsonBytes {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let raw = RawBody::from_request(req, payload);
        Box::pin(async move { raw.await?.json() })
    }
}

/// A parsed JSON body. Syntax errors are 400 `MALFORMED_JSON`; wrong types, unknown fields and
/// unknown enum values are 422 `VALIDATION_FAILED` naming the field path. Keeps a canonical form
/// of the body for idempotency fingerprints.
pub struct JsonBody<T> {
    pub value: T,
    pub canonical: Vec<u8>,
}

/// Parses a JSON document into `T`, naming the field of the first type error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<JsonBody<T>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "MALFORMED_JSON",
            format!(
                "the body is not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    // PostgreSQL text and jsonb cannot hold U+0000: refuse it here, for every field at once.
    if let Some(field) = nul_field(&value, String::new()) {
        return Err(ApiError::field(
            &field,
            "FORMAT",
            format!("{field} contains a NUL character (U+0000), which no field accepts"),
        ));
    }
    let canonical = serde_json::to_vec(&value).unwrap_or_default();
    let value = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        ApiError::validation(vec![type_error(&path, &message)])
    })?;
    Ok(JsonBody { value, canonical })
}

/// The JSON path of the first string (or key) holding U+0000.
fn nul_field(v: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    let name = |at: &str| {
        if at.is_empty() {
            "body".to_string()
        } else {
            at.to_string()
        }
    };
    match v {
        Value::String(s) if s.contains('\0') => Some(name(&at)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_field(item, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(name(&at))
            } else {
                nul_field(item, path)
            }
        }),
        _ => None,
    }
}

fn type_error(path: &str, message: &str) -> FieldError {
    let prefix = if path == "." {
        String::new()
    } else {
        format!("{path}.")
    };
    // serde's messages quote field names in backticks: "missing field `name`".
    let quoted = message.split('`').nth(1).unwrap_or("");
    let (field, code) = if message.starts_with("missing field") {
        (format!("{prefix}{quoted}"), "REQUIRED")
    } else if message.starts_with("unknown field") {
        // The path already ends at the unknown field.
        (path.to_string(), "UNKNOWN_FIELD")
    } else if message.starts_with("unknown variant") {
        (path.to_string(), "INVALID_VALUE")
    } else if message.starts_with("invalid type") {
        (path.to_string(), "INVALID_TYPE")
    } else {
        (path.to_string(), "INVALID_VALUE")
    };
    let field = if field.is_empty() || field == "." {
        "body".to_string()
    } else {
        field
    };
    FieldError {
        message: format!("{field}: {message}"),
        field,
        code,
    }
}

/// The `Idempotency-Key` header, when present.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = match req.headers().get("Idempotency-Key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) => match v.to_str() {
                Ok(s)
                    if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Ok(IdempotencyKey(Some(s.to_string())))
                }
                _ => Err(ApiError::field(
                    "Idempotency-Key",
                    "FORMAT",
                    "the Idempotency-Key header must be 1–255 visible ASCII characters (a UUID is ideal)",
                )),
            },
        };
        std::future::ready(result)
    }
}

/// The fingerprint an idempotency key is bound to: method, path and the canonical body.
pub fn fingerprint(req: &HttpRequest, canonical_body: &[u8]) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(req.method().as_str().as_bytes());
    h.update([0]);
    h.update(req.path().as_bytes());
    h.update([0]);
    // The query is part of the request (an SJ1 registration's issue_type and check_id).
    h.update(req.query_string().as_bytes());
    h.update([0]);
    h.update(canonical_body);
    h.finalize().to_vec()
}

/// A query string parsed into `T`, like `web::Query`, but a bad one is 422 naming the parameter:
/// `web::Query`'s error says only what failed ("UUID parsing failed: invalid length"), not where.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let qs = req.query_string();
        std::future::ready(
            web::Query::<T>::from_query(qs)
                .map(|q| Query(q.into_inner()))
                .map_err(|e| query_error::<T>(qs, &e.to_string())),
        )
    }
}

/// The parameter a query error is about: named by serde (unknown, missing or duplicate), else the
/// one whose removal changes the outcome (each parameter is tried alone; only on an error).
fn query_error<T: DeserializeOwned>(qs: &str, error: &str) -> ApiError {
    let detail = error
        .strip_prefix("Query deserialize error: ")
        .unwrap_or(error)
        .to_string();
    let named = |prefix: &str| {
        detail
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').nth(1))
            .map(str::to_string)
    };
    let (field, code) = if let Some(f) = named("unknown field") {
        (Some(f), "UNKNOWN_FIELD")
    } else if let Some(f) = named("missing field") {
        (Some(f), "REQUIRED")
    } else if let Some(f) = named("duplicate field") {
        (Some(f), "DUPLICATE")
    } else {
        let segments: Vec<&str> = qs.split('&').filter(|s| !s.is_empty()).collect();
        let key = |segment: &str| {
            web::Query::<Vec<(String, String)>>::from_query(segment)
                .ok()
                .and_then(|pairs| pairs.into_inner().into_iter().next())
                .map(|(k, _)| k)
        };
        let culprit = segments.iter().filter_map(|s| key(s)).find(|k| {
            let rest: Vec<&str> = segments
                .iter()
                .copied()
                .filter(|s| key(s).as_deref() != Some(k.as_str()))
                .collect();
            match web::Query::<T>::from_query(&rest.join("&")) {
                Ok(_) => true,
                Err(e) => e.to_string() != error,
            }
        });
        (culprit, "INVALID_VALUE")
    };
    let field = field.unwrap_or_else(|| "query".to_string());
    let message = format!("{field}: {detail}");
    ApiError::validation(vec![FieldError {
        field,
        code,
        message,
    }])
}
