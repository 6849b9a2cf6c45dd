//! SQL for `outages` (declared outages) and `outage_events`, their append-only audit trail.
//!
//! An outage's state is computed from the clock of the database at each statement (`now()`), so a
//! scheduled outage starts, and one past its planned end stops, without anybody touching it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::Actor;
use super::{DbError, GenericClient};

/// What an outage suspends: `issuing` (registration) or `all` (registration and every receive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Issuing,
    All,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Issuing => "issuing",
            Scope::All => "all",
        }
    }

    fn parse(s: &str) -> Result<Self, DbError> {
        match s {
            "issuing" => Ok(Scope::Issuing),
            "all" => Ok(Scope::All),
            other => Err(DbError::Corrupt(format!("outage scope {other:?}"))),
        }
    }
}

/// Where an outage stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Declared, `starts_at` not reached yet.
    Scheduled,
    /// Running: work in its scope is refused.
    Active,
    /// Its planned end (`ends_at`) has passed.
    Elapsed,
    /// Ended by an administrator (before it started, it was called off).
    Ended,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Active => "active",
            State::Elapsed => "elapsed",
            State::Ended => "ended",
        }
    }

    fn parse(s: &str) -> Result<Self, DbError> {
        match s {
            "scheduled" => Ok(State::Scheduled),
            "active" => Ok(State::Active),
            "elapsed" => Ok(State::Elapsed),
            "ended" => Ok(State::Ended),
            other => Err(DbError::Corrupt(format!("outage state {other:?}"))),
        }
    }
}

/// A member of staff by facility and staff id (the token's `facility` and `sub`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StaffRef {
    pub facility_code: String,
    pub staff_id: String,
}

/// An outage as stored, with its state now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Outage {
    pub id: Uuid,
    pub scope: Scope,
    pub state: State,
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: Timestamp,
    /// The planned end; `null`: until an administrator ends it.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<Timestamp>,
    pub note: String,
    #[schema(value_type = String, format = DateTime)]
    pub declared_at: Timestamp,
    pub declared_by: StaffRef,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    pub ended_by: Option<StaffRef>,
    /// Whole seconds from now until the planned end, while it lies ahead and nobody ended it.
    #[serde(skip)]
    pub seconds_to_planned_end: Option<i64>,
}

/// A declaration, validated.
#[derive(Debug, Clone)]
pub struct NewOutage {
    pub scope: Scope,
    pub starts_at: Timestamp,
    pub ends_at: Option<Timestamp>,
    pub note: String,
}

const COLUMNS: &str = "id, scope, starts_at, ends_at, note, declared_at,
    declared_by_facility, declared_by_staff, ended_at, ended_by_facility, ended_by_staff,
    CASE WHEN ended_at IS NOT NULL THEN 'ended'
         WHEN starts_at > now() THEN 'scheduled'
         WHEN ends_at <= now() THEN 'elapsed'
         ELSE 'active' END,
    CASE WHEN ended_at IS NULL AND ends_at > now()
         THEN ceil(extract(epoch FROM ends_at - now()))::bigint END";

/// Running now: not ended, started, planned end (if any) ahead.
const RUNNING: &str =
    "ended_at IS NULL AND starts_at <= now() AND (ends_at IS NULL OR ends_at > now())";

fn from_row(r: &tokio_postgres::Row) -> Result<Outage, DbError> {
    let ended_by = match (
        r.get::<_, Option<String>>(9),
        r.get::<_, Option<String>>(10),
    ) {
        (Some(facility_code), Some(staff_id)) => Some(StaffRef {
            facility_code,
            staff_id,
        }),
        _ => None,
    };
    Ok(Outage {
        id: r.get(0),
        scope: Scope::parse(r.get(1))?,
        starts_at: r.get(2),
        ends_at: r.get(3),
        note: r.get(4),
        declared_at: r.get(5),
        declared_by: StaffRef {
            facility_code: r.get(6),
            staff_id: r.get(7),
        },
        ended_at: r.get(8),
        ended_by,
        state: State::parse(r.get(11))?,
        seconds_to_planned_end: r.get(12),
    })
}

fn from_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<Outage>, DbError> {
    rows.iter().map(from_row).collect()
}

/// Stores a declaration and its `declared` audit row.
pub async fn insert(
    c: &impl GenericClient,
    o: &NewOutage,
    actor: Actor<'_>,
) -> Result<Outage, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO outages (id, scope, starts_at, ends_at, note, declared_by_facility,
                 declared_by_staff)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &Uuid::now_v7(),
                &o.scope.as_str(),
                &o.starts_at,
                &o.ends_at,
                &o.note,
                &actor.facility,
                &actor.staff,
            ],
        )
        .await?;
    let outage = from_row(&row)?;
    append_event(
        c,
        outage.id,
        actor,
        "declared",
        serde_json::json!({
            "scope": outage.scope.as_str(),
            "starts_at": outage.starts_at,
            "ends_at": outage.ends_at,
            "note": outage.note,
            "state": outage.state.as_str(),
        }),
    )
    .await?;
    Ok(outage)
}

pub async fn get(c: &impl GenericClient, id: Uuid) -> Result<Option<Outage>, DbError> {
    let stmt = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM outages WHERE id = $1"))
        .await?;
    c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Outages newest first (at most 500): all of them, only the running ones (`Some(true)`), or
/// only the others (`Some(false)`).
pub async fn list(c: &impl GenericClient, running: Option<bool>) -> Result<Vec<Outage>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM outages
              WHERE $1::boolean IS NULL OR $1 = ({RUNNING})
              ORDER BY starts_at DESC, id DESC LIMIT 500"
        ))
        .await?;
    from_rows(&c.query(&stmt, &[&running]).await?)
}

/// Outages running now or scheduled, soonest first.
pub async fn current_and_scheduled(c: &impl GenericClient) -> Result<Vec<Outage>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM outages
              WHERE ended_at IS NULL AND (ends_at IS NULL OR ends_at > now())
              ORDER BY starts_at, id LIMIT 500"
        ))
        .await?;
    from_rows(&c.query(&stmt, &[]).await?)
}

/// The outage running now with one of `scopes`, if any: when several overlap, the one that runs
/// longest (no planned end first, then the latest planned end), which is when service resumes.
pub async fn running(c: &impl GenericClient, scopes: &[Scope]) -> Result<Option<Outage>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM outages
              WHERE {RUNNING} AND scope = ANY($1)
              ORDER BY ends_at DESC NULLS FIRST, starts_at, id LIMIT 1"
        ))
        .await?;
    let scopes: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
    c.query_opt(&stmt, &[&scopes])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The outcome of [`end`].
pub enum Ended {
    /// Ended now (it was running, or scheduled and is now called off).
    Now {
        outage: Outage,
        was: State,
    },
    /// Already ended, or past its planned end: nothing changed.
    AlreadyOver(Outage),
    NotFound,
}

/// Ends an outage now and writes the `ended` audit row. Under concurrency the row lock makes
/// exactly one caller end it; the others see it ended.
pub async fn end(c: &impl GenericClient, id: Uuid, actor: Actor<'_>) -> Result<Ended, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE outages SET ended_at = now(), ended_by_facility = $2, ended_by_staff = $3
              WHERE id = $1 AND ended_at IS NULL AND (ends_at IS NULL OR ends_at > now())
              RETURNING {COLUMNS}"
        ))
        .await?;
    let Some(row) = c
        .query_opt(&stmt, &[&id, &actor.facility, &actor.staff])
        .await?
    else {
        return Ok(match get(c, id).await? {
            Some(o) => Ended::AlreadyOver(o),
            None => Ended::NotFound,
        });
    };
    let outage = from_row(&row)?;
    let was = match outage.ended_at {
        Some(at) if outage.starts_at > at => State::Scheduled,
        _ => State::Active,
    };
    append_event(
        c,
        outage.id,
        actor,
        "ended",
        serde_json::json!({"was": was.as_str(), "ended_at": outage.ended_at}),
    )
    .await?;
    Ok(Ended::Now { outage, was })
}

async fn append_event(
    c: &impl GenericClient,
    outage_id: Uuid,
    actor: Actor<'_>,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO outage_events (outage_id, action, actor, facility_code, role, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &outage_id,
            &action,
            &actor.staff,
            &actor.facility,
            &actor.role,
            &detail,
        ],
    )
    .await?;
    Ok(())
}
