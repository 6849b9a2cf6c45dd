//! Declared outages (計画停止・障害): administrators declare, list and end them under
//! `/v1/admin/outages`; every authenticated caller sees the current state at `/v1/outages/active`;
//! [`ensure_running`] is what registration and the receives call to refuse work with
//! 503 `SERVICE_SUSPENDED` while an outage runs. The state is read from the database on every
//! call (one indexed query), so declaring or ending an outage takes effect at once on every relay.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::outages::{self, Ended, NewOutage, Outage, Scope, State};
use crate::db::{DbError, GenericClient};
use crate::domain::{FieldError, FieldErrors};

/// What a caller is about to do that an outage may suspend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspended {
    /// Registering a prescription (suspended by outages of scope `issuing` and `all`).
    Issuing,
    /// Receiving a prescription at a pharmacy (suspended by outages of scope `all`).
    Receiving,
}

impl Suspended {
    pub fn as_str(&self) -> &'static str {
        match self {
            Suspended::Issuing => "issuing",
            Suspended::Receiving => "receiving",
        }
    }

    fn scopes(&self) -> &'static [Scope] {
        match self {
            Suspended::Issuing => &[Scope::Issuing, Scope::All],
            Suspended::Receiving => &[Scope::All],
        }
    }
}

/// `Retry-After` when the running outage has no planned end.
pub const RETRY_AFTER_UNPLANNED: u64 = 300;

/// Ok(()) unless a declared outage covering `what` runs now: then 503 SERVICE_SUSPENDED with
/// Retry-After (seconds until the planned end, else 300) and a Japanese+English detail telling
/// the clinic to issue a paper prescription (Issuing) / the pharmacy to use the paper or FAX
/// fallback (Receiving); problem members `outage` {id, scope, starts_at, ends_at, note}.
pub async fn ensure_running(c: &impl GenericClient, what: Suspended) -> Result<(), ApiError> {
    match outages::running(c, what.scopes()).await? {
        None => Ok(()),
        Some(outage) => Err(suspended(what, &outage)),
    }
}

/// The short form of an outage: the `outage` member of a 503 `SERVICE_SUSPENDED` and the items
/// of `/v1/outages/active`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutageSummary {
    pub id: Uuid,
    pub scope: Scope,
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: Timestamp,
    /// The planned end; `null`: until an administrator ends it.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<Timestamp>,
    pub note: String,
}

impl From<&Outage> for OutageSummary {
    fn from(o: &Outage) -> Self {
        Self {
            id: o.id,
            scope: o.scope,
            starts_at: o.starts_at,
            ends_at: o.ends_at,
            note: o.note.clone(),
        }
    }
}

fn suspended(what: Suspended, o: &Outage) -> ApiError {
    let retry_after = o
        .seconds_to_planned_end
        .map(|s| s.max(1) as u64)
        .unwrap_or(RETRY_AFTER_UNPLANNED);
    let (resume_ja, resume_en) = match o.ends_at {
        Some(end) => {
            let jst = end
                .to_zoned(crate::domain::time::tokyo())
                .strftime("%Y-%m-%d %H:%M")
                .to_string();
            (
                format!("再開予定は{jst}（日本時間）です。"),
                format!("Service is planned to resume at {jst} JST."),
            )
        }
        None => (
            "再開時刻は未定です。".to_string(),
            "No end is planned yet.".to_string(),
        ),
    };
    let detail = match what {
        Suspended::Issuing => format!(
            "電子処方箋の発行は、宣言された停止のため現在できません。紙の処方箋を発行してください。{resume_ja} \
             Issuing e-prescriptions is suspended by a declared outage: issue a paper prescription \
             instead. {resume_en}"
        ),
        Suspended::Receiving => format!(
            "電子処方箋の受付は、宣言された停止のため現在できません。紙の処方箋、またはFAXによる代替手段で対応してください。{resume_ja} \
             Receiving e-prescriptions is suspended by a declared outage: dispense from the paper \
             prescription or use the FAX fallback. {resume_en}"
        ),
    };
    ApiError::unavailable("SERVICE_SUSPENDED", detail)
        .with("suspended", what.as_str())
        .with("outage", OutageSummary::from(o))
        .retry_after(retry_after)
}

/// A declaration as it arrives.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutageDraft {
    /// `issuing` suspends registration; `all` suspends registration and every receive.
    pub scope: Scope,
    /// RFC 3339 with an offset, e.g. `2026-04-01T08:00:00+09:00`. May lie in the future (a
    /// planned outage) or the past (recording one that already began).
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: Timestamp,
    /// The planned end, after `starts_at`; omitted: until ended.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<Timestamp>,
    /// What happened and what users should do, shown to every caller (at most 1000 characters).
    pub note: String,
}

impl OutageDraft {
    pub fn validate(&self) -> Result<NewOutage, Vec<FieldError>> {
        let mut e = FieldErrors::new();
        if self.ends_at.is_some_and(|end| end <= self.starts_at) {
            e.add(
                "ends_at",
                "BEFORE_STARTS_AT",
                "ends_at must be after starts_at (omit it when the end is not known)",
            );
        }
        let note = self.note.trim();
        if note.is_empty() {
            e.add(
                "note",
                "REQUIRED",
                "note is required: say what is down and what users should do",
            );
        } else if note.chars().count() > 1000 {
            e.add("note", "TOO_LONG", "note has at most 1000 characters");
        }
        e.finish(|| NewOutage {
            scope: self.scope,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            note: note.to_string(),
        })
    }
}

/// Declare an outage. While it runs, `POST /v1/prescriptions` (scope `issuing` or `all`) and the
/// receives (scope `all`) answer 503 `SERVICE_SUSPENDED`. Recorded in the outage audit trail.
#[utoipa::path(
    post, path = "/v1/admin/outages", tag = "admin",
    request_body = OutageDraft,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Outage, description = "declared"),
              (status = 403, body = Problem, description = "wrong role"),
              (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[post("/v1/admin/outages")]
pub async fn declare(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let body = body.parse::<OutageDraft>()?;
    let outage = body.value.validate().map_err(ApiError::validation)?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let record = outages::insert(tx, &outage, caller.actor()).await?;
        tracing::warn!(
            outage = %record.id,
            scope = record.scope.as_str(),
            state = record.state.as_str(),
            "outage declared"
        );
        Reply::new(StatusCode::CREATED, record)
    })
    .await
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `true`: only outages running now; `false`: only the others; omitted: all.
    pub active: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutageList {
    pub outages: Vec<Outage>,
}

/// Declared outages, newest first (at most 500).
#[utoipa::path(
    get, path = "/v1/admin/outages", tag = "admin",
    params(ListQuery),
    responses((status = 200, body = OutageList, description = "OK"),
              (status = 403, body = Problem, description = "wrong role")),
    security(("bearer" = []))
)]
#[get("/v1/admin/outages")]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<ListQuery>,
) -> Result<web::Json<OutageList>, ApiError> {
    caller.require(&[Role::Admin])?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    Ok(web::Json(OutageList {
        outages: outages::list(&client, query.active).await?,
    }))
}

/// What is suspended now, for every client to show.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceState {
    /// Registration answers 503 `SERVICE_SUSPENDED`: issue paper prescriptions.
    pub issuing_suspended: bool,
    /// Receives answer 503 `SERVICE_SUSPENDED`: use the paper prescription or the FAX fallback.
    pub receiving_suspended: bool,
    /// Outages running now.
    pub active: Vec<OutageSummary>,
    /// Declared outages that have not started yet, soonest first.
    pub scheduled: Vec<OutageSummary>,
}

/// The outages running now and those scheduled: any authenticated caller (clinic and pharmacy
/// systems poll this to show the state to their staff).
#[utoipa::path(
    get, path = "/v1/outages/active", tag = "operations",
    responses((status = 200, body = ServiceState, description = "OK"),
              (status = 401, body = Problem, description = "no valid token")),
    security(("bearer" = []))
)]
#[get("/v1/outages/active")]
pub async fn active(
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<web::Json<ServiceState>, ApiError> {
    let client = state.pool.get().await.map_err(DbError::from)?;
    let all = outages::current_and_scheduled(&client).await?;
    let active: Vec<&Outage> = all.iter().filter(|o| o.state == State::Active).collect();
    Ok(web::Json(ServiceState {
        issuing_suspended: !active.is_empty(),
        receiving_suspended: active.iter().any(|o| o.scope == Scope::All),
        active: active.iter().map(|o| OutageSummary::from(*o)).collect(),
        scheduled: all
            .iter()
            .filter(|o| o.state == State::Scheduled)
            .map(OutageSummary::from)
            .collect(),
    }))
}

/// End an outage now (or call off a scheduled one): service resumes at once on every relay.
#[utoipa::path(
    post, path = "/v1/admin/outages/{id}/end", tag = "admin",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Outage, description = "ended"),
              (status = 403, body = Problem, description = "wrong role"),
              (status = 404, body = Problem, description = "OUTAGE_NOT_FOUND"),
              (status = 409, body = Problem, description = "OUTAGE_ALREADY_ENDED: `state` is `ended` or `elapsed`")),
    security(("bearer" = []))
)]
#[post("/v1/admin/outages/{id}/end")]
pub async fn end_outage(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin])?;
    let not_found = || ApiError::not_found("OUTAGE_NOT_FOUND", "no outage has this id");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    idempotent(&state, &req, &caller, &key, b"", async |tx| {
        let ended = outages::end(tx, id, caller.actor()).await?;
        match ended {
            Ended::Now { outage, was } => {
                tracing::warn!(outage = %outage.id, was = was.as_str(), "outage ended");
                Reply::new(StatusCode::OK, outage)
            }
            Ended::AlreadyOver(outage) => Err(already_over(&outage)),
            Ended::NotFound => Err(not_found()),
        }
    })
    .await
}

fn already_over(o: &Outage) -> ApiError {
    let detail = match (o.state, o.ended_at, &o.ended_by) {
        (State::Ended, Some(at), Some(by)) => format!(
            "outage {} is already ended (state ended, at {at} by {} of {})",
            o.id, by.staff_id, by.facility_code
        ),
        _ => format!(
            "outage {} is already over (state {}): its planned end {} has passed",
            o.id,
            o.state.as_str(),
            o.ends_at.map(|t| t.to_string()).unwrap_or_default()
        ),
    };
    ApiError::conflict("OUTAGE_ALREADY_ENDED", detail)
        .with("state", o.state.as_str())
        .with("outage", o)
}
