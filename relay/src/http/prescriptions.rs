//! `/v1/prescriptions`: registration, the clinic's lookup, cancellation, the pharmacy's receive,
//! release and dispensing, and the event log.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jiff::Timestamp;
use jiff::ToSpan;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::checks::{CheckContext, CheckRun, Draft, Pass, Patient, checked};
use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes, RawBody};
use super::outages::{Suspended, ensure_running};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::prescriptions::{CheckLink, DispensingRecord, Record, Search};
use crate::db::{
    self, DbError, GenericClient, access_log, events, facilities, master, prescriptions,
    qualifications, throttle,
};
use crate::domain::FieldError;
use crate::domain::access::ReadAction;
use crate::domain::checks::HitKind;
use crate::domain::dispensing::{DispenseContext, DispenseDraft};
use crate::domain::eligibility::{Claim, ClaimBasis, DisasterRef, Method};
use crate::domain::errors::FieldErrors;
use crate::domain::errors::Warning;
use crate::domain::identifiers::{
    Branch, ExchangeNumber, FacilityKind, InsuranceIdentity, InsuredNumber, InsuredSymbol,
    InsurerNumber,
};
use crate::domain::lifecycle::{EventAction, IssueType, Status, Window, effective_status};
use crate::domain::prescription::{
    CodeSystem, DoctorDraft, DrugRef, Prescription, PrescriptionDraft,
};
use crate::domain::time::today;

const CLINIC_READERS: &[Role] = &[Role::Doctor, Role::ClinicClerk];
const PHARMACY_STAFF: &[Role] = &[Role::Pharmacist, Role::PharmacyClerk];

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FacilityRef {
    pub code: String,
    pub name: Option<String>,
}

/// The duplicate/contraindication check run inside a registration, and what let it through.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckSummary {
    pub check_id: Uuid,
    /// `clear`, `hits` (covered by `override`) or `unavailable` (acknowledged): never reported
    /// as `clear` when the check could not run.
    pub outcome: String,
    pub unavailable_acknowledged: bool,
    /// 「重複等あり・医師許可」: the prescriber weighed these hits; the pharmacy need not ask again.
    #[serde(rename = "override")]
    pub override_: Option<OverrideSummary>,
}

/// An override as the prescription carries it: the hits without their causes (which the
/// pharmacy sees only under its own consent) and the reason.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverrideSummary {
    pub check_id: Uuid,
    /// 「重複等あり・医師許可」.
    pub label: &'static str,
    pub reason: String,
    pub staff_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub hits: Vec<OverriddenHit>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OverriddenHit {
    pub kind: HitKind,
    pub new_drug: String,
    pub ingredient: String,
}

/// The check summary of `link` (the check inside a registration or a dispensing).
pub async fn check_summary(
    c: &impl GenericClient,
    link: &CheckLink,
) -> Result<Option<CheckSummary>, DbError> {
    let Some(check_id) = link.check_id else {
        return Ok(None);
    };
    let outcome = match db::checks::get(c, check_id).await? {
        Some(k) => k.outcome,
        None => return Ok(None),
    };
    let override_ = match link.override_check_id {
        None => None,
        Some(id) => match (
            db::checks::get(c, id).await?,
            db::checks::override_of(c, id).await?,
        ) {
            (Some(k), Some(o)) => Some(OverrideSummary {
                check_id: id,
                label: "重複等あり・医師許可",
                reason: o.reason,
                staff_id: o.staff_id,
                at: o.at,
                hits: k
                    .hits
                    .into_iter()
                    .map(|h| OverriddenHit {
                        kind: h.kind,
                        new_drug: h.new_drug.name,
                        ingredient: h.ingredient,
                    })
                    .collect(),
            }),
            _ => None,
        },
    };
    Ok(Some(CheckSummary {
        check_id,
        outcome,
        unavailable_acknowledged: link.unavailable_acknowledged,
        override_,
    }))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Registered {
    pub prescription_id: Uuid,
    /// 引換番号: 6 digits, leading zeros significant.
    pub exchange_number: String,
    pub status: Status,
    pub issue_type: IssueType,
    #[schema(value_type = String, format = Date)]
    pub valid_until: Date,
    pub check: CheckSummary,
    /// Things the clinic should know, e.g. characters the JAHIS 2-D code (Shift_JIS) cannot carry
    /// and prints as ■; the name itself is kept intact everywhere else.
    pub warnings: Vec<Warning>,
}

/// Characters of `p` that the JAHIS 2-D code replaces by ■, as warnings.
fn jahis_warnings(
    institution: &crate::domain::facility::Facility,
    p: &Prescription,
) -> Vec<Warning> {
    use crate::domain::{document::DocumentInput, jahis, sj1};
    let doc = DocumentInput {
        institution,
        prescription: p,
        exchange_number: None,
    };
    jahis::encode(&sj1::records(&doc))
        .replaced
        .iter()
        .map(|r| Warning {
            code: "JAHIS_CHARACTER_REPLACED".into(),
            message: format!(
                "「{}」 (U+{:04X}, SJ1 record {}) cannot be written in Shift_JIS: the paper prescription's 2-D code shows ■ instead",
                r.original, r.original as u32, r.record
            ),
        })
        .collect()
}

/// A prescription as its issuer or its holder sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PrescriptionView {
    pub prescription_id: Uuid,
    pub exchange_number: String,
    pub status: Status,
    pub issue_type: IssueType,
    pub issuer: FacilityRef,
    pub issued_by: String,
    pub holder: Option<FacilityRef>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub held_since: Option<Timestamp>,
    /// A cancellation requested while a pharmacy holds the prescription; applied on release.
    pub cancellation_pending: bool,
    pub cancellation_reason: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub cancelled_at: Option<Timestamp>,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_until: Date,
    pub refill_count: Option<i16>,
    pub uses_dispensed: i16,
    #[schema(value_type = Option<String>, format = Date)]
    pub next_refill_date: Option<Date>,
    /// True when a dispensing result carries a 重要な伝達事項 for the prescriber.
    pub has_important_note: bool,
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: Timestamp,
    pub prescription: Prescription,
    pub dispensings: Vec<DispensingRecord>,
    /// The qualification the holder received it under, with the claim basis (holder only).
    pub qualification: Option<HeldQualification>,
    /// The check run inside registration and the prescriber's override, if any: the pharmacy
    /// sees 「重複等あり・医師許可」 and the reason, so it need not ask about a weighed alert.
    pub check: Option<CheckSummary>,
}

/// The eligibility confirmation behind a receive, as its pharmacy sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeldQualification {
    pub qualification_id: Uuid,
    pub method: Method,
    pub claim_basis: ClaimBasis,
    pub claim: Claim,
    pub disaster: Option<DisasterRef>,
}

/// One line of the clinic's lookup (the lost-控え case).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PrescriptionSummary {
    pub prescription_id: Uuid,
    pub exchange_number: String,
    pub status: Status,
    pub issue_type: IssueType,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_until: Date,
    pub patient_name: String,
    #[schema(value_type = String, format = Date)]
    pub birth_date: Date,
    pub holder_code: Option<String>,
    pub cancellation_pending: bool,
    pub has_important_note: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PrescriptionList {
    pub prescriptions: Vec<PrescriptionSummary>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusReply {
    pub prescription_id: Uuid,
    /// `cancelled`, `pending_cancellation`, `registered`, `dispensed`, …
    pub status: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<events::Event>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Not blank; at most 500 characters.
    // Not blank as str::trim sees it: a character outside Unicode White_Space.
    #[schema(
        max_length = 500,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InsuredKey {
    pub insurer_number: String,
    #[serde(default)]
    pub symbol: Option<String>,
    pub number: String,
    pub branch: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequest {
    /// As typed: full-width digits, spaces and hyphens are accepted.
    pub exchange_number: String,
    pub insured: InsuredKey,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub birth_date: Option<Date>,
    /// The eligibility confirmation this receive relies on (eligibility issue).
    #[serde(default)]
    pub qualification_id: Option<Uuid>,
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub insurer_number: Option<String>,
    pub symbol: Option<String>,
    pub number: Option<String>,
    pub branch: Option<String>,
    /// Default: 90 days before `issued_to`.
    #[param(value_type = Option<String>, format = Date)]
    pub issued_from: Option<Date>,
    /// Default: today.
    #[param(value_type = Option<String>, format = Date)]
    pub issued_to: Option<Date>,
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::not_found(
            "PRESCRIPTION_NOT_FOUND",
            "no prescription has this id (ids are UUIDs as returned at registration)",
        )
    })
}

fn not_found() -> ApiError {
    ApiError::not_found("PRESCRIPTION_NOT_FOUND", "no prescription has this id")
}

/// The caller's facility, which must be registered.
pub async fn registered_facility(
    c: &impl GenericClient,
    caller: &Caller,
) -> Result<crate::domain::facility::Facility, ApiError> {
    facilities::get(c, &caller.facility).await?.ok_or_else(|| {
        ApiError::forbidden(format!(
            "facility {} is not registered with the relay; ask the operator to register it",
            caller.facility
        ))
    })
}

/// The caller's facility, which must be registered and of the expected kind.
pub async fn own_facility(
    c: &impl GenericClient,
    caller: &Caller,
    kind: FacilityKind,
) -> Result<crate::domain::facility::Facility, ApiError> {
    let facility = registered_facility(c, caller).await?;
    if facility.kind != kind {
        return Err(ApiError::forbidden(format!(
            "facility {} is a {}, not a {}",
            caller.facility,
            facility.kind.as_str(),
            kind.as_str()
        )));
    }
    Ok(facility)
}

/// Every drug line whose code is not in the current master, as field errors naming the line.
pub async fn unknown_drug_codes(
    c: &impl GenericClient,
    refs: &[DrugRef],
) -> Result<Vec<FieldError>, DbError> {
    let mut errors = FieldErrors::new();
    let mut receipt_loaded = None;
    for r in refs {
        if r.code_system.check_format(&r.code).is_err() {
            continue; // already reported as FORMAT
        }
        let found = match r.code_system {
            CodeSystem::Yj => master::yj_code_exists(c, &r.code).await?,
            CodeSystem::Generic => master::generic_code_exists(c, &r.code).await?,
            CodeSystem::Receipt => {
                let loaded = match receipt_loaded {
                    Some(l) => l,
                    None => {
                        let l = master::receipt_master_loaded(c).await?;
                        receipt_loaded = Some(l);
                        l
                    }
                };
                if !loaded {
                    errors.add(
                        r.field.clone(),
                        "RECEIPT_MASTER_NOT_LOADED",
                        format!(
                            "{}: レセ電コード {} cannot be checked because no レセ電 医薬品マスター has been imported; use the yj or generic code",
                            r.field, r.code
                        ),
                    );
                    continue;
                }
                master::receipt_code_exists(c, &r.code).await?
            }
        };
        if !found {
            errors.add(
                r.field.clone(),
                "UNKNOWN_DRUG_CODE",
                format!(
                    "{}: {} code {} is not in the current drug master (dummy or retired codes are refused)",
                    r.field,
                    match r.code_system {
                        CodeSystem::Yj => "薬価基準 (yj)",
                        CodeSystem::Generic => "一般名 (generic)",
                        CodeSystem::Receipt => "レセ電 (receipt)",
                    },
                    r.code
                ),
            );
        }
    }
    Ok(errors.into_vec())
}

/// The prescription as `viewer` (the caller's facility) may see it: the claim basis of a
/// dispensing and the holder's qualification are shown to that pharmacy only.
async fn view(
    c: &impl GenericClient,
    r: Record,
    viewer: &str,
) -> Result<PrescriptionView, DbError> {
    // Independent reads, sent together: tokio-postgres pipelines concurrent queries on one
    // connection, so the view costs one round trip instead of five (BENCHMARKS.md).
    let holder_name = async {
        match &r.holder_code {
            Some(code) => facilities::name_of(c, code).await.map(Some),
            None => Ok(None),
        }
    };
    // Every dispensing increments uses_dispensed in its own transaction: none yet, none to read.
    let dispensings = async {
        if r.validity.uses_dispensed == 0 {
            Ok(Vec::new())
        } else {
            prescriptions::dispensings(c, r.id).await
        }
    };
    let qualification = async {
        match r.qualification_id {
            Some(id) if r.holder_code.as_deref() == Some(viewer) => {
                Ok(qualifications::get_confirmed(c, id)
                    .await?
                    .and_then(|q| serde_json::from_value::<HeldQualification>(q.detail).ok()))
            }
            _ => Ok(None),
        }
    };
    let (issuer_name, holder_name, mut dispensings, qualification, check) = tokio::try_join!(
        facilities::name_of(c, &r.issuer_code),
        holder_name,
        dispensings,
        qualification,
        check_summary(c, &r.check),
    )?;
    for d in &mut dispensings {
        if d.pharmacy_code != viewer {
            d.claim = None;
        }
    }
    let holder = match (&r.holder_code, holder_name) {
        (Some(code), Some(name)) => Some(FacilityRef {
            code: code.clone(),
            name,
        }),
        _ => None,
    };
    Ok(PrescriptionView {
        prescription_id: r.id,
        exchange_number: r.exchange_number,
        status: effective_status(r.status, &r.validity, today()),
        issue_type: r.issue_type,
        issuer: FacilityRef {
            code: r.issuer_code,
            name: issuer_name,
        },
        issued_by: r.issued_by,
        holder,
        held_since: r.held_since,
        cancellation_pending: r.cancellation_pending,
        cancellation_reason: r.cancellation_reason,
        cancelled_at: r.cancelled_at,
        issued_on: r.issued_on,
        valid_until: r.validity.valid_until,
        refill_count: r.refill_count,
        uses_dispensed: r.validity.uses_dispensed,
        next_refill_date: r.validity.next_refill_date,
        has_important_note: r.has_important_note,
        registered_at: r.created_at,
        check,
        prescription: r.document,
        dispensings,
        qualification,
    })
}

fn is_issuer(caller: &Caller, r: &Record) -> bool {
    caller.role.is_clinic() && r.issuer_code == caller.facility.as_str()
}

/// The pharmacy holding the prescription, or the one that dispensed it (the holder is kept once
/// dispensed and cleared on release or cancellation).
fn is_holder(caller: &Caller, r: &Record) -> bool {
    caller.role.is_pharmacy() && r.holder_code.as_deref() == Some(caller.facility.as_str())
}

/// The prescription `raw_id`, if the caller is its issuer or its holder.
pub async fn visible_to(
    c: &impl GenericClient,
    caller: &Caller,
    raw_id: &str,
) -> Result<Record, ApiError> {
    let record = prescriptions::get(c, parse_id(raw_id)?)
        .await?
        .ok_or_else(not_found)?;
    if !is_issuer(caller, &record) && !is_holder(caller, &record) {
        return Err(ApiError::forbidden(
            "only the issuing institution and the pharmacy holding it may see this prescription",
        ));
    }
    Ok(record)
}

pub fn reason(body: &ReasonBody) -> Result<String, ApiError> {
    let r = body.reason.trim();
    if r.is_empty() || r.chars().count() > 500 {
        return Err(ApiError::field(
            "reason",
            "REQUIRED",
            "reason is required (at most 500 characters)",
        ));
    }
    Ok(r.to_string())
}

pub fn identity_of(k: &InsuredKey, prefix: &str, e: &mut FieldErrors) -> Option<InsuranceIdentity> {
    let insurer = e.take(
        format!("{prefix}.insurer_number"),
        InsurerNumber::parse(&k.insurer_number),
    );
    let symbol = e.take(
        format!("{prefix}.symbol"),
        InsuredSymbol::parse(k.symbol.as_deref().unwrap_or("")),
    );
    let number = e.take(format!("{prefix}.number"), InsuredNumber::parse(&k.number));
    let branch = e.take(format!("{prefix}.branch"), Branch::parse(&k.branch));
    Some(InsuranceIdentity {
        insurer_number: insurer?,
        symbol: symbol?,
        number: number?,
        branch: branch?,
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct RegisterQuery {
    /// Required with an SJ1 (`text/csv`) body: `electronic` or `paper_with_exchange_number`.
    pub issue_type: Option<String>,
    /// With an SJ1 body: the overridden check covering its hits (`check_id` of the JSON form).
    pub check_id: Option<Uuid>,
    /// With an SJ1 body: register although the check cannot run.
    #[serde(default)]
    pub acknowledge_check_unavailable: bool,
}

/// An SJ1 CSV body as a draft, validated later exactly like the JSON form. Its record 1 must be
/// the caller's own institution; a 引換番号 in record 82 is ignored (the relay issues its own).
fn draft_from_sj1(
    caller: &Caller,
    issue_type: Option<&str>,
    bytes: &[u8],
) -> Result<(crate::domain::sj1::Parsed, Vec<u8>), ApiError> {
    let issue_type = issue_type.and_then(IssueType::parse).ok_or_else(|| {
        ApiError::field(
            "issue_type",
            "REQUIRED",
            "an SJ1 body needs ?issue_type=electronic or ?issue_type=paper_with_exchange_number",
        )
    })?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::field(
            "sj1",
            "ENCODING",
            format!(
                "SJ1 is UTF-8; the body is not (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let parsed = crate::domain::sj1::parse(text, issue_type).map_err(|errors| {
        ApiError::validation(
            errors
                .into_iter()
                .map(|e| FieldError {
                    field: e.field_path(),
                    code: e.code,
                    message: e.message,
                })
                .collect(),
        )
    })?;
    if parsed.institution_code != caller.facility {
        return Err(ApiError::field(
            "sj1 record 1",
            "INSTITUTION_MISMATCH",
            format!(
                "record 1 names institution {}, but the caller is {}",
                parsed.institution_code, caller.facility
            ),
        ));
    }
    let mut canonical = format!("sj1:{}:", issue_type.as_str()).into_bytes();
    canonical.extend_from_slice(bytes);
    Ok((parsed, canonical))
}

/// Register a prescription and issue its 引換番号. The body is the JSON form, or an SJ1 CSV
/// document (`Content-Type: text/csv`, with `?issue_type=`).
#[utoipa::path(
    post, path = "/v1/prescriptions", tag = "prescriptions",
    request_body(content(
        (PrescriptionDraft = "application/json"),
        (String = "text/csv"),
    )),
    params(RegisterQuery, ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, e.g. a UUID")),
    responses(
        (status = 201, body = Registered, description = "created; `check` is the check run inside registration"),
        (status = 400, body = Problem, description = "MALFORMED_JSON: fix the body; do not retry as is"),
        (status = 401, body = Problem, description = "no, expired or invalid token"), (status = 403, body = Problem, description = "wrong role or facility"),
        (status = 409, body = Problem, description = "UNRESOLVED_CHECK_HITS (member `check`: the check, masked; `unresolved_hit_ids`): reveal with consent, override, send `check_id` with a new Idempotency-Key. CHECK_UNAVAILABLE (member `check`): the check could not run; send `acknowledge_check_unavailable: true`. Both are committed with the check."),
        (status = 422, body = Problem, description = "VALIDATION_FAILED (every bad field listed; `check_id`: UNKNOWN_CHECK, WRONG_CONTEXT, OTHER_PATIENT), IDEMPOTENCY_KEY_REUSED; do not retry as is"),
        (status = 503, body = Problem, description = "SERVICE_SUSPENDED during a declared outage (member outage; issue paper or use the paper/FAX fallback; Retry-After), DATABASE_UNAVAILABLE: retry with the same Idempotency-Key after Retry-After"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions")]
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    query: super::extract::Query<RegisterQuery>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Doctor])?;
    let (draft, canonical, sj1) = if body.mime == "text/csv" {
        let (parsed, canonical) =
            draft_from_sj1(&caller, query.issue_type.as_deref(), &body.bytes)?;
        let mut draft = parsed.draft.clone();
        draft.check_id = query.check_id;
        draft.acknowledge_check_unavailable = query.acknowledge_check_unavailable;
        (draft, canonical, Some(parsed))
    } else {
        let body = body.json()?.parse::<PrescriptionDraft>()?;
        (body.value, body.canonical, None)
    };
    // Errors of an SJ1 registration also name the line and record the field came from.
    let located = |errors: Vec<FieldError>| match &sj1 {
        None => errors,
        Some(parsed) => errors
            .into_iter()
            .map(|mut e| {
                if let Some((line, record)) = parsed.locate(&e.field) {
                    e.field = format!("{} (sj1 line {line}, record {record})", e.field);
                }
                e
            })
            .collect(),
    };
    idempotent(&state, &req, &caller, &key, &canonical, async |tx| {
        // A declared outage of issuing: the clinic issues paper (503 with the instruction).
        ensure_running(tx, Suspended::Issuing).await?;
        let institution = own_facility(tx, &caller, FacilityKind::Clinic).await?;
        let mut prescription = match draft.validate(today()) {
            Ok(p) => p,
            Err(mut errors) => {
                // Report unknown codes of well-formed lines together with the other errors.
                let refs = draft.drug_refs();
                errors.extend(unknown_drug_codes(tx, &refs).await?);
                return Err(ApiError::validation(located(errors)));
            }
        };
        let unknown = unknown_drug_codes(tx, &prescription.drug_refs()).await?;
        if !unknown.is_empty() {
            return Err(ApiError::validation(located(unknown)));
        }
        if prescription.doctor.is_none()
            && let Some((name, name_kana)) =
                db::staff::name_of(tx, caller.facility.as_str(), &caller.staff).await?
        {
            prescription.doctor = Some(DoctorDraft { name, name_kana });
        }
        // The check runs inside registration; unresolved hits are refused, and that refusal is
        // committed with the check so the doctor can reveal and override it by its id.
        let patient = Patient::by_identity(
            tx,
            &prescription.insurance.identity(),
            prescription.patient.birth_date,
        )
        .await?;
        let link = match checked(
            tx,
            &caller,
            &state.settings.checks,
            CheckRun {
                context: CheckContext::Prescribing,
                patient: &patient,
                draft: Draft::Rps(&prescription.rps),
                exclude_own_facility: false,
                exclude_prescription: None,
            },
            Pass {
                named: draft.check_id,
                carried: None,
                acknowledge_unavailable: draft.acknowledge_check_unavailable,
            },
        )
        .await?
        {
            Ok(link) => link,
            Err(refusal) => return Ok(Reply::problem(&refusal)),
        };
        let id = Uuid::now_v7();
        let mut rng = rand::rng();
        // One million numbers per patient: a clash with one of the patient's few open
        // prescriptions is rare, twenty in a row means something else is wrong.
        for _ in 0..20 {
            let number = ExchangeNumber::random(&mut rng);
            if let Some(record) = prescriptions::insert(
                tx,
                id,
                &caller.facility,
                &caller.staff,
                &prescription,
                &number,
                link,
            )
            .await?
            {
                events::append(
                    tx,
                    id,
                    caller.actor(),
                    EventAction::Registered,
                    serde_json::json!({
                        "issue_type": record.issue_type.as_str(),
                        "check_id": link.check_id,
                        "override_check_id": link.override_check_id,
                        "check_unavailable_acknowledged": link.unavailable_acknowledged,
                    }),
                )
                .await?;
                let check = check_summary(tx, &link)
                    .await?
                    .ok_or_else(ApiError::internal)?;
                return Reply::new(
                    StatusCode::CREATED,
                    Registered {
                        prescription_id: record.id,
                        exchange_number: record.exchange_number,
                        status: Status::Registered,
                        issue_type: record.issue_type,
                        valid_until: record.validity.valid_until,
                        check,
                        warnings: jahis_warnings(&institution, &prescription),
                    },
                );
            }
        }
        tracing::error!("no free 引換番号 after 20 draws");
        Err(ApiError::internal())
    })
    .await
}

/// A prescription, for its issuer or its current holder.
#[utoipa::path(
    get, path = "/v1/prescriptions/{id}", tag = "prescriptions",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = PrescriptionView, description = "OK"), (status = 401, body = Problem, description = "no, expired or invalid token"),
              (status = 403, body = Problem, description = "wrong role or facility"), (status = 404, body = Problem, description = "not found")),
    security(("bearer" = []))
)]
#[get("/v1/prescriptions/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<PrescriptionView>, ApiError> {
    let client = state.pool.get().await.map_err(DbError::from)?;
    let record = visible_to(&client, &caller, &id).await?;
    access_log::record_reads(
        &client,
        &[record.id],
        caller.actor(),
        ReadAction::Viewed,
        &serde_json::json!({}),
    )
    .await?;
    Ok(web::Json(
        view(&client, record, caller.facility.as_str()).await?,
    ))
}

/// The clinic's own prescriptions by insurance identity and issue dates (the lost-控え lookup).
#[utoipa::path(
    get, path = "/v1/prescriptions", tag = "prescriptions",
    params(SearchQuery),
    responses((status = 200, body = PrescriptionList, description = "OK"), (status = 401, body = Problem, description = "no, expired or invalid token"),
              (status = 403, body = Problem, description = "wrong role or facility"), (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[get("/v1/prescriptions")]
pub async fn search(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<SearchQuery>,
) -> Result<web::Json<PrescriptionList>, ApiError> {
    caller.require(CLINIC_READERS)?;
    let q = query.into_inner();
    let mut e = FieldErrors::new();
    let insurer = q
        .insurer_number
        .as_deref()
        .and_then(|v| e.take("insurer_number", InsurerNumber::parse(v)));
    let symbol = q
        .symbol
        .as_deref()
        .and_then(|v| e.take("symbol", InsuredSymbol::parse(v)));
    let number = q
        .number
        .as_deref()
        .and_then(|v| e.take("number", InsuredNumber::parse(v)));
    let branch = q
        .branch
        .as_deref()
        .and_then(|v| e.take("branch", Branch::parse(v)));
    let issued_to = q.issued_to.unwrap_or_else(today);
    let issued_from = q
        .issued_from
        .unwrap_or_else(|| issued_to.checked_sub(90.days()).unwrap_or(issued_to));
    if issued_from > issued_to {
        e.add(
            "issued_from",
            "AFTER_ISSUED_TO",
            "issued_from must be on or before issued_to",
        );
    }
    if !e.is_empty() {
        return Err(ApiError::validation(e.into_vec()));
    }
    let client = state.pool.get().await.map_err(DbError::from)?;
    let records = prescriptions::search(
        &client,
        &Search {
            issuer: caller.facility.as_str(),
            insurer_number: insurer.as_ref().map(InsurerNumber::as_str),
            symbol: symbol.as_ref().map(InsuredSymbol::as_str),
            number: number.as_ref().map(InsuredNumber::as_str),
            branch: branch.as_ref().map(Branch::as_str),
            issued_from,
            issued_to,
            limit: 500,
        },
    )
    .await?;
    let found: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    access_log::record_reads(
        &client,
        &found,
        caller.actor(),
        ReadAction::Searched,
        &serde_json::json!({}),
    )
    .await?;
    let today = today();
    Ok(web::Json(PrescriptionList {
        prescriptions: records
            .into_iter()
            .map(|r| PrescriptionSummary {
                prescription_id: r.id,
                exchange_number: r.exchange_number,
                status: effective_status(r.status, &r.validity, today),
                issue_type: r.issue_type,
                issued_on: r.issued_on,
                valid_until: r.validity.valid_until,
                patient_name: r.document.patient.name,
                birth_date: r.document.patient.birth_date,
                holder_code: r.holder_code,
                cancellation_pending: r.cancellation_pending,
                has_important_note: r.has_important_note,
            })
            .collect(),
    }))
}

/// Cancel a prescription (issuer only). Pending while a pharmacy holds it; refused once dispensed;
/// a repeated cancel answers the current state.
#[utoipa::path(
    post, path = "/v1/prescriptions/{id}/cancel", tag = "prescriptions",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = ReasonBody,
    responses(
        (status = 200, body = StatusReply, description = "cancelled (also when it already was)"),
        (status = 202, body = StatusReply, description = "pending_cancellation: applied when the holder releases it"),
        (status = 403, body = Problem, description = "wrong role or facility"), (status = 404, body = Problem, description = "not found"),
        (status = 409, body = Problem, description = "ALREADY_DISPENSED: do not retry"),
        (status = 503, body = Problem, description = "retry with the same Idempotency-Key"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions/{id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Doctor])?;
    let body = body.parse::<ReasonBody>()?;
    let id = parse_id(&id)?;
    let why = reason(&body.value)?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let r = prescriptions::get_for_update(tx, id)
            .await?
            .ok_or_else(not_found)?;
        if r.issuer_code != caller.facility.as_str() {
            return Err(ApiError::forbidden(
                "only the issuing institution may cancel a prescription",
            ));
        }
        let reply = |status: StatusCode, s: &str| {
            Reply::new(
                status,
                StatusReply {
                    prescription_id: id,
                    status: s.to_string(),
                },
            )
        };
        match r.status {
            Status::Cancelled => reply(StatusCode::OK, "cancelled"),
            Status::Dispensed => Err(ApiError::conflict(
                "ALREADY_DISPENSED",
                "the prescription has been dispensed and can no longer be cancelled",
            )
            .with("current_status", "dispensed")),
            Status::Dispensing if r.cancellation_pending => {
                reply(StatusCode::ACCEPTED, "pending_cancellation")
            }
            Status::Dispensing => {
                prescriptions::set_cancellation_pending(tx, id, &why).await?;
                events::append(
                    tx,
                    id,
                    caller.actor(),
                    EventAction::CancellationRequested,
                    serde_json::json!({"reason": why, "holder": r.holder_code}),
                )
                .await?;
                reply(StatusCode::ACCEPTED, "pending_cancellation")
            }
            Status::Registered | Status::Expired => {
                prescriptions::set_cancelled(tx, id, &why).await?;
                events::append(
                    tx,
                    id,
                    caller.actor(),
                    EventAction::Cancelled,
                    serde_json::json!({"reason": why}),
                )
                .await?;
                reply(StatusCode::OK, "cancelled")
            }
        }
    })
    .await
}

/// Receive a prescription by 引換番号 plus the insurance identity: it is then held by the caller.
#[utoipa::path(
    post, path = "/v1/prescriptions/receive", tag = "dispensing",
    request_body = ReceiveRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = PrescriptionView, description = "OK"),
        (status = 404, body = Problem, description = "PRESCRIPTION_NOT_FOUND: wrong number or identity (counted towards the throttle); check with the patient, do not retry blindly"),
        (status = 409, body = Problem, description = "HELD_BY_ANOTHER_PHARMACY (names the holder), ALREADY_DISPENSED, REFILL_NOT_DUE"),
        (status = 410, body = Problem, description = "PRESCRIPTION_CANCELLED / PRESCRIPTION_EXPIRED: do not retry; ask the clinic"),
        (status = 422, body = Problem, description = "VALIDATION_FAILED: a malformed number or identity (not counted)"),
        (status = 429, body = Problem, description = "TOO_MANY_ATTEMPTS: retry after Retry-After seconds"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions/receive")]
pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(PHARMACY_STAFF)?;
    let body = body.parse::<ReceiveRequest>()?;
    let request = body.value;
    let mut e = FieldErrors::new();
    let number = e.take(
        "exchange_number",
        ExchangeNumber::parse(&request.exchange_number),
    );
    let identity = identity_of(&request.insured, "insured", &mut e);
    if let Some(b) = request.birth_date
        && b > today()
    {
        e.add(
            "birth_date",
            "IN_FUTURE",
            "birth_date must not be in the future",
        );
    }
    let (Some(number), Some(identity)) = (number, identity) else {
        return Err(ApiError::validation(e.into_vec()));
    };
    if !e.is_empty() {
        return Err(ApiError::validation(e.into_vec()));
    }
    let limits = state.settings.throttle.clone();
    let identity_hash = identity.throttle_key();
    let pharmacy = caller.facility.as_str().to_string();
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        ensure_running(tx, Suspended::Receiving).await?;
        own_facility(tx, &caller, FacilityKind::Pharmacy).await?;
        refuse_if_throttled(tx, &limits, &identity_hash, &pharmacy).await?;
        let qualification = match request.qualification_id {
            Some(id) => {
                let q = super::qualifications::usable(tx, &caller, id, false).await?;
                if !super::qualifications::same_patient(&q, &identity, request.birth_date) {
                    return Err(super::qualifications::mismatch());
                }
                Some(q)
            }
            None => None,
        };
        let today = today();
        for attempt in 0..2 {
            if let Some(r) = prescriptions::receive_by_number(
                tx,
                &number,
                &identity,
                request.birth_date,
                &pharmacy,
                today,
                qualification.as_ref().map(|q| q.stored.id),
            )
            .await?
            {
                return received(tx, &caller, r, "exchange_number", qualification.as_ref()).await;
            }
            // Nothing receivable matched: say why, counting only a wrong number or identity.
            let Some(r) =
                prescriptions::find_by_number(tx, &number, &identity, request.birth_date).await?
            else {
                return failed_lookup(
                    tx,
                    &pharmacy,
                    &identity_hash,
                    ApiError::not_found(
                        "PRESCRIPTION_NOT_FOUND",
                        "no prescription matches this 引換番号 and insurance identity; check both with the patient's 控え",
                    ),
                )
                .await;
            };
            if let Some(reply) = why_not_received(tx, &state, &pharmacy, r, today, attempt).await? {
                return Ok(reply);
            }
        }
        Err(busy())
    })
    .await
}

fn busy() -> ApiError {
    ApiError::conflict(
        "PRESCRIPTION_BUSY",
        "the prescription changed while it was being received; send the request again",
    )
}

/// 429 once the failed lookups by 引換番号 in the window reach the limit for the insurance
/// identity or for the pharmacy. Every lookup by number and identity checks this first (the
/// receive, the fallback request), or one of them would be a way round the other's limit.
pub(super) async fn refuse_if_throttled(
    tx: &impl GenericClient,
    limits: &crate::config::ThrottleSettings,
    identity_hash: &[u8],
    pharmacy: &str,
) -> Result<(), ApiError> {
    throttle::serialize(tx, pharmacy, identity_hash).await?;
    // Both counts in one round trip (pipelined on the transaction's connection).
    let (by_identity, by_pharmacy) = tokio::try_join!(
        throttle::identity_failures(
            tx,
            identity_hash,
            limits.window_seconds,
            limits.identity_limit
        ),
        throttle::pharmacy_failures(tx, pharmacy, limits.window_seconds, limits.pharmacy_limit),
    )?;
    for (recent, limit, whom) in [
        (
            by_identity,
            limits.identity_limit,
            "for this insurance identity",
        ),
        (by_pharmacy, limits.pharmacy_limit, "from this pharmacy"),
    ] {
        if recent.count >= limit {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_ATTEMPTS",
                format!(
                    "too many wrong 引換番号 {whom}: {} in the last {} minutes. Check the 控え with the patient, or ask the issuing clinic to look the number up",
                    recent.count,
                    limits.window_seconds / 60
                ),
            )
            .retry_after(recent.seconds_until_oldest_expires.max(1) as u64));
        }
    }
    Ok(())
}

/// A lookup by 引換番号 that matched nothing: the failure is counted in the request's own
/// transaction, which then commits with the 404 (a committed refusal, replayed under its
/// Idempotency-Key), so the next lookup waiting on [`throttle::serialize`] counts it.
pub(super) async fn failed_lookup(
    tx: &impl GenericClient,
    pharmacy: &str,
    identity_hash: &[u8],
    not_found: ApiError,
) -> Result<Reply, ApiError> {
    throttle::record_failure(tx, pharmacy, identity_hash).await?;
    Ok(Reply::problem(&not_found))
}

/// The answer to a successful receive: the event (with the qualification it relied on) and the
/// prescription as its new holder sees it.
async fn received(
    tx: &impl GenericClient,
    caller: &Caller,
    r: Record,
    via: &str,
    q: Option<&super::qualifications::Usable>,
) -> Result<Reply, ApiError> {
    events::append(
        tx,
        r.id,
        caller.actor(),
        EventAction::Received,
        serde_json::json!({
            "via": via,
            "qualification_id": q.map(|q| q.stored.id),
            "method": q.map(|q| q.stored.method.as_str()),
            "claim_basis": q.map(|q| q.view.claim_basis.as_str()),
            "disaster": q.and_then(|q| q.view.disaster.as_ref().map(|d| d.name.clone())),
        }),
    )
    .await?;
    let v = view(tx, r, caller.facility.as_str()).await?;
    Reply::new(StatusCode::OK, v)
}

/// Why a prescription the caller identified was not received: `Ok(Some)` when the caller
/// already holds it (answered as a success), an error naming the state otherwise, or `Ok(None)`
/// when it was released meanwhile and the receive should be tried once more.
/// Whether `r` is a paper reissue whose replaced e-prescription is not cancelled yet.
async fn replaced_still_open(tx: &impl GenericClient, r: &Record) -> Result<bool, DbError> {
    Ok(match r.replaces {
        Some(old) => prescriptions::get(tx, old)
            .await?
            .is_some_and(|o| o.status != Status::Cancelled),
        None => false,
    })
}

async fn why_not_received(
    tx: &impl GenericClient,
    state: &AppState,
    pharmacy: &str,
    r: Record,
    today: Date,
    attempt: usize,
) -> Result<Option<Reply>, ApiError> {
    match r.status {
        Status::Dispensing if r.holder_code.as_deref() == Some(pharmacy) => {
            let v = view(tx, r, pharmacy).await?;
            Reply::new(StatusCode::OK, v).map(Some)
        }
        Status::Dispensing => {
            let code = r.holder_code.clone().unwrap_or_default();
            let name = facilities::name_of(tx, &code).await?;
            Err(ApiError::conflict(
                "HELD_BY_ANOTHER_PHARMACY",
                format!(
                    "this prescription is being dispensed by {} ({code}); it must release it first",
                    name.as_deref().unwrap_or("another pharmacy")
                ),
            )
            .with("holder", FacilityRef { code, name }))
        }
        Status::Dispensed => Err(ApiError::conflict(
            "ALREADY_DISPENSED",
            "this prescription has already been dispensed",
        )),
        Status::Cancelled => Err(ApiError::gone(
            "PRESCRIPTION_CANCELLED",
            "the issuing institution cancelled this prescription; ask the patient for the new one or contact the clinic",
        )),
        Status::Expired => Err(expired_error(&r)),
        Status::Registered if replaced_still_open(tx, &r).await? => Err(ApiError::conflict(
            "REPLACED_PRESCRIPTION_OPEN",
            "this paper reissue replaces an e-prescription whose cancellation is still pending (a pharmacy holds it); it can be received once that pharmacy releases it",
        )),
        Status::Registered => match r.validity.window(today) {
            Window::NotYet { opens_on } => Err(ApiError::conflict(
                "REFILL_NOT_DUE",
                format!("the next use of this refill prescription can be received from {opens_on}"),
            )
            .with("opens_on", opens_on)),
            // Released by its holder between the two statements: try the receive again.
            Window::Open if attempt == 0 => Ok(None),
            Window::Open => Err(busy()),
            Window::Closed => {
                // Its window has closed: record the expiry in its own transaction so it
                // survives this request's rollback.
                let client = state.pool.get().await.map_err(DbError::from)?;
                if prescriptions::mark_expired(&client, r.id).await? {
                    events::append(
                        &client,
                        r.id,
                        events::Actor {
                            staff: "relay",
                            facility: pharmacy,
                            role: "system",
                        },
                        EventAction::Expired,
                        serde_json::json!({"valid_until": r.validity.valid_until}),
                    )
                    .await?;
                }
                Err(expired_error(&r))
            }
        },
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardReceiveRequest {
    /// A card-path (or disaster-mode) qualification made by the caller's pharmacy.
    pub qualification_id: Uuid,
}

/// The card path: receive one of the patient's outstanding prescriptions (listed by
/// `GET /v1/qualifications/{id}/prescriptions`) without a 引換番号.
#[utoipa::path(
    post, path = "/v1/prescriptions/{id}/receive", tag = "dispensing",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = CardReceiveRequest,
    responses(
        (status = 200, body = PrescriptionView, description = "OK: now held by the caller"),
        (status = 404, body = Problem, description = "PRESCRIPTION_NOT_FOUND (also: not this patient's), QUALIFICATION_NOT_FOUND"),
        (status = 409, body = Problem, description = "HELD_BY_ANOTHER_PHARMACY (names the holder), ALREADY_DISPENSED, REFILL_NOT_DUE"),
        (status = 410, body = Problem, description = "PRESCRIPTION_CANCELLED, PRESCRIPTION_EXPIRED, QUALIFICATION_EXPIRED"),
        (status = 422, body = Problem, description = "CARD_PATH_REQUIRED, INFO_SHARING_UNAVAILABLE: use the 引換番号 path"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions/{id}/receive")]
pub async fn receive_by_card(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(PHARMACY_STAFF)?;
    let body = body.parse::<CardReceiveRequest>()?;
    let id = parse_id(&id)?;
    let pharmacy = caller.facility.as_str().to_string();
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        ensure_running(tx, Suspended::Receiving).await?;
        own_facility(tx, &caller, FacilityKind::Pharmacy).await?;
        let q =
            super::qualifications::usable(tx, &caller, body.value.qualification_id, true).await?;
        let Some(person) = &q.person else {
            return Err(not_found());
        };
        let identities: Vec<InsuranceIdentity> = person
            .coverages
            .iter()
            .map(|c| c.identity.clone())
            .collect();
        let today = today();
        for attempt in 0..2 {
            if let Some(r) = prescriptions::receive_by_id(
                tx,
                id,
                &identities,
                person.birth_date,
                &pharmacy,
                today,
                q.stored.id,
            )
            .await?
            {
                let via = if q.stored.method == Method::Disaster {
                    "disaster"
                } else {
                    "card"
                };
                return received(tx, &caller, r, via, Some(&q)).await;
            }
            // Another patient's prescription is reported like a missing one.
            let r = prescriptions::get(tx, id)
                .await?
                .filter(|r| {
                    r.document.patient.birth_date == person.birth_date
                        && identities.contains(&r.document.insurance.identity())
                })
                .ok_or_else(not_found)?;
            if let Some(reply) = why_not_received(tx, &state, &pharmacy, r, today, attempt).await? {
                return Ok(reply);
            }
        }
        Err(busy())
    })
    .await
}

fn expired_error(r: &Record) -> ApiError {
    ApiError::gone(
        "PRESCRIPTION_EXPIRED",
        format!(
            "this prescription's 使用期限 ({}) has passed; the patient needs a new prescription",
            r.validity.valid_until
        ),
    )
}

/// Load the prescription for a holder-only action (release, dispense).
async fn held_by_caller(
    tx: &impl GenericClient,
    caller: &Caller,
    id: Uuid,
) -> Result<Record, ApiError> {
    let r = prescriptions::get_for_update(tx, id)
        .await?
        .ok_or_else(not_found)?;
    if !caller.role.is_pharmacy() || r.holder_code.as_deref() != Some(caller.facility.as_str()) {
        return Err(ApiError::forbidden(
            "only the pharmacy holding this prescription may do this",
        ));
    }
    if r.status != Status::Dispensing {
        return Err(ApiError::conflict(
            "NOT_HELD",
            format!(
                "the prescription is {}, not held by a pharmacy",
                r.status.as_str()
            ),
        )
        .with("current_status", r.status));
    }
    Ok(r)
}

/// 受付取消: the holder gives the prescription back; a pending cancellation is applied now.
#[utoipa::path(
    post, path = "/v1/prescriptions/{id}/release", tag = "dispensing",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = ReasonBody,
    responses((status = 200, body = StatusReply, description = "OK"), (status = 403, body = Problem, description = "wrong role or facility"),
              (status = 404, body = Problem, description = "not found"), (status = 409, body = Problem, description = "conflicts with the current state")),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions/{id}/release")]
pub async fn release(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Pharmacist])?;
    let body = body.parse::<ReasonBody>()?;
    let id = parse_id(&id)?;
    let why = reason(&body.value)?;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let r = held_by_caller(tx, &caller, id).await?;
        events::append(
            tx,
            id,
            caller.actor(),
            EventAction::Released,
            serde_json::json!({"reason": why}),
        )
        .await?;
        let status = if r.cancellation_pending {
            let pending = r.cancellation_reason.clone().unwrap_or_default();
            prescriptions::set_cancelled(tx, id, &pending).await?;
            events::append(
                tx,
                id,
                caller.actor(),
                EventAction::CancellationApplied,
                serde_json::json!({"reason": pending}),
            )
            .await?;
            super::fallbacks::pending_cancellation_applied(tx, &r).await?;
            "cancelled"
        } else {
            prescriptions::set_released(tx, id).await?;
            "registered"
        };
        Reply::new(
            StatusCode::OK,
            StatusReply {
                prescription_id: id,
                status: status.into(),
            },
        )
    })
    .await
}

/// Register the dispensing result (調剤結果). The duplicate/contraindication check runs again over
/// the dispensed items; hits the prescriber overrode (same kind, ingredient and route) pass.
#[utoipa::path(
    post, path = "/v1/prescriptions/{id}/dispense", tag = "dispensing",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = DispenseDraft,
    responses((status = 200, body = StatusReply, description = "OK"), (status = 403, body = Problem, description = "wrong role or facility"),
              (status = 404, body = Problem, description = "not found"),
              (status = 409, body = Problem, description = "conflicts with the current state; UNRESOLVED_CHECK_HITS (member `check`): after a 疑義照会 the pharmacist overrides that check and sends its `check_id`; CHECK_UNAVAILABLE: send `acknowledge_check_unavailable: true`"),
              (status = 422, body = Problem, description = "validation failed: every bad field is listed")),
    security(("bearer" = []))
)]
#[post("/v1/prescriptions/{id}/dispense")]
pub async fn dispense(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Pharmacist])?;
    let body = body.parse::<DispenseDraft>()?;
    let id = parse_id(&id)?;
    let draft = body.value;
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let r = held_by_caller(tx, &caller, id).await?;
        let uses_after = r.validity.uses_dispensed + 1;
        let refill_uses_remain = r.refill_count.is_some_and(|n| uses_after < n);
        let dispensing = draft
            .validate(DispenseContext {
                today: today(),
                issued_on: r.issued_on,
                refill_uses_remain,
            })
            .map_err(ApiError::validation)?;
        let unknown = unknown_drug_codes(tx, &dispensing.drug_refs()).await?;
        if !unknown.is_empty() {
            return Err(ApiError::validation(unknown));
        }
        // The check runs again at dispensing over what is actually dispensed; the prescriber's
        // override travels with the prescription, so hits the doctor weighed need no 疑義照会.
        let patient = Patient::by_identity(
            tx,
            &r.document.insurance.identity(),
            r.document.patient.birth_date,
        )
        .await?
        .with_qualification(tx, r.qualification_id)
        .await?;
        let link = match checked(
            tx,
            &caller,
            &state.settings.checks,
            CheckRun {
                context: CheckContext::Dispensing,
                patient: &patient,
                draft: Draft::Items(&dispensing.items),
                exclude_own_facility: false,
                exclude_prescription: Some(r.id),
            },
            Pass {
                named: draft.check_id,
                carried: r.check.override_check_id,
                acknowledge_unavailable: draft.acknowledge_check_unavailable,
            },
        )
        .await?
        {
            Ok(link) => link,
            Err(refusal) => return Ok(Reply::problem(&refusal)),
        };
        let next = match (refill_uses_remain, r.cancellation_pending) {
            (false, _) => Status::Dispensed,
            (true, false) => Status::Registered,
            // The remaining refill uses are what the clinic asked to cancel.
            (true, true) => Status::Cancelled,
        };
        // The claim basis of the qualification the prescription was received under.
        let claim = match r.qualification_id {
            Some(q) => qualifications::get_confirmed(tx, q)
                .await?
                .and_then(|q| serde_json::from_value::<HeldQualification>(q.detail).ok())
                .map(|q| q.claim),
            None => None,
        };
        let use_number = prescriptions::record_dispensing(
            tx,
            &r,
            prescriptions::NewDispensing {
                pharmacy: caller.facility.as_str(),
                pharmacist: &caller.staff,
                dispensing: &dispensing,
                next_status: next,
                claim: claim.as_ref(),
                check: link,
            },
        )
        .await?;
        events::append(
            tx,
            id,
            caller.actor(),
            EventAction::Dispensed,
            serde_json::json!({
                "use_number": use_number,
                "dispensed_on": dispensing.dispensed_on,
                "important_note": dispensing.important_note.is_some(),
                "next_refill_date": dispensing.next_refill_date,
                "check_id": link.check_id,
                "override_check_id": link.override_check_id,
                "check_unavailable_acknowledged": link.unavailable_acknowledged,
            }),
        )
        .await?;
        if r.cancellation_pending {
            // This use was dispensed from the e-prescription: a paper reissue replacing it must
            // not be dispensed as well.
            super::fallbacks::replaced_prescription_dispensed(tx, &caller, &r).await?;
            if next == Status::Cancelled {
                super::fallbacks::pending_cancellation_applied(tx, &r).await?;
            }
            let (action, detail) = if next == Status::Cancelled {
                (
                    EventAction::CancellationApplied,
                    "remaining refill uses cancelled",
                )
            } else {
                (
                    EventAction::CancellationRejected,
                    "dispensed before the cancellation could apply",
                )
            };
            events::append(
                tx,
                id,
                caller.actor(),
                action,
                serde_json::json!({"detail": detail}),
            )
            .await?;
        }
        Reply::new(
            StatusCode::OK,
            StatusReply {
                prescription_id: id,
                status: next.as_str().into(),
            },
        )
    })
    .await
}

/// The prescription's event log, for its issuer and its current holder.
#[utoipa::path(
    get, path = "/v1/prescriptions/{id}/events", tag = "prescriptions",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = EventList, description = "OK"), (status = 403, body = Problem, description = "wrong role or facility"), (status = 404, body = Problem, description = "not found")),
    security(("bearer" = []))
)]
#[get("/v1/prescriptions/{id}/events")]
pub async fn list_events(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<EventList>, ApiError> {
    let client = state.pool.get().await.map_err(DbError::from)?;
    let r = visible_to(&client, &caller, &id).await?;
    Ok(web::Json(EventList {
        events: events::list(&client, r.id).await?,
    }))
}
