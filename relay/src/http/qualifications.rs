//! `/v1/qualifications`: 資格確認 at the reception of a clinic or pharmacy — the card path, the
//! fallback ladder, disaster mode — and the card path's list of outstanding prescriptions.
//! Every attempt that reaches the rules is recorded, refused ones included (their 422 is
//! committed together with the audit row); malformed requests are refused before that.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::prescriptions::{FacilityRef, registered_facility};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::{
    DbError, GenericClient, access_log, disasters, facilities, insured, prescriptions,
    qualifications, staff,
};
use crate::domain::access::ReadAction;
use crate::domain::eligibility::{
    self, CERTIFICATE_ALTERNATIVE, CardAuth, CardContext, CardReading, Claim, ClaimBasis,
    Confirmed, Consent, Declaration, DisasterRef, FALLBACK_LADDER, FallbackContext,
    FallbackRequest, LegacyDocument, Method, PatientFacts, PersonRecord, QualifiedPatient, Refusal,
    RegistryMatch,
};
use crate::domain::errors::{FieldErrors, Warning};
use crate::domain::identifiers::{
    Branch, InsuranceIdentity, InsuredNumber, InsuredSymbol, InsurerNumber,
};
use crate::domain::lifecycle::{Status, Window, effective_status};
use crate::domain::prescription::Sex;
use crate::domain::time::today;

/// Reception staff of clinics and pharmacies confirm eligibility.
pub const RECEPTION: &[Role] = &[
    Role::Doctor,
    Role::ClinicClerk,
    Role::Pharmacist,
    Role::PharmacyClerk,
];

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

/// What the face-recognition card reader reports.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardRequest {
    pub card_id: String,
    pub auth: CardAuth,
    /// The reader reports the PIN locked (three wrong entries); face and visual still work.
    #[serde(default)]
    pub pin_locked: bool,
    /// The consents the patient chose on the reader.
    #[serde(default)]
    pub consent: Consent,
}

/// The insurance identity and the patient as presented (screen, notice, 資格確認書, records).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresentedInsured {
    #[serde(default)]
    pub insurer_number: Option<String>,
    #[serde(default)]
    pub symbol: Option<String>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub name_kana: Option<String>,
    #[serde(default)]
    pub sex: Option<Sex>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub birth_date: Option<Date>,
}

/// 被保険者資格申立書 (and the disaster-mode statement): address and contact.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclarationBody {
    pub address: String,
    #[serde(default)]
    pub contact: Option<String>,
}

/// The fallback ladder and disaster mode.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackBody {
    pub method: Method,
    /// The マイナンバーカード (or the smartphone マイナ保険証) was presented with the document.
    #[serde(default)]
    pub card_presented: bool,
    #[serde(default)]
    pub insured: Option<PresentedInsured>,
    #[serde(default)]
    pub declaration: Option<DeclarationBody>,
    /// `legacy_insurance_card`: which document was shown (default `health_insurance_card`).
    #[serde(default)]
    pub legacy_document: Option<LegacyDocument>,
    /// The presented document's own 有効期限 (e.g. of a 資格確認書).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub document_valid_until: Option<Date>,
    /// Disaster mode: the patient agreed orally to the lookup.
    #[serde(default)]
    pub verbal_consent: bool,
}

/// A confirmed qualification.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Qualification {
    pub qualification_id: Uuid,
    pub method: Method,
    /// The card reader's identity check, on the card path.
    pub auth: Option<CardAuth>,
    pub facility_code: String,
    #[schema(value_type = String, format = DateTime)]
    pub confirmed_at: Timestamp,
    /// The qualification may be used until then, by this facility only.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    pub insured: QualifiedPatient,
    /// Whether medical information may be shared on this qualification (false inside the
    /// certificate's grace period and for every method without the card).
    pub info_sharing: bool,
    pub consent: Consent,
    pub claim_basis: ClaimBasis,
    /// The numbers to claim with (不詳: `77777779`, with the 摘要 text).
    pub claim: Claim,
    /// Set when made in disaster mode (災害時).
    pub disaster: Option<DisasterRef>,
    pub warnings: Vec<Warning>,
}

/// One of the patient's outstanding prescriptions, as the card path shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Outstanding {
    pub prescription_id: Uuid,
    pub exchange_number: String,
    pub status: Status,
    pub issuer: FacilityRef,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_until: Date,
    pub refill_count: Option<i16>,
    pub uses_dispensed: i16,
    /// Whether the caller can receive it now.
    pub receivable: bool,
    /// A refill use not yet due opens on this date.
    #[schema(value_type = Option<String>, format = Date)]
    pub receivable_from: Option<Date>,
    /// The pharmacy holding it, when one does (possibly the caller).
    pub holder: Option<FacilityRef>,
    pub drugs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutstandingList {
    pub qualification_id: Uuid,
    /// Set when the qualification was made in disaster mode.
    pub disaster: Option<DisasterRef>,
    pub prescriptions: Vec<Outstanding>,
    /// Why the list is empty when the patient could not be identified.
    pub note: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------------

/// The 422 of a refusal: its code, the message to read out, the next steps and the ladder.
fn refusal_error(r: &Refusal, qualification_id: Uuid) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code, r.message.clone())
        .with("qualification_id", qualification_id);
    if !r.next_steps.is_empty() {
        e = e.with("next_steps", &r.next_steps);
    }
    if r.ladder {
        e = e
            .with("fallback_ladder", FALLBACK_LADDER)
            .with("alternatives", [CERTIFICATE_ALTERNATIVE]);
    }
    if let Some(prev) = &r.previous_coverage {
        e = e.with("previous_coverage", prev);
    }
    e
}

struct Attempt<'a> {
    method: Method,
    auth: Option<CardAuth>,
    outcome: Result<Confirmed, Refusal>,
    disaster: Option<&'a DisasterRef>,
    /// What was presented, kept with a refusal for the audit.
    presented: Option<&'a InsuranceIdentity>,
    birth_date: Option<Date>,
}

/// Records the attempt and answers it: 201 with the qualification, or the committed 422.
async fn record(
    tx: &impl GenericClient,
    state: &AppState,
    caller: &Caller,
    a: Attempt<'_>,
) -> Result<Reply, ApiError> {
    let id = Uuid::now_v7();
    match a.outcome {
        Ok(c) => {
            let now = Timestamp::now();
            let ttl = state.settings.eligibility.qualification_ttl_hours.max(1);
            let expires_at = now.checked_add(ttl.hours()).unwrap_or(now);
            let view = Qualification {
                qualification_id: id,
                method: a.method,
                auth: a.auth,
                facility_code: caller.facility.to_string(),
                confirmed_at: now,
                expires_at,
                insured: c.patient,
                info_sharing: c.info_sharing,
                consent: c.consent,
                claim_basis: c.claim.basis,
                claim: c.claim,
                disaster: a.disaster.cloned(),
                warnings: c.warnings,
            };
            let detail = serde_json::to_value(&view).map_err(|_| ApiError::internal())?;
            qualifications::insert(
                tx,
                &qualifications::NewQualification {
                    id,
                    actor: caller.actor(),
                    method: a.method,
                    refusal_code: None,
                    person_id: c.person_id,
                    identity: c.presented.as_ref(),
                    birth_date: c.birth_date,
                    claim_basis: Some(view.claim_basis),
                    info_sharing: view.info_sharing,
                    disaster_id: a.disaster.map(|d| d.id),
                    expires_at: Some(expires_at),
                    detail: &detail,
                },
            )
            .await?;
            Reply::new(StatusCode::CREATED, view)
        }
        Err(refusal) => {
            let err = refusal_error(&refusal, id);
            let mut detail = err.body();
            detail["method"] = a.method.as_str().into();
            qualifications::insert(
                tx,
                &qualifications::NewQualification {
                    id,
                    actor: caller.actor(),
                    method: a.method,
                    refusal_code: Some(refusal.code),
                    person_id: None,
                    identity: a.presented,
                    birth_date: a.birth_date,
                    claim_basis: None,
                    info_sharing: false,
                    disaster_id: a.disaster.map(|d| d.id),
                    expires_at: None,
                    detail: &detail,
                },
            )
            .await?;
            tracing::info!(
                code = refusal.code,
                method = a.method.as_str(),
                "qualification refused"
            );
            Ok(Reply::problem(&err))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

pub fn card_reading(body: &CardRequest) -> Result<CardReading, ApiError> {
    let id = crate::domain::text::fold_width(body.card_id.trim());
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::field(
            "card_id",
            "FORMAT",
            "card_id must be 1–64 ASCII letters, digits or hyphens, as the card reader reports it",
        ));
    }
    Ok(CardReading {
        card_id: id,
        auth: body.auth,
        pin_locked: body.pin_locked,
        consent: body.consent,
    })
}

fn text(e: &mut FieldErrors, field: &str, v: Option<&str>, max: usize) -> Option<String> {
    let v = v.map(str::trim).filter(|s| !s.is_empty())?;
    if v.chars().count() > max || v.chars().any(char::is_control) {
        e.add(
            field,
            "FORMAT",
            format!("{field} has at most {max} characters and no control characters"),
        );
        return None;
    }
    Some(v.to_string())
}

/// Parses the body into the domain request: every missing or malformed field at once.
pub fn fallback_request(body: &FallbackBody) -> Result<FallbackRequest, ApiError> {
    use Method::*;
    let mut e = FieldErrors::new();
    let empty = PresentedInsured::default();
    let ins = body.insured.as_ref().unwrap_or(&empty);
    let any_number = [&ins.insurer_number, &ins.number, &ins.branch, &ins.symbol]
        .iter()
        .any(|v| v.as_deref().is_some_and(|s| !s.trim().is_empty()));
    let numbers_required = matches!(
        body.method,
        MynaportalScreen
            | EligibilityNotice
            | QualificationCertificate
            | VerbalRevisit
            | LegacyInsuranceCard
    );
    let presented = if numbers_required || any_number {
        let mut part = |field: &str, v: &Option<String>| -> Option<String> {
            match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                Some(s) => Some(s.to_string()),
                None => {
                    e.add(
                        format!("insured.{field}"),
                        "REQUIRED",
                        format!(
                            "insured.{field} is required for {} (as shown on the document or in the records)",
                            body.method.as_str()
                        ),
                    );
                    None
                }
            }
        };
        let insurer = part("insurer_number", &ins.insurer_number);
        let number = part("number", &ins.number);
        let branch = part("branch", &ins.branch);
        let insurer =
            insurer.and_then(|v| e.take("insured.insurer_number", InsurerNumber::parse(&v)));
        let symbol = e.take(
            "insured.symbol",
            InsuredSymbol::parse(ins.symbol.as_deref().unwrap_or("")),
        );
        let number = number.and_then(|v| e.take("insured.number", InsuredNumber::parse(&v)));
        let branch = branch.and_then(|v| e.take("insured.branch", Branch::parse(&v)));
        match (insurer, symbol, number, branch) {
            (Some(insurer_number), Some(symbol), Some(number), Some(branch)) => {
                Some(InsuranceIdentity {
                    insurer_number,
                    symbol,
                    number,
                    branch,
                })
            }
            _ => None,
        }
    } else {
        None
    };
    let name = text(&mut e, "insured.name", ins.name.as_deref(), 100);
    let name_kana = text(&mut e, "insured.name_kana", ins.name_kana.as_deref(), 100);
    if ins.birth_date.is_none() {
        e.add(
            "insured.birth_date",
            "REQUIRED",
            "insured.birth_date is required: it tells namesakes and family members apart",
        );
    }
    if ins.birth_date.is_some_and(|b| b > today()) {
        e.add(
            "insured.birth_date",
            "IN_FUTURE",
            "insured.birth_date must not be in the future",
        );
    }
    let needs_statement = matches!(body.method, SelfDeclaration | Disaster);
    if needs_statement && name.is_none() {
        e.add(
            "insured.name",
            "REQUIRED",
            format!("insured.name is required for {}", body.method.as_str()),
        );
    }
    if body.method == Disaster && ins.sex.is_none() {
        e.add(
            "insured.sex",
            "REQUIRED",
            "insured.sex is required in disaster mode",
        );
    }
    let declaration = match &body.declaration {
        Some(d) => {
            let address = text(&mut e, "declaration.address", Some(&d.address), 200);
            if address.is_none() && d.address.trim().is_empty() {
                e.add(
                    "declaration.address",
                    "REQUIRED",
                    "declaration.address is required",
                );
            }
            let contact = text(&mut e, "declaration.contact", d.contact.as_deref(), 100);
            if body.method == SelfDeclaration && contact.is_none() && d.contact.is_none() {
                e.add(
                    "declaration.contact",
                    "REQUIRED",
                    "declaration.contact (a phone number or address to reach the patient) is required on the 被保険者資格申立書",
                );
            }
            address.map(|address| Declaration { address, contact })
        }
        None if needs_statement => {
            e.add(
                "declaration",
                "REQUIRED",
                match body.method {
                    SelfDeclaration => "declaration {address, contact} is required: the 被保険者資格申立書 gives them",
                    _ => "declaration {address} is required in disaster mode",
                },
            );
            None
        }
        None => None,
    };
    if !e.is_empty() {
        return Err(ApiError::validation(e.into_vec()));
    }
    Ok(FallbackRequest {
        method: body.method,
        card_presented: body.card_presented,
        presented,
        patient: PatientFacts {
            name,
            name_kana,
            sex: ins.sex,
            birth_date: ins.birth_date,
        },
        declaration,
        legacy_document: body.legacy_document,
        document_valid_until: body.document_valid_until,
        verbal_consent: body.verbal_consent,
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// The card path: the reader reports the card, the identity check and the consents.
#[utoipa::path(
    post, path = "/v1/qualifications/card", tag = "eligibility",
    request_body = CardRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 201, body = Qualification, description = "eligibility confirmed"),
        (status = 403, body = Problem, description = "wrong role or facility"),
        (status = 422, body = Problem, description = "VALIDATION_FAILED, or a refusal with the next steps (recorded): PIN_LOCKED, VISUAL_CHECK_NOT_ENABLED, NO_COVERAGE_INFO (資格情報なし), COVERAGE_INVALID (資格無効, with previous_coverage), CERTIFICATE_EXPIRED — the last three list fallback_ladder"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/qualifications/card")]
pub async fn card(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(RECEPTION)?;
    let body = body.parse::<CardRequest>()?;
    let reading = card_reading(&body.value)?;
    let rules = state.settings.eligibility.rules();
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        registered_facility(tx, &caller).await?;
        let person = insured::person_by_card(tx, &reading.card_id).await?;
        let staff_visual_check =
            staff::visual_check_enabled(tx, caller.facility.as_str(), &caller.staff).await?;
        let outcome = eligibility::card(
            &reading,
            &CardContext {
                person: person.as_ref(),
                staff_visual_check,
                rules: &rules,
                today: today(),
            },
        );
        record(
            tx,
            &state,
            &caller,
            Attempt {
                method: Method::Card,
                auth: Some(reading.auth),
                outcome,
                disaster: None,
                presented: None,
                birth_date: person.as_ref().map(|p| p.birth_date),
            },
        )
        .await
    })
    .await
}

/// The fallback ladder when the card cannot be used, the 資格確認書, an expired legacy card, and
/// disaster mode.
#[utoipa::path(
    post, path = "/v1/qualifications", tag = "eligibility",
    request_body = FallbackBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 201, body = Qualification, description = "eligibility confirmed, with the claim basis"),
        (status = 403, body = Problem, description = "wrong role or facility"),
        (status = 422, body = Problem, description = "VALIDATION_FAILED, or a refusal (recorded): PORTAL_SCREEN_REQUIRES_CARD, NOTICE_REQUIRES_CARD, VERBAL_REQUIRES_PRIOR_VISIT, LEGACY_CARD_NOT_ACCEPTED, QUALIFICATION_CERTIFICATE_EXPIRED, IDENTITY_MISMATCH, NO_DISASTER_DECLARED, VERBAL_CONSENT_REQUIRED, CARD_PATH_SEPARATE"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/qualifications")]
pub async fn fallback(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(RECEPTION)?;
    let body = body.parse::<FallbackBody>()?;
    let request = fallback_request(&body.value)?;
    let rules = state.settings.eligibility.rules();
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let facility = registered_facility(tx, &caller).await?;
        let today = today();
        let by_identity = match &request.presented {
            Some(identity) => insured::person_by_identity(tx, identity).await?,
            None => None,
        };
        let mut candidates = Vec::new();
        let disaster = if request.method == Method::Disaster {
            if by_identity.is_none()
                && let (Some(birth_date), Some(sex)) =
                    (request.patient.birth_date, request.patient.sex)
            {
                candidates = insured::persons_by_demographics(tx, birth_date, sex).await?;
            }
            disasters::active_for(
                tx,
                &facility.code,
                facility.municipality_code.as_ref().map(|m| m.as_str()),
                today,
            )
            .await?
        } else {
            None
        };
        let by_statement = match (&request.patient.name, &request.declaration) {
            (Some(name), Some(d)) => eligibility::match_by_statement(&candidates, name, &d.address),
            _ => None,
        };
        let registry = match (&by_identity, by_statement) {
            (Some(p), _)
                if request
                    .patient
                    .birth_date
                    .is_some_and(|b| b != p.birth_date) =>
            {
                RegistryMatch::BirthDateDiffers
            }
            (Some(p), _) => RegistryMatch::Person(p),
            (None, Some(p)) => RegistryMatch::Person(p),
            (None, None) => RegistryMatch::None,
        };
        let prior_visit = if request.method == Method::VerbalRevisit {
            seen_before(tx, &caller, &registry, &request).await?
        } else {
            false
        };
        let outcome = eligibility::fallback(
            &request,
            &FallbackContext {
                registry,
                prior_visit,
                disaster: disaster.as_ref(),
                rules: &rules,
                today,
            },
        );
        record(
            tx,
            &state,
            &caller,
            Attempt {
                method: request.method,
                auth: None,
                outcome,
                disaster: disaster.as_ref(),
                presented: request.presented.as_ref(),
                birth_date: request.patient.birth_date,
            },
        )
        .await
    })
    .await
}

/// 再診: this facility qualified the patient before, or issued, held or dispensed one of their
/// prescriptions — under any of their coverages when the registry knows the person.
async fn seen_before(
    tx: &impl GenericClient,
    caller: &Caller,
    registry: &RegistryMatch<'_>,
    request: &FallbackRequest,
) -> Result<bool, DbError> {
    let (person_id, mut identities) = match registry {
        RegistryMatch::Person(p) => (
            Some(p.id),
            p.coverages.iter().map(|c| c.identity.clone()).collect(),
        ),
        _ => (None, Vec::new()),
    };
    if let Some(presented) = &request.presented
        && !identities.contains(presented)
    {
        identities.push(presented.clone());
    }
    let facility = caller.facility.as_str();
    if qualifications::confirmed_before(
        tx,
        facility,
        person_id,
        &identities,
        request.patient.birth_date,
    )
    .await?
    {
        return Ok(true);
    }
    match request.patient.birth_date {
        Some(birth_date) if !identities.is_empty() => {
            prescriptions::seen_at(tx, facility, &identities, birth_date).await
        }
        _ => Ok(false),
    }
}

pub(crate) fn parse_qualification_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| qualification_not_found())
}

fn qualification_not_found() -> ApiError {
    ApiError::not_found(
        "QUALIFICATION_NOT_FOUND",
        "this facility has no confirmed qualification with this id; confirm eligibility again",
    )
}

/// A confirmed qualification the caller's facility may use now, with the person it found.
pub struct Usable {
    pub stored: qualifications::Stored,
    pub person: Option<PersonRecord>,
    pub view: Qualification,
}

/// Loads `id` for the caller: it must be this facility's, confirmed and not expired; with
/// `for_delivery`, it must also be one that hands over prescriptions (card path, disaster mode)
/// and allow sharing.
pub async fn usable(
    tx: &impl GenericClient,
    caller: &Caller,
    id: Uuid,
    for_delivery: bool,
) -> Result<Usable, ApiError> {
    let stored = qualifications::get_confirmed(tx, id)
        .await?
        .filter(|q| q.facility_code == caller.facility.as_str())
        .ok_or_else(qualification_not_found)?;
    if stored.expires_at < Timestamp::now() {
        return Err(ApiError::gone(
            "QUALIFICATION_EXPIRED",
            format!(
                "この資格確認は有効期限（{}）を過ぎています。もう一度資格確認してください。",
                stored.expires_at
            ),
        ));
    }
    if for_delivery {
        if !stored.method.delivers_prescriptions() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "CARD_PATH_REQUIRED",
                format!(
                    "この資格確認（{}）ではカードから電子処方箋を受け取れません。処方内容（控え）の引換番号と被保険者番号で受け付けてください（POST /v1/prescriptions/receive）。",
                    stored.method.as_str()
                ),
            ));
        }
        if !stored.info_sharing {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INFO_SHARING_UNAVAILABLE",
                "電子証明書の有効期限切れのため、カードから電子処方箋を受け取れません（資格確認のみ有効）。処方内容（控え）の引換番号と被保険者番号で受け付けてください。",
            ));
        }
    }
    let view: Qualification = serde_json::from_value(stored.detail.clone())
        .map_err(|_| DbError::Corrupt(format!("qualification {id}: unreadable detail")))?;
    let person = match stored.person_id {
        Some(p) => insured::person(tx, p).await?,
        None => None,
    };
    Ok(Usable {
        stored,
        person,
        view,
    })
}

/// A qualification this facility made.
#[utoipa::path(
    get, path = "/v1/qualifications/{id}", tag = "eligibility",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Qualification, description = "OK"),
              (status = 403, body = Problem, description = "wrong role"),
              (status = 404, body = Problem, description = "QUALIFICATION_NOT_FOUND (also another facility's)")),
    security(("bearer" = []))
)]
#[get("/v1/qualifications/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(RECEPTION)?;
    let id = parse_qualification_id(&id)?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let stored = qualifications::get_confirmed(&client, id)
        .await?
        .filter(|q| q.facility_code == caller.facility.as_str())
        .ok_or_else(qualification_not_found)?;
    Ok(HttpResponse::Ok().json(stored.detail))
}

/// The card path: the patient's outstanding prescriptions at every clinic.
#[utoipa::path(
    get, path = "/v1/qualifications/{id}/prescriptions", tag = "eligibility",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = OutstandingList, description = "OK"),
        (status = 403, body = Problem, description = "wrong role (pharmacy staff only)"),
        (status = 404, body = Problem, description = "QUALIFICATION_NOT_FOUND"),
        (status = 410, body = Problem, description = "QUALIFICATION_EXPIRED: confirm eligibility again"),
        (status = 422, body = Problem, description = "CARD_PATH_REQUIRED (a fallback qualification: use the 引換番号), INFO_SHARING_UNAVAILABLE (certificate in its grace period)"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/qualifications/{id}/prescriptions")]
pub async fn outstanding(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<OutstandingList>, ApiError> {
    caller.require(&[Role::Pharmacist, Role::PharmacyClerk])?;
    let id = parse_qualification_id(&id)?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let q = usable(&client, &caller, id, true).await?;
    let Some(person) = &q.person else {
        return Ok(web::Json(OutstandingList {
            qualification_id: id,
            disaster: q.view.disaster,
            prescriptions: Vec::new(),
            note: Some(
                "登録情報で患者さんを特定できなかったため、電子処方箋を一覧できません。処方内容（控え）の引換番号で受け付けてください。".into(),
            ),
        }));
    };
    let identities: Vec<InsuranceIdentity> = person
        .coverages
        .iter()
        .map(|c| c.identity.clone())
        .collect();
    let records = prescriptions::outstanding_for(&client, &identities, person.birth_date).await?;
    let today = today();
    let mut list = Vec::new();
    for r in records {
        let status = effective_status(r.status, &r.validity, today);
        if status == Status::Expired {
            continue;
        }
        let window = r.validity.window(today);
        let holder = match &r.holder_code {
            Some(code) if status == Status::Dispensing => Some(FacilityRef {
                code: code.clone(),
                name: facilities::name_of(&client, code).await?,
            }),
            _ => None,
        };
        list.push(Outstanding {
            prescription_id: r.id,
            exchange_number: r.exchange_number,
            status,
            issuer: FacilityRef {
                name: facilities::name_of(&client, &r.issuer_code).await?,
                code: r.issuer_code,
            },
            issued_on: r.issued_on,
            valid_until: r.validity.valid_until,
            refill_count: r.refill_count,
            uses_dispensed: r.validity.uses_dispensed,
            receivable: status == Status::Registered && window == Window::Open,
            receivable_from: match window {
                Window::NotYet { opens_on } => Some(opens_on),
                _ => None,
            },
            holder,
            drugs: r
                .document
                .rps
                .iter()
                .flat_map(|rp| rp.drugs.iter().map(|d| d.name.clone()))
                .collect(),
        });
    }
    let listed: Vec<Uuid> = list.iter().map(|o| o.prescription_id).collect();
    access_log::record_reads(
        &client,
        &listed,
        caller.actor(),
        ReadAction::Listed,
        &serde_json::json!({ "qualification_id": id }),
    )
    .await?;
    Ok(web::Json(OutstandingList {
        qualification_id: id,
        disaster: q.view.disaster,
        prescriptions: list,
        note: None,
    }))
}

/// Whether a receive by 引換番号 under qualification `q` is for the same patient: the identity
/// typed in is one of the person's coverages (or the one presented), and the birth dates agree.
pub fn same_patient(q: &Usable, identity: &InsuranceIdentity, birth_date: Option<Date>) -> bool {
    let identity_ok = match (&q.person, &q.stored.identity) {
        (Some(p), _) if p.holds(identity) => true,
        (_, Some(presented)) => presented == identity,
        // 不詳: nothing to compare; the 引換番号 and identity typed in did match a prescription.
        (None, None) => true,
        (Some(_), None) => false,
    };
    let known_birth = q
        .person
        .as_ref()
        .map(|p| p.birth_date)
        .or(q.stored.birth_date);
    let birth_ok = match (known_birth, birth_date) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    identity_ok && birth_ok
}

/// The error of a receive whose qualification is for someone else.
pub fn mismatch() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "QUALIFICATION_MISMATCH",
        "この資格確認は別の患者さんのものです（被保険者番号または生年月日が一致しません）。この患者さんの資格確認をしてから受け付けてください。",
    )
}
