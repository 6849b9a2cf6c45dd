//! The one error type of the HTTP boundary, rendered as `application/problem+json` with a stable
//! `code`. Whether a client may retry each status is documented in README.md and the OpenAPI text.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::db::DbError;
use crate::domain::FieldError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the `code` identifies the problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: u16,
    /// Stable, UPPER_SNAKE.
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Problem-specific members such as `holder` or `status`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    // Boxed: handlers return Result<_, ApiError> everywhere and the Ok path should stay small.
    problem: Box<Problem>,
    retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.problem.code,
            self.problem.detail
        )
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            problem: Box::new(Problem {
                kind: "about:blank",
                status: status.as_u16(),
                code,
                title: status.canonical_reason().unwrap_or("Error"),
                detail: detail.into(),
                errors: Vec::new(),
                extra: serde_json::Map::new(),
            }),
            retry_after: None,
        }
    }

    /// Adds a problem-specific member. The problem's own members (`status`, `code`, …) cannot be
    /// overwritten: a duplicate key would make clients read the wrong one.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        const RESERVED: [&str; 6] = ["type", "status", "code", "title", "detail", "errors"];
        debug_assert!(!RESERVED.contains(&key), "problem member {key} is reserved");
        if RESERVED.contains(&key) {
            return self;
        }
        if let Ok(v) = serde_json::to_value(value) {
            self.problem.extra.insert(key.to_string(), v);
        }
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn code(&self) -> &'static str {
        self.problem.code
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            format!(
                "{} field(s) failed validation: {}",
                errors.len(),
                fields.join(", ")
            ),
        );
        e.problem.errors = errors;
        e
    }

    pub fn field(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.to_string(),
            code,
            message: message.into(),
        }])
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn gone(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the relay failed to process this request; it has been logged. Retry with the same Idempotency-Key.",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem document as JSON, for answers that are stored (idempotency, audit).
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(&*self.problem).unwrap_or_default()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                ApiError::unavailable(
                    "DATABASE_UNAVAILABLE",
                    "the relay cannot reach its database right now; retry shortly, or use the paper/FAX fallback",
                )
                .retry_after(5)
            }
            DbError::Statement(err) => {
                tracing::error!(error = %err, "database statement failed");
                ApiError::internal()
            }
            DbError::Corrupt(msg) => {
                tracing::error!(error = %msg, "inconsistent stored data");
                ApiError::internal()
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if let Some(s) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(&self.problem)
    }
}
