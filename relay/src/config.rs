//! Layered configuration: `config/default.toml`, then `config/{RELAY_ENV}.toml`, then the git-ignored
//! `config/local.toml`, then `RELAY_…` environment variables (`__` separates nested keys, so
//! `RELAY_THROTTLE__IDENTITY_LIMIT=3`). `RELAY_DATABASE_URL` and `RELAY_LISTEN` are top-level keys so
//! they always work as the contract promises.

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
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// Applies migrations when `relay serve` starts (also available as `relay migrate`).
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            pool_size: 16,
            acquire_timeout_ms: 2_000,
            migrate_on_start: true,
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
    pub fn with_database(database_url: DatabaseUrl) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            database_url,
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            throttle: ThrottleSettings::default(),
            master: MasterSettings::default(),
            log: LogSettings::default(),
            documents: DocumentSettings::default(),
            eligibility: EligibilitySettings::default(),
            checks: ChecksSettings::default(),
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
}
