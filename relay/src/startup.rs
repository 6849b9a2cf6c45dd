//! Builds the server from settings and a listener (tests bind port 0), with graceful shutdown:
//! actix-web stops accepting on SIGTERM/SIGINT and lets in-flight requests finish; then the
//! periodic jobs stop (the mail worker after the delivery it is making).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;

use crate::auth::{KeyOrigin, KeySet};
use crate::config::Settings;
use crate::db::{self, Pool};
use crate::documents::fonts::Fonts;
use crate::http::{self, AppState};
use crate::jobs::Jobs;
use crate::mail::{self, Transport};
use crate::telemetry::PrivacyRootSpan;

pub struct Application {
    port: u16,
    server: Server,
    pool: Pool,
    keys: KeySet,
    jobs: Jobs,
    /// How long the jobs may take to finish after the server stopped.
    jobs_grace: Duration,
}

/// Loads (or on first run creates) the signing key, saying which.
pub fn load_keys(settings: &Settings) -> anyhow::Result<KeySet> {
    let (keys, origin) = KeySet::load_or_create(&settings.auth).context("signing key")?;
    match origin {
        KeyOrigin::Created(path) => tracing::warn!(
            path = %path.display(),
            kid = keys.kid(),
            "no signing key was configured: created a new one (keep it private; it is git-ignored)"
        ),
        KeyOrigin::Loaded(path) => {
            tracing::info!(path = %path.display(), kid = keys.kid(), "signing key loaded")
        }
    }
    Ok(keys)
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Before anything else: production without SMTP must not even bind its port.
        Transport::from_settings(&settings).context("mail")?;
        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let keys = load_keys(&settings)?;
        Self::build_with(settings, listener, keys).await
    }

    /// For tests: an explicit listener and key set.
    pub async fn build_with(
        settings: Settings,
        listener: TcpListener,
        keys: KeySet,
    ) -> anyhow::Result<Self> {
        let transport = Arc::new(Transport::from_settings(&settings).context("mail")?);
        let fonts = Fonts::discover(
            settings.documents.font_path.as_deref(),
            settings.documents.font_index,
        )
        .context("no font for the PDF documents")?;
        let pool = db::pool(&settings)?;
        if settings.database.migrate_on_start {
            let applied = db::migrate_and_grant(&pool, &settings)
                .await
                .with_context(|| {
                    format!(
                        "cannot migrate the database at {}",
                        settings.database_url.redacted()
                    )
                })?;
            for m in applied {
                tracing::info!(migration = %m, "applied");
            }
        }
        let port = listener.local_addr()?.port();
        let settings = Arc::new(settings);
        match &*transport {
            Transport::Smtp { .. } => {
                tracing::info!(backend = %transport.describe(), "mail delivery")
            }
            Transport::Files { .. } => tracing::warn!(
                backend = %transport.describe(),
                "mail is written to files, not sent: set RELAY_SMTP_URL to deliver it"
            ),
        }
        let jobs = start_jobs(&pool, &settings, transport)?;
        let jobs_grace =
            Duration::from_millis(settings.mail.smtp_timeout_ms) + Duration::from_secs(5);
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            keys: keys.clone(),
            settings,
            fonts: Arc::new(fonts),
        });
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<PrivacyRootSpan>::new())
                .app_data(state.clone())
                .configure(http::configure)
        })
        .listen(listener)?
        // Longer than actix's 5 s default: clients keep connections in their pools for a while,
        // and a connection the server closed under them fails a request.
        .keep_alive(std::time::Duration::from_secs(75))
        .shutdown_timeout(15)
        .run();
        tracing::info!(port, "relay listening");
        Ok(Self {
            port,
            server,
            pool,
            keys,
            jobs,
            jobs_grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Serves until SIGTERM/SIGINT (or a stop through the server handle), then drains, then stops
    /// the periodic jobs.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.jobs.shutdown(self.jobs_grace).await;
        served
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

/// The periodic jobs of a serving relay (unless `[jobs] enabled = false`): the mail worker every
/// `[mail] poll_interval_ms`, the reminders every `[jobs] reminder_interval_seconds`.
fn start_jobs(
    pool: &Pool,
    settings: &Arc<Settings>,
    transport: Arc<Transport>,
) -> anyhow::Result<Jobs> {
    let mut jobs = Jobs::new();
    if !settings.jobs.enabled {
        tracing::info!("periodic jobs are off ([jobs] enabled = false): mail is not delivered");
        return Ok(jobs);
    }
    let worker = mail::Worker::with_transport(pool.clone(), settings, transport)
        .context("mail")?
        .with_shutdown(jobs.shutdown_signal());
    jobs.spawn_periodic(
        "mail",
        Duration::from_millis(settings.mail.poll_interval_ms),
        move || {
            let worker = worker.clone();
            async move {
                if let Err(e) = worker.drain().await {
                    tracing::warn!(error = %e, "mail worker: database error; trying again later");
                }
            }
        },
    );
    let (pool, settings) = (pool.clone(), settings.clone());
    jobs.spawn_periodic(
        "reminders",
        Duration::from_secs(settings.jobs.reminder_interval_seconds),
        move || {
            let (pool, settings) = (pool.clone(), settings.clone());
            async move {
                match crate::reminders::run_once(&pool, &settings).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(reminders = n, "reminders written to the outbox"),
                    Err(e) => tracing::warn!(error = %e, "reminders failed; trying again later"),
                }
            }
        },
    );
    Ok(jobs)
}
