//! Layered configuration: `config/default.toml`, then `config/{RELAY_ENV}.toml`, then the git-ignored
//! `config/local.toml`, then `RELAY_…` environment variables (`__` separates nested keys, so
//! `RELAY_THROTTLE__IDENTITY_LIMIT=3`). `RELAY_DATABASE_URL`, `RELAY_LISTEN` and `RELAY_SMTP_URL` are
//! top-level keys so they always work as the contract promises.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::AuthSettings;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// `host:port` the HTTP server binds.
    pub listen: String,
    /// `postgres://` URL. Never logged as is: see [`DatabaseUrl`].
    pub database_url: DatabaseUrl,
    /// `RELAY_ENV` (`local` unless set): which `config/{env}.toml` was read. `production` requires
    /// SMTP (see [`MailSettings::smtp_required`]).
    #[serde(default = "default_env")]
    pub env: String,
    /// `smtp://`, `smtp://…?tls=required|opportunistic` or `smtps://` URL of the mail server,
    /// credentials in the userinfo. Unset: mail is written to files in `[mail] dir`. Never logged
    /// as is: see [`SmtpUrl`].
    #[serde(default)]
    pub smtp_url: Option<SmtpUrl>,
    #[serde(default)]
    pub mail: MailSettings,
    #[serde(default)]
    pub jobs: JobSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub throttle: ThrottleSettings,
    #[serde(default)]
    pub master: MasterSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub documents: DocumentSettings,
    #[serde(default)]
    pub eligibility: EligibilitySettings,
    #[serde(default)]
    pub checks: ChecksSettings,
    #[serde(default)]
    pub fallbacks: FallbackSettings,
}

fn default_env() -> String {
    "local".into()
}

/// The mail outbox and its delivery worker (`relay/src/mail/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MailSettings {
    /// The `From` of every message (a display name in Japanese is fine). Its domain also names
    /// the messages: `Message-ID: <{outbox id}@{domain}>`.
    pub from: String,
    /// Without `smtp_url`, each message is written here as `{outbox id}.eml`.
    pub dir: PathBuf,
    /// Refuse to start without `smtp_url` (always so when `RELAY_ENV=production`).
    pub require_smtp: bool,
    /// Delivery attempts before a message is dead-lettered (visible at `GET /v1/admin/outbox`).
    pub max_attempts: i32,
    /// Retry delay after the first failed attempt; it doubles with each further attempt (with
    /// jitter), up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// How often the worker looks for due messages.
    pub poll_interval_ms: u64,
    /// Messages delivered per pass of the worker (each in its own transaction).
    pub batch_size: i64,
    /// How long one SMTP conversation may take before it counts as a failed attempt.
    pub smtp_timeout_ms: u64,
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            from: "電子処方箋リレー <relay@localhost>".into(),
            dir: PathBuf::from(".local/mail"),
            require_smtp: false,
            max_attempts: 10,
            backoff_base_ms: 60_000,
            backoff_max_ms: 3_600_000,
            poll_interval_ms: 2_000,
            batch_size: 20,
            smtp_timeout_ms: 30_000,
        }
    }
}

impl MailSettings {
    /// Whether the relay must not start without `smtp_url`.
    pub fn smtp_required(&self, env: &str) -> bool {
        self.require_smtp || env == "production"
    }
}

/// Periodic jobs started with the server (`relay/src/jobs.rs`), each at a random offset.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct JobSettings {
    /// Run the periodic jobs (mail worker, reminders) in `relay serve`. Tests that drive the
    /// worker themselves turn this off.
    pub enabled: bool,
    /// How often the reminder jobs run (`crate::reminders::run_once`).
    pub reminder_interval_seconds: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            reminder_interval_seconds: 300,
        }
    }
}

/// The outage fallback's reminders (domain.md §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FallbackSettings {
    /// A prescription held `dispensing` without a result for longer than this is listed as aging
    /// and its pharmacy reminded once (the "調剤中 forever" problem).
    pub held_reminder_hours: i64,
    /// A FAXed prescription's original not posted, or posted and not recorded as received, this
    /// many days later is reminded once (to the clinic, resp. the pharmacy).
    pub original_reminder_days: i32,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        Self {
            held_reminder_hours: 24,
            original_reminder_days: 7,
        }
    }
}

/// Duplicate/contraindication checks (domain.md §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ChecksSettings {
    /// A verbal consent (口頭同意) reveals the causing drugs of its hits for this many minutes.
    pub reveal_minutes: i64,
    /// An override lets registrations and dispensings through for this many hours after its
    /// check ran; later the doctor checks again.
    pub override_valid_hours: i64,
}

impl Default for ChecksSettings {
    fn default() -> Self {
        Self {
            reveal_minutes: 30,
            override_valid_hours: 24,
        }
    }
}

/// 資格確認 rules an operator may need to change when MHLW moves a date.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EligibilitySettings {
    /// A qualification can be used (listing, receiving) for this many hours after it was made.
    pub qualification_ttl_hours: i64,
    /// After the card's electronic certificate expires, it still confirms eligibility (without
    /// sharing medical information) for this many months.
    pub certificate_grace_months: i32,
    /// Expired 健康保険証 or 資格情報のお知らせ alone are accepted through this date.
    pub legacy_card_until: jiff::civil::Date,
}

impl Default for EligibilitySettings {
    fn default() -> Self {
        let rules = crate::domain::eligibility::Rules::default();
        Self {
            qualification_ttl_hours: 24,
            certificate_grace_months: rules.certificate_grace_months,
            legacy_card_until: rules.legacy_card_until,
        }
    }
}

impl EligibilitySettings {
    pub fn rules(&self) -> crate::domain::eligibility::Rules {
        crate::domain::eligibility::Rules {
            certificate_grace_months: self.certificate_grace_months,
            legacy_card_until: self.legacy_card_until,
        }
    }
}

/// Where the PDFs' Japanese font comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DocumentSettings {
    /// A TrueType/OpenType font or collection; unset: fontconfig finds Noto Sans CJK JP or IPAex.
    pub font_path: Option<PathBuf>,
    /// The face inside a collection (`.ttc`), 0 for Noto Sans CJK JP.
    pub font_index: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub pool_size: usize,
    /// How long a request waits for a pooled connection (and a new connection for its TCP connect
    /// and start-up) before answering 503; also bounds `/readyz` and a liveness probe.
    pub acquire_timeout_ms: u64,
    /// Applies migrations when `relay serve` starts (also available as `relay migrate`).
    pub migrate_on_start: bool,
    /// PostgreSQL `statement_timeout` of every session of `relay serve` (0: none): a statement
    /// that runs or waits for a lock longer is cancelled and the request answers 503. One-shot
    /// commands (`migrate`, imports) run without it.
    pub statement_timeout_ms: u64,
    /// While an answer is owed and the server has sent nothing for this long, the relay checks
    /// the server with a fresh connection (answered within `acquire_timeout_ms`, or the connection
    /// is closed and the request answers 503). 0: never (a blackholed connection may hang).
    pub response_timeout_ms: u64,
    /// PostgreSQL `plan_cache_mode = force_generic_plan` for the relay's sessions: every statement
    /// is a key lookup prepared once per connection, and planning it again on each execution (what
    /// `auto` kept doing) cost about a sixth of the database's time per request (BENCHMARKS.md).
    pub generic_plans: bool,
    /// The unprivileged role `relay serve` connects as in production (db/grants.rs): `relay
    /// migrate`, run as the owner, grants it what serving needs after every migration. Unset:
    /// no grants (one role for everything, as in the demo and tests).
    pub serving_role: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            pool_size: 16,
            acquire_timeout_ms: 2_000,
            migrate_on_start: true,
            statement_timeout_ms: 10_000,
            response_timeout_ms: 3_000,
            generic_plans: true,
            serving_role: None,
        }
    }
}

/// Failed 引換番号 guesses tolerated before `429 TOO_MANY_ATTEMPTS`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ThrottleSettings {
    pub window_seconds: i64,
    /// Failures per insurance identity within the window.
    pub identity_limit: i64,
    /// Failures per pharmacy within the window.
    pub pharmacy_limit: i64,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            window_seconds: 600,
            identity_limit: 5,
            pharmacy_limit: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MasterSettings {
    /// Where `relay seed demo` finds the MHLW list and the contraindication seed.
    pub data_dir: PathBuf,
}

impl Default for MasterSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("../shared/data"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// `tracing_subscriber::EnvFilter` syntax; `RUST_LOG` wins when set.
    pub filter: String,
    /// `pretty` for people, `json` for log shippers.
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: "pretty".into(),
        }
    }
}

/// A database URL whose password never reaches a log line or a `Debug` print.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// An SMTP URL (`smtp://user:password@host:587?tls=required`) whose password never reaches a log
/// line or a `Debug` print.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SmtpUrl(String);

impl SmtpUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<String> for SmtpUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SmtpUrl {
    fn from(url: &str) -> Self {
        Self(url.into())
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpUrl({})", self.redacted())
    }
}

fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] config::ConfigError);

impl Settings {
    /// Reads the layers from `config_dir` (normally `./config`).
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        let env = std::env::var("RELAY_ENV").unwrap_or_else(|_| "local".into());
        let built = config::Config::builder()
            .set_default("listen", "127.0.0.1:8080")?
            .set_default("database_url", "postgres://relay@127.0.0.1:5432/relay")?
            .set_override("env", env.as_str())?
            .add_source(config::File::from(config_dir.join("default.toml")).required(false))
            .add_source(config::File::from(config_dir.join(format!("{env}.toml"))).required(false))
            .add_source(config::File::from(config_dir.join("local.toml")).required(false))
            .add_source(
                config::Environment::with_prefix("RELAY")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?;
        Ok(built.try_deserialize()?)
    }

    /// Defaults for everything but the database: for tests and tools that build settings in code.
    /// Without SMTP, their mail goes to files in `$TMPDIR/relay-mail`.
    pub fn with_database(database_url: DatabaseUrl) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            database_url,
            env: default_env(),
            smtp_url: None,
            // Not into the working directory (tests run in the source tree).
            mail: MailSettings {
                dir: std::env::temp_dir().join("relay-mail"),
                ..MailSettings::default()
            },
            jobs: JobSettings::default(),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            throttle: ThrottleSettings::default(),
            master: MasterSettings::default(),
            log: LogSettings::default(),
            documents: DocumentSettings::default(),
            eligibility: EligibilitySettings::default(),
            checks: ChecksSettings::default(),
            fallbacks: FallbackSettings::default(),
        }
    }

    /// The configuration directory: `RELAY_CONFIG_DIR`, else `./config`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("RELAY_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let url = DatabaseUrl::new("postgres://relay:s3cret@127.0.0.1:5433/relay");
        assert_eq!(url.redacted(), "postgres://relay:***@127.0.0.1:5433/relay");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            DatabaseUrl::new("postgres://relay@h/db").redacted(),
            "postgres://relay@h/db"
        );
    }

    #[test]
    fn smtp_passwords_are_redacted() {
        let url = SmtpUrl::new("smtp://relay%40example.jp:s3cret@mail.example.jp:587?tls=required");
        assert_eq!(
            url.redacted(),
            "smtp://relay%40example.jp:***@mail.example.jp:587?tls=required"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn production_requires_smtp() {
        let mail = MailSettings::default();
        assert!(mail.smtp_required("production"));
        assert!(!mail.smtp_required("local"));
        let strict = MailSettings {
            require_smtp: true,
            ..MailSettings::default()
        };
        assert!(strict.smtp_required("local"));
    }
}
