//! The OpenAPI document served at `/openapi.json` (Swagger UI at `/docs`).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    access_log, admin, checks, directory, documents, fallbacks, health, outages, outbox,
    prescriptions, presends, qualifications,
};

const DESCRIPTION: &str = r#"E-prescription relay: clinics register prescriptions and get an 引換番号; pharmacies receive them
exclusively by 引換番号 plus the insurance identity.

Every error is `application/problem+json` with `status`, `title`, `detail` and a stable `code`;
validation errors list every bad field in `errors[]` (`field`, `code`, `message`). No string
field accepts U+0000 (`FORMAT`).

Every state-changing POST accepts an `Idempotency-Key` header. The same key with the same request
returns the stored status and body (header `Idempotent-Replayed: true`); the same key with a
different request is `422 IDEMPOTENCY_KEY_REUSED`. Only completed requests are stored: after an
error the key may be used again — except for refusals that are records themselves: a refused
資格確認 (422) and a lookup by 引換番号 that matched nothing (404, counted by the guessing throttle)
are committed and replay under their key.

| status | codes | may the client retry? |
|---|---|---|
| 400 | MALFORMED_JSON | no: fix the body |
| 401 | UNAUTHENTICATED | only with a new, valid token |
| 403 | FORBIDDEN | no: wrong role or facility |
| 404 | PRESCRIPTION_NOT_FOUND, QUALIFICATION_NOT_FOUND, DISASTER_NOT_FOUND, NOT_FOUND | no: check the 引換番号 and identity with the patient (failed receives count towards the throttle) |
| 405 | METHOD_NOT_ALLOWED | no: use a method the `Allow` header lists |
| 409 | HELD_BY_ANOTHER_PHARMACY, ALREADY_DISPENSED, NOT_HELD, REFILL_NOT_DUE, FACILITY_EXISTS, COVERAGE_EXISTS, CARD_IN_USE, PERSON_MISMATCH | not as is: the prescription's state must change first (e.g. the holder releases it) |
| 409 | PRESCRIPTION_BUSY, REGISTRY_BUSY | yes, at once: it changed while being processed |
| 410 | PRESCRIPTION_CANCELLED, PRESCRIPTION_EXPIRED | never |
| 410 | QUALIFICATION_EXPIRED | no: confirm eligibility again |
| 413, 415 | BODY_NOT_READABLE, UNSUPPORTED_MEDIA_TYPE | no: fix the request |
| 422 | VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED | no: fix the fields / use a new key |
| 422 | eligibility refusals (PIN_LOCKED, CERTIFICATE_EXPIRED, NOTICE_REQUIRES_CARD, …), QUALIFICATION_MISMATCH, CARD_PATH_REQUIRED | no: follow `next_steps` / `fallback_ladder`; refusals are recorded |
| 429 | TOO_MANY_ATTEMPTS | yes, after `Retry-After` seconds |
| 500 | INTERNAL | yes, with the same `Idempotency-Key` |
| 503 | DATABASE_UNAVAILABLE | yes, after `Retry-After`, with the same `Idempotency-Key` |
| 503 | SERVICE_SUSPENDED | after `Retry-After` (the outage's planned end, else 300 s); meanwhile issue paper / use the paper or FAX fallback (`GET /v1/outages/active`) |
| 404, 409 | OUTAGE_NOT_FOUND, OUTAGE_ALREADY_ENDED | no: the outage does not exist / is over (`state`) |
| 409 | UNRESOLVED_CHECK_HITS, CHECK_UNAVAILABLE | not as is: reveal/override the carried `check` and send `check_id`, or acknowledge; use a new key |
| 404, 409 | FALLBACK_NOT_FOUND, FALLBACK_STATE_CONFLICT, FALLBACK_EXISTS, NO_FAX_ADDRESS, REPLACED_PRESCRIPTION_OPEN, PRESCRIPTION_CLOSED | not as is: the case is in `current_status` / already open (`fallback_id`) / needs a FAX address / the replaced e-prescription must be released first |
| 404, 409, 422 | PRESEND_NOT_FOUND, PRESCRIPTION_NOT_PRESENDABLE, PRESEND_NOT_CURRENT; `pharmacy` field: UNKNOWN_PHARMACY, NOT_ACCEPTING_E_PRESCRIPTIONS | no: only a registered prescription is pre-sent (`current_status`), to a registered pharmacy that takes e-prescriptions; a replaced presend or a prescription received elsewhere is no longer prepared |
| 404, 409 | OUTBOX_MESSAGE_NOT_FOUND, OUTBOX_MESSAGE_NOT_DEAD | no: only dead outbox messages are requeued (`message_status`) |
"#;

#[derive(OpenApi)]
#[openapi(
    info(title = "e-prescription relay", description = DESCRIPTION),
    paths(
        health::healthz,
        health::readyz,
        health::jwks,
        admin::create_facility,
        admin::create_insured,
        admin::upsert_staff,
        admin::declare_disaster,
        admin::list_disasters,
        admin::end_disaster,
        outages::declare,
        outages::list,
        outages::end_outage,
        outages::active,
        outbox::list,
        outbox::retry,
        checks::create,
        checks::get_one,
        checks::verbal_consent,
        checks::override_hits,
        qualifications::card,
        qualifications::fallback,
        qualifications::get_one,
        qualifications::outstanding,
        access_log::for_patient,
        prescriptions::register,
        prescriptions::search,
        prescriptions::get_one,
        prescriptions::cancel,
        prescriptions::receive,
        prescriptions::receive_by_card,
        prescriptions::release,
        prescriptions::dispense,
        prescriptions::list_events,
        presends::presend,
        presends::list,
        presends::prepared,
        directory::directory,
        documents::sj1_csv,
        documents::copy_pdf,
        documents::paper_pdf,
        fallbacks::request,
        fallbacks::list,
        fallbacks::get_one,
        fallbacks::resolve,
        fallbacks::withdraw,
        fallbacks::dispensed,
        fallbacks::original_mailed,
        fallbacks::original_received,
        fallbacks::originals,
        fallbacks::cover_letter,
        fallbacks::held,
    ),
    modifiers(&BearerAuth, &CommonResponses),
    tags(
        (name = "prescriptions", description = "clinic side"),
        (name = "dispensing", description = "pharmacy side"),
        (name = "checks", description = "重複投薬・併用禁忌: consent-gated details, 口頭同意, override"),
        (name = "eligibility", description = "資格確認: the card path, the fallback ladder, disaster mode"),
        (name = "presends", description = "事前送付: the clinic forwards a prescription to the patient's pharmacy, which prepares before the receive"),
        (name = "directory", description = "the facility directory (mail and FAX addresses) for offline clients"),
        (name = "documents", description = "SJ1 CSV, the 控え and the paper prescription"),
        (name = "fallbacks", description = "outage fallback: cancel, paper or FAX, originals by post, aging"),
        (name = "admin", description = "registries (role admin)"),
        (name = "operations", description = "health and keys"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.bearer_format = Some("JWT".into());
            components.add_security_scheme("bearer", SecurityScheme::Http(http));
        }
    }
}

/// What is true of every operation of a kind, documented once instead of in each annotation (and
/// so also for operations added later): errors are `application/problem+json`; a bearer operation
/// may answer 401 and 503; a JSON body may be refused with 400, 413, 415 or 422; an `{id}` that is
/// no UUID is 404; a query or `Idempotency-Key` that breaks its rule is 422.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};

        let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let params: Vec<&utoipa::openapi::path::Parameter> = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter_map(|p| match p {
                        RefOr::T(p) => Some(p),
                        RefOr::Ref(_) => None,
                    })
                    .collect();
                let has_query = params
                    .iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                let has_key = params.iter().any(|p| p.name == "Idempotency-Key");
                let mut add: Vec<(&str, &str)> = Vec::new();
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add.push((
                        "401",
                        "UNAUTHENTICATED: no, expired or invalid bearer token",
                    ));
                    add.push((
                        "503",
                        "DATABASE_UNAVAILABLE: retry after Retry-After with the same Idempotency-Key",
                    ));
                }
                if op.request_body.is_some() {
                    add.push(("400", "MALFORMED_JSON: the body is not JSON"));
                    add.push(("413", "BODY_NOT_READABLE"));
                    add.push(("415", "UNSUPPORTED_MEDIA_TYPE"));
                }
                if op.request_body.is_some() || has_query || has_key {
                    add.push((
                        "422",
                        "VALIDATION_FAILED: `errors[]` names each field and its rule",
                    ));
                }
                if path.contains('{') {
                    add.push((
                        "404",
                        "NOT_FOUND: no such resource (also an id that is no UUID)",
                    ));
                }
                for (status, description) in add {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content("application/problem+json", problem())
                                .build()
                                .into()
                        });
                }
                // Every error is rendered by ApiError as problem+json.
                for (status, response) in op.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if !status.starts_with('4') && !status.starts_with('5') {
                        continue;
                    }
                    let content = response
                        .content
                        .shift_remove("application/json")
                        .unwrap_or_else(|| RefOr::T(problem()));
                    response
                        .content
                        .insert("application/problem+json".to_string(), content);
                }
                // The extractor's rule (extract.rs), so generated and hand-written clients send a
                // key the relay accepts.
                for p in op.parameters.iter_mut().flatten() {
                    if let RefOr::T(p) = p
                        && p.name == "Idempotency-Key"
                    {
                        p.schema = Some(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::schema::Type::String)
                                .min_length(Some(1))
                                .max_length(Some(255))
                                .pattern(Some("^[!-~]+$"))
                                .into(),
                        );
                    }
                }
            }
        }
    }
}
