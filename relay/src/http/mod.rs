//! The HTTP boundary: routes, extractors and JSON shapes. The only module that knows status codes.

pub mod access_log;
pub mod admin;
pub mod checks;
pub mod consultation;
pub mod directory;
pub mod documents;
pub mod error;
pub mod extract;
pub mod fallbacks;
pub mod health;
pub mod openapi;
pub mod outages;
pub mod outbox;
pub mod prescriptions;
pub mod presends;
pub mod qualifications;
pub mod state;
pub mod tx;
pub mod unmatched;

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use error::ApiError;
pub use state::AppState;

/// Registers every route. Literal paths (`/receive`) come before `{id}` patterns.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::field(
            "query",
            "INVALID_VALUE",
            format!("the query string is invalid: {err}"),
        )
        .into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, _| {
        ApiError::not_found("NOT_FOUND", format!("no such resource: {err}")).into()
    }))
    .configure(unmatched::shadowed_literals)
    .service(health::healthz)
    .service(health::readyz)
    .service(health::jwks)
    .service(admin::create_facility)
    .service(admin::create_insured)
    .service(admin::upsert_staff)
    .service(admin::declare_disaster)
    .service(admin::list_disasters)
    .service(admin::end_disaster)
    .service(outages::declare)
    .service(outages::list)
    .service(outages::end_outage)
    .service(outages::active)
    .service(outbox::list)
    .service(outbox::retry)
    .service(checks::create)
    .service(checks::get_one)
    .service(checks::verbal_consent)
    .service(checks::override_hits)
    .service(qualifications::card)
    .service(qualifications::fallback)
    .service(qualifications::get_one)
    .service(qualifications::outstanding)
    .service(access_log::for_patient)
    .service(prescriptions::receive)
    .service(prescriptions::register)
    .service(prescriptions::search)
    .service(prescriptions::get_one)
    .service(prescriptions::cancel)
    .service(prescriptions::receive_by_card)
    .service(prescriptions::release)
    .service(prescriptions::dispense)
    .service(prescriptions::list_events)
    .service(presends::presend)
    .service(presends::list)
    .service(presends::prepared)
    .service(directory::directory)
    .service(documents::sj1_csv)
    .service(documents::copy_pdf)
    .service(documents::paper_pdf)
    .service(fallbacks::request)
    .service(fallbacks::list)
    .service(fallbacks::originals)
    .service(fallbacks::cover_letter)
    .service(fallbacks::get_one)
    .service(fallbacks::resolve)
    .service(fallbacks::withdraw)
    .service(fallbacks::dispensed)
    .service(fallbacks::original_mailed)
    .service(fallbacks::original_received)
    .service(fallbacks::held)
    .service(consultation::page)
    .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi::ApiDoc::openapi()))
    .route(
        "/docs",
        web::get().to(|| async {
            HttpResponse::Found()
                .insert_header(("Location", "/docs/"))
                .finish()
        }),
    )
    .default_service(web::to(unmatched::answer));
}
