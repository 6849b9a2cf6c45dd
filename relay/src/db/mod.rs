//! Every SQL statement of the relay lives in this module tree, one module per table (the schema
//! itself lives in `sql/`). Functions take a [`GenericClient`] so the caller decides the
//! transaction; statements are prepared once per connection (`prepare_cached`).

pub mod access_log;
pub mod checks;
pub mod connection;
pub mod disasters;
pub mod events;
pub mod facilities;
pub mod fallbacks;
pub mod grants;
pub mod idempotency;
pub mod insured;
pub mod master;
pub mod outages;
pub mod outbox;
pub mod prescriptions;
pub mod presends;
pub mod qualifications;
pub mod staff;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

pub use deadpool_postgres::{GenericClient, Pool};
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime,
};

use crate::config::Settings;
use crate::domain::identifiers::InsuranceIdentity;

/// Insurance identities as four parallel text arrays, for
/// `(insurer_number, symbol, number, branch) IN (SELECT * FROM unnest($a, $b, $c, $d))`.
pub struct IdentityArrays {
    pub insurers: Vec<String>,
    pub symbols: Vec<String>,
    pub numbers: Vec<String>,
    pub branches: Vec<String>,
}

impl IdentityArrays {
    pub fn new<'a>(identities: impl IntoIterator<Item = &'a InsuranceIdentity>) -> Self {
        let mut a = IdentityArrays {
            insurers: Vec::new(),
            symbols: Vec::new(),
            numbers: Vec::new(),
            branches: Vec::new(),
        };
        for i in identities {
            a.insurers.push(i.insurer_number.to_string());
            a.symbols.push(i.symbol.to_string());
            a.numbers.push(i.number.to_string());
            a.branches.push(i.branch.to_string());
        }
        a
    }
}

/// The SQL predicate matching any identity of an [`IdentityArrays`] bound at `$n`…`$n+3`.
pub fn identity_in(first_param: usize) -> String {
    let n = first_param;
    format!(
        "(insurer_number, symbol, number, branch) IN
           (SELECT * FROM unnest(${n}::text[], ${}::text[], ${}::text[], ${}::text[]))",
        n + 1,
        n + 2,
        n + 3
    )
}

/// What the HTTP layer needs to know about a database failure: whether the database was
/// unreachable (answer 503, retry later) or a statement failed (a bug: answer 500 and log).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database statement failed: {}", redacted(.0))]
    Statement(tokio_postgres::Error),
    /// A stored value no longer parses: a bug or a manual edit, never the client's fault.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// A statement error as it may be logged: severity, SQLSTATE, message and the schema objects
/// involved. Never the server's DETAIL (`Key (…)=(…)`, `Failing row contains (…)` quote the
/// values: names, insurance numbers, birth dates) nor the message of a data exception (class 22,
/// `invalid input syntax for type date: "…"` quotes the value).
pub fn redacted(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return e.to_string();
    };
    let code = db.code().code();
    let mut s = format!("{} {code}", db.severity());
    if !code.starts_with("22") {
        s.push_str(": ");
        s.push_str(db.message());
    }
    for (name, value) in [
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(v) = value {
            s.push_str(&format!(" {name}={v}"));
        }
    }
    s
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let connection_lost = e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        // QUERY_CANCELED: the relay never cancels statements itself, so this is
        // `statement_timeout` (a lock held elsewhere, an overloaded server): retry later.
        let server_going_away = e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::QUERY_CANCELED,
            ]
            .contains(c)
        });
        if connection_lost || server_going_away {
            DbError::Unavailable(e.to_string())
        } else {
            DbError::Statement(e)
        }
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolSetupError {
    #[error("RELAY_DATABASE_URL ({url}) is not a valid PostgreSQL URL: {source}")]
    Url {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot build the connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
}

/// A pool whose every wait is bounded: `acquire_timeout_ms` for a pooled connection, for the TCP
/// connect and for a new connection's start-up; `statement_timeout_ms` for each statement (in
/// the server); `response_timeout_ms` plus a probe for a connection that went silent
/// ([`connection`]). Connections older than the last detected loss are discarded at checkout, so
/// after the database comes back the pool refills with fresh ones by itself.
pub fn pool(settings: &Settings) -> Result<Pool, PoolSetupError> {
    let mut pg: tokio_postgres::Config =
        settings
            .database_url
            .expose()
            .parse()
            .map_err(|source| PoolSetupError::Url {
                url: settings.database_url.redacted(),
                source,
            })?;
    let db = &settings.database;
    let timeout = Duration::from_millis(db.acquire_timeout_ms);
    pg.connect_timeout(timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("relay");
    }
    let mut set = Vec::new();
    if db.statement_timeout_ms > 0 {
        set.push(format!("-c statement_timeout={}", db.statement_timeout_ms));
    }
    if db.generic_plans {
        set.push("-c plan_cache_mode=force_generic_plan".to_string());
    }
    if !set.is_empty() {
        let set = set.join(" ");
        let options = match pg.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {set}"),
            _ => set,
        };
        pg.options(&options);
    }
    let health = Arc::new(connection::Health::default());
    let connector = connection::Connector {
        response_timeout: (db.response_timeout_ms > 0)
            .then(|| Duration::from_millis(db.response_timeout_ms)),
        probe_timeout: timeout,
        health: health.clone(),
    };
    let manager = Manager::from_connect(
        pg,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(db.pool_size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .pre_recycle(Hook::sync_fn(move |_, metrics| {
            if health.predates_loss(metrics.created) {
                Err(HookError::message(
                    "opened before a connection to the database was found dead",
                ))
            } else {
                Ok(())
            }
        }))
        .runtime(Runtime::Tokio1)
        .build()?)
}

mod embedded {
    refinery::embed_migrations!("../sql");
}

/// Applies the migrations in `sql/` that have not run yet. Concurrent relays serialise on an
/// advisory lock so only one applies them. Migrations (and the wait for the lock) run without
/// `statement_timeout`; the session's setting is restored before the connection returns to the
/// pool.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<String>> {
    const LOCK: i64 = 0x7265_6c61_7900; // "relay\0"
    let mut client = pool.get().await?;
    client.batch_execute("SET statement_timeout = 0").await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .run_async(&mut **client)
        .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    client.batch_execute("RESET statement_timeout").await?;
    unlocked?;
    let report = report?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// [`migrate`], then the serving role's grants when `database.serving_role` is set.
pub async fn migrate_and_grant(pool: &Pool, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let applied = migrate(pool).await?;
    if let Some(role) = &settings.database.serving_role {
        let client = pool.get().await?;
        grants::grant_serving_role(&client, role).await?;
        tracing::info!(role = %role, "serving role granted");
    }
    Ok(applied)
}

/// For `/readyz`: a round trip to the database, within the pool's wait timeout all told.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let limit = pool.timeouts().wait.unwrap_or(Duration::from_secs(2));
    let round_trip = async {
        let client = pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    };
    tokio::time::timeout(limit, round_trip)
        .await
        .unwrap_or_else(|_| {
            Err(DbError::Unavailable(format!(
                "no answer from the database within {limit:?}"
            )))
        })
}
