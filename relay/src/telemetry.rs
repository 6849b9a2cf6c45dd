//! Logging. Request spans carry the route *pattern* (`/v1/prescriptions/{id}`), never the path or
//! query string, so patient names and insurance numbers cannot reach the logs through a URL.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogSettings;

/// Installs the global subscriber (once; later calls are ignored so tests can call it freely).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // tokio-postgres logs every statement with its parameters at debug (names, insurance numbers,
    // birth dates): nothing of it above info passes, whatever the filter asks for (span
    // directives such as `[request]=debug` included).
    let no_parameters = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("tokio_postgres") && *meta.level() > tracing::Level::INFO)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(FmtSpan::CLOSE);
    let _ = if settings.format == "json" {
        builder.json().finish().with(no_parameters).try_init()
    } else {
        builder.finish().with(no_parameters).try_init()
    };
}

pub struct PrivacyRootSpan;

impl RootSpanBuilder for PrivacyRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "(unmatched)".to_string());
        tracing::info_span!(
            "request",
            method = %request.method(),
            route = %route,
            request_id = %uuid::Uuid::now_v7(),
            status = tracing::field::Empty,
            code = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        match outcome {
            Ok(response) => {
                let status = response.status();
                span.record("status", status.as_u16());
                if let Some(err) = response.response().error()
                    && let Some(api) = err.as_error::<crate::http::ApiError>()
                {
                    span.record("code", api.code());
                }
                if status.is_server_error() {
                    tracing::warn!(parent: &span, status = status.as_u16(), "request failed");
                }
            }
            Err(err) => {
                let status = err.as_response_error().status_code();
                span.record("status", status.as_u16());
            }
        }
    }
}
