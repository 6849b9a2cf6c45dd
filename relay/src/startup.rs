//! Builds the server from settings and a listener (tests bind port 0), with graceful shutdown:
//! actix-web stops accepting on SIGTERM/SIGINT and lets in-flight requests finish.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;

use crate::auth::{KeyOrigin, KeySet};
use crate::config::Settings;
use crate::db::{self, Pool};
use crate::documents::fonts::Fonts;
use crate::http::{self, AppState};
use crate::telemetry::PrivacyRootSpan;

pub struct Application {
    port: u16,
    server: Server,
    pool: Pool,
    keys: KeySet,
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
        let fonts = Fonts::discover(
            settings.documents.font_path.as_deref(),
            settings.documents.font_index,
        )
        .context("no font for the PDF documents")?;
        let pool = db::pool(&settings)?;
        if settings.database.migrate_on_start {
            let applied = db::migrate(&pool).await.with_context(|| {
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
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            keys: keys.clone(),
            settings: Arc::new(settings),
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

    /// Serves until SIGTERM/SIGINT (or a stop through the server handle), then drains.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}
