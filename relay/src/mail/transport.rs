//! Where messages go: an SMTP server (`RELAY_SMTP_URL`, through lettre with rustls) or, without
//! one, `.eml` files in `[mail] dir` for local use. Production refuses to start without SMTP.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use uuid::Uuid;

use crate::config::Settings;

/// Why the mail configuration cannot be used; the relay does not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "RELAY_SMTP_URL is not set, and {reason} requires SMTP: set RELAY_SMTP_URL (e.g. \
         smtp://user:password@mail.example.jp:587?tls=required) or smtp_url in config/local.toml"
    )]
    SmtpRequired { reason: String },
    #[error(
        "RELAY_SMTP_URL ({url}) is not a usable SMTP URL (smtp://host:port, \
         smtp://user:password@host:587?tls=required|opportunistic, smtps://host:465): {source}"
    )]
    SmtpUrl {
        url: String,
        source: lettre::transport::smtp::Error,
    },
    #[error(
        "[mail] from ({from:?}) is not a mailbox such as \"電子処方箋リレー <relay@example.jp>\""
    )]
    From { from: String },
}

/// A failed delivery attempt. Permanent failures (a 5xx refusal, an impossible address) are not
/// retried; anything else is, with backoff.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub permanent: bool,
    pub message: String,
}

impl DeliveryError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}

pub enum Transport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// For logs: the password is redacted.
        url: String,
    },
    /// One `{outbox id}.eml` file per message.
    Files { dir: PathBuf },
}

/// The `From` mailbox of `[mail] from`.
pub fn from_mailbox(settings: &Settings) -> Result<Mailbox, SetupError> {
    settings.mail.from.parse().map_err(|_| SetupError::From {
        from: settings.mail.from.clone(),
    })
}

impl Transport {
    /// SMTP when `smtp_url` is set, else the mail directory — unless SMTP is required
    /// (`RELAY_ENV=production` or `[mail] require_smtp`), which is an error.
    pub fn from_settings(settings: &Settings) -> Result<Self, SetupError> {
        from_mailbox(settings)?;
        let url = settings
            .smtp_url
            .as_ref()
            .filter(|u| !u.expose().trim().is_empty());
        let Some(url) = url else {
            if settings.mail.smtp_required(&settings.env) {
                let reason = if settings.env == "production" {
                    "RELAY_ENV=production".to_string()
                } else {
                    "[mail] require_smtp".to_string()
                };
                return Err(SetupError::SmtpRequired { reason });
            }
            return Ok(Transport::Files {
                dir: settings.mail.dir.clone(),
            });
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose().trim())
            .map_err(|source| SetupError::SmtpUrl {
                url: url.redacted(),
                source,
            })?
            .timeout(Some(Duration::from_millis(settings.mail.smtp_timeout_ms)))
            .build();
        Ok(Transport::Smtp {
            transport,
            url: url.redacted(),
        })
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp { url, .. } => format!("SMTP {url}"),
            Transport::Files { dir } => format!("files in {} (no RELAY_SMTP_URL)", dir.display()),
        }
    }

    pub fn is_smtp(&self) -> bool {
        matches!(self, Transport::Smtp { .. })
    }

    /// Delivers one message (to every recipient of its envelope).
    pub async fn send(&self, id: Uuid, message: &Message) -> Result<(), DeliveryError> {
        match self {
            Transport::Smtp { transport, .. } => transport
                .send(message.clone())
                .await
                .map(|_| ())
                .map_err(|e| {
                    let text = error_text(&e);
                    if e.is_permanent() {
                        DeliveryError::permanent(text)
                    } else {
                        DeliveryError::transient(text)
                    }
                }),
            Transport::Files { dir } => write_file(dir, id, &message.formatted())
                .await
                .map_err(|e| DeliveryError::transient(format!("{}: {e}", dir.display()))),
        }
    }
}

/// lettre's error with its causes (the connection error behind "Connection error", say).
fn error_text(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Writes `{id}.eml` whole or not at all (a temporary file renamed into place), so a reader of the
/// directory never sees half a message and a repeated delivery replaces the file.
async fn write_file(dir: &std::path::Path, id: Uuid, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(format!("{id}.eml"))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatabaseUrl, SmtpUrl};

    fn settings() -> Settings {
        Settings::with_database(DatabaseUrl::new("postgres://relay@127.0.0.1/relay"))
    }

    #[test]
    fn production_without_smtp_refuses_to_start() {
        let mut s = settings();
        s.env = "production".into();
        let err = Transport::from_settings(&s).err().expect("refused");
        assert!(matches!(err, SetupError::SmtpRequired { .. }));
        let text = err.to_string();
        assert!(text.contains("RELAY_SMTP_URL") && text.contains("RELAY_ENV=production"));

        // An empty variable is no SMTP either.
        s.smtp_url = Some(SmtpUrl::new(" "));
        assert!(Transport::from_settings(&s).is_err());

        s.smtp_url = Some(SmtpUrl::new("smtp://127.0.0.1:2525"));
        assert!(Transport::from_settings(&s).expect("SMTP").is_smtp());
    }

    #[test]
    fn require_smtp_refuses_to_start_in_any_environment() {
        let mut s = settings();
        s.mail.require_smtp = true;
        let err = Transport::from_settings(&s).err().expect("refused");
        assert!(err.to_string().contains("[mail] require_smtp"));
    }

    #[test]
    fn local_without_smtp_writes_files() {
        let s = settings();
        match Transport::from_settings(&s).expect("files") {
            Transport::Files { dir } => assert_eq!(dir, s.mail.dir),
            Transport::Smtp { .. } => panic!("no SMTP was configured"),
        }
    }

    #[test]
    fn every_documented_url_form_is_accepted_and_redacted() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://user:pa%40ss@mail.example.jp:587?tls=required",
            "smtp://mail.example.jp:587?tls=opportunistic",
            "smtps://user:secret@mail.example.jp",
        ] {
            let mut s = settings();
            s.smtp_url = Some(SmtpUrl::new(url));
            let t = Transport::from_settings(&s).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(t.is_smtp());
            assert!(!t.describe().contains("secret") && !t.describe().contains("pa%40ss"));
        }
        for url in ["http://mail.example.jp", "smtp://h?tls=maybe", "not a url"] {
            let mut s = settings();
            s.smtp_url = Some(SmtpUrl::new(url));
            assert!(
                matches!(
                    Transport::from_settings(&s),
                    Err(SetupError::SmtpUrl { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn from_must_be_a_mailbox() {
        let mut s = settings();
        s.mail.from = "電子処方箋リレー".into();
        assert!(matches!(
            Transport::from_settings(&s),
            Err(SetupError::From { .. })
        ));
    }
}
