//! `/v1/fallbacks`: the outage fallback (domain.md §8, seed 000 Point 5). A pharmacy that cannot
//! get an e-prescription asks the issuing clinic to cancel it and reissue on paper or FAX the
//! contents; the clinic resolves (the cancellation happens in the same transaction, or is left
//! pending while a pharmacy holds the prescription), posts the paper original after a FAX, and the
//! pharmacy records the original's arrival with its 照合 result. Every step is a
//! `fallback_events` row, and every message to the other side is written to the mail outbox in the
//! same transaction.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::prescriptions::{
    InsuredKey, failed_lookup, identity_of, own_facility, refuse_if_throttled,
};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::db::fallbacks::{
    self as cases, Change, FallbackEvent, FallbackRecord, NewFallback, OfflineRequest,
};
use crate::db::outbox::{self, Attachment, Mail};
use crate::db::prescriptions::{self, Record};
use crate::db::{DbError, GenericClient, events, facilities};
use crate::domain::errors::FieldErrors;
use crate::domain::facility::Facility;
use crate::domain::fallback::{FallbackMode, FallbackStatus, Side, Step};
use crate::domain::identifiers::{ExchangeNumber, FacilityCode, FacilityKind};
use crate::domain::lifecycle::{EventAction, Status};
use crate::domain::time::today;

const PHARMACY_STAFF: &[Role] = &[Role::Pharmacist, Role::PharmacyClerk];
const CLINIC_STAFF: &[Role] = &[Role::Doctor, Role::ClinicClerk];

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackRequest {
    /// The 引換番号 with the insurance identity (the pharmacy need not have received it)…
    #[serde(default)]
    pub exchange_number: Option<String>,
    #[serde(default)]
    pub insured: Option<InsuredKey>,
    /// …or the prescription id when the pharmacy holds it.
    #[serde(default)]
    pub prescription_id: Option<Uuid>,
    /// Why the e-prescription cannot be used (e.g. 「薬局システム障害」); at most 500 characters.
    // Not blank as str::trim sees it: a character outside Unicode White_Space.
    #[schema(
        max_length = 500,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub reason: String,
    pub preferred: FallbackMode,
    #[serde(default)]
    pub note: Option<String>,
    /// Set by pharmacy-client when it uploads a request it queued while the relay was unreachable.
    #[serde(default)]
    pub offline: Option<OfflineRequestBody>,
}

/// What pharmacy-client knows of a request it made offline.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineRequestBody {
    /// The queued record's id (1–64 characters); the same id never opens a second case.
    pub local_id: String,
    /// When the pharmacist asked, at the counter (not in the future).
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: Timestamp,
    /// When the clinic was mailed directly, if it was.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub clinic_mailed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub mode: FallbackMode,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispensedRequest {
    #[schema(value_type = String, format = Date)]
    pub dispensed_on: Date,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MailedRequest {
    #[schema(value_type = String, format = Date)]
    pub mailed_on: Date,
    /// 追跡番号 of the post, if any (at most 100 characters).
    #[serde(default)]
    #[schema(max_length = 100)]
    pub tracking: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceivedRequest {
    #[schema(value_type = String, format = Date)]
    pub received_on: Date,
    /// 照合: the original matches the FAX.
    pub matches: bool,
    /// Required when the original differs from the FAX: what differs and what was done.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FacilityName {
    pub code: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reissued {
    pub prescription_id: Uuid,
    /// Print `GET /v1/prescriptions/{id}/paper.pdf` for the patient.
    pub exchange_number: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FallbackView {
    pub fallback_id: Uuid,
    pub status: FallbackStatus,
    pub prescription_id: Uuid,
    pub exchange_number: String,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    pub clinic: FacilityName,
    pub pharmacy: FacilityName,
    pub reason: String,
    pub preferred: FallbackMode,
    pub note: Option<String>,
    pub mode: Option<FallbackMode>,
    /// `applied`, or `pending` while a pharmacy still held the e-prescription.
    pub cancellation: Option<String>,
    pub reissued: Option<Reissued>,
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resolved_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = Date)]
    pub dispensed_on: Option<Date>,
    #[schema(value_type = Option<String>, format = Date)]
    pub original_mailed_on: Option<Date>,
    pub tracking: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
    pub original_received_on: Option<Date>,
    pub original_matches: Option<bool>,
    pub original_note: Option<String>,
    /// Present when the request was made offline and uploaded later.
    pub offline: Option<OfflineRequest>,
    pub events: Vec<FallbackEvent>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FallbackList {
    pub fallbacks: Vec<FallbackView>,
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only cases in this status.
    #[param(value_type = Option<FallbackStatus>)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct PeriodQuery {
    /// First day (Japan), default 30 days ago; not after `to`.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day (Japan), default today.
    #[param(format = Date)]
    pub to: Option<String>,
    /// Cover letter only: the pharmacy it is addressed to.
    pub pharmacy: Option<String>,
}

/// One original owed by post.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OwedOriginal {
    pub fallback_id: Uuid,
    pub prescription_id: Uuid,
    pub exchange_number: String,
    pub patient_name: String,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    #[schema(value_type = Option<String>, format = Date)]
    pub faxed_on: Option<Date>,
    pub status: FallbackStatus,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OwedToPharmacy {
    pub pharmacy: FacilityName,
    pub originals: Vec<OwedOriginal>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OwedOriginals {
    #[schema(value_type = String, format = Date)]
    pub from: Date,
    #[schema(value_type = String, format = Date)]
    pub to: Date,
    pub pharmacies: Vec<OwedToPharmacy>,
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn not_found() -> ApiError {
    ApiError::not_found(
        "FALLBACK_NOT_FOUND",
        "this facility has no fallback case with this id",
    )
}

pub fn text(
    field: &str,
    raw: Option<&str>,
    required: bool,
    max: usize,
    e: &mut FieldErrors,
) -> Option<String> {
    let v = raw.map(str::trim).filter(|s| !s.is_empty());
    match v {
        None if required => {
            e.add(field, "REQUIRED", format!("{field} is required"));
            None
        }
        Some(s) if s.chars().count() > max => {
            e.add(
                field,
                "TOO_LONG",
                format!("{field} has at most {max} characters"),
            );
            None
        }
        _ => v.map(str::to_string),
    }
}

/// `offline`, checked: a local id of 1–64 characters, times not in the future (five minutes of
/// clock skew allowed), the mail not before the request.
pub fn offline_request(o: &OfflineRequestBody, e: &mut FieldErrors) -> Option<OfflineRequest> {
    let before = e.len();
    let local_id = o.local_id.trim();
    if local_id.is_empty() || local_id.chars().count() > 64 {
        e.add(
            "offline.local_id",
            "LENGTH",
            "offline.local_id has 1 to 64 characters",
        );
    }
    let latest = Timestamp::now() + jiff::SignedDuration::from_mins(5);
    if o.requested_at > latest {
        e.add(
            "offline.requested_at",
            "IN_FUTURE",
            "offline.requested_at is in the future",
        );
    }
    match o.clinic_mailed_at {
        Some(m) if m > latest => e.add(
            "offline.clinic_mailed_at",
            "IN_FUTURE",
            "offline.clinic_mailed_at is in the future",
        ),
        Some(m) if m < o.requested_at => e.add(
            "offline.clinic_mailed_at",
            "BEFORE_REQUEST",
            "offline.clinic_mailed_at is before offline.requested_at",
        ),
        _ => {}
    }
    (e.len() == before).then(|| OfflineRequest {
        local_id: local_id.to_string(),
        requested_at: o.requested_at,
        clinic_mailed_at: o.clinic_mailed_at,
    })
}

/// The clinic may already have acted on the pharmacy's own mail: say so, so that it records what
/// it did instead of issuing twice.
fn offline_paragraph(o: &OfflineRequest) -> String {
    let at = |t: Timestamp| {
        t.to_zoned(crate::domain::time::tokyo())
            .strftime("%Y-%m-%d %H:%M")
            .to_string()
    };
    match o.clinic_mailed_at {
        Some(m) => format!(
            "\nこの依頼は {} にリレーへ接続できない状態で行われ、{} に薬局から直接メールでお知らせ済みのものです\
             （薬局側の番号 {}）。すでに紙またはFAXで対応済みの場合は、二重に発行せず、対応した方法をリレーに記録してください。\n",
            at(o.requested_at),
            at(m),
            o.local_id
        ),
        None => format!(
            "\nこの依頼は {} にリレーへ接続できない状態で行われ、復旧後に登録されたものです（薬局側の番号 {}）。\n",
            at(o.requested_at),
            o.local_id
        ),
    }
}

fn in_tokyo(t: Timestamp) -> Date {
    t.to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap_or(jiff::tz::TimeZone::UTC))
        .date()
}

async fn facility_name(c: &impl GenericClient, code: &str) -> Result<FacilityName, DbError> {
    Ok(FacilityName {
        code: code.to_string(),
        name: facilities::name_of(c, code).await?,
    })
}

async fn facility(c: &impl GenericClient, code: &str) -> Result<Facility, ApiError> {
    let code = FacilityCode::parse(code).map_err(|_| ApiError::internal())?;
    facilities::get(c, &code)
        .await?
        .ok_or_else(ApiError::internal)
}

async fn view(c: &impl GenericClient, f: FallbackRecord) -> Result<FallbackView, DbError> {
    let reissued = match f.reissued_prescription_id {
        Some(id) => prescriptions::get(c, id).await?.map(|r| Reissued {
            prescription_id: r.id,
            exchange_number: r.exchange_number,
        }),
        None => None,
    };
    Ok(FallbackView {
        fallback_id: f.id,
        status: f.status,
        prescription_id: f.prescription_id,
        exchange_number: f.exchange_number,
        issued_on: f.issued_on,
        clinic: facility_name(c, &f.clinic_code).await?,
        pharmacy: facility_name(c, &f.pharmacy_code).await?,
        reason: f.reason,
        preferred: f.preferred,
        note: f.note,
        mode: f.mode,
        cancellation: f.cancellation,
        reissued,
        requested_at: f.requested_at,
        resolved_at: f.resolved_at,
        dispensed_on: f.dispensed_on,
        original_mailed_on: f.original_mailed_on,
        tracking: f.tracking,
        original_received_on: f.original_received_on,
        original_matches: f.original_matches,
        original_note: f.original_note,
        offline: f.offline,
        events: cases::events(c, f.id).await?,
    })
}

/// The case `raw`, locked, if the caller is its clinic or its pharmacy (else 404: a case id says
/// nothing to anyone else).
async fn own_case(
    c: &impl GenericClient,
    caller: &Caller,
    raw: &str,
) -> Result<FallbackRecord, ApiError> {
    let id = Uuid::parse_str(raw).map_err(|_| not_found())?;
    let f = cases::get_for_update(c, id).await?.ok_or_else(not_found)?;
    let mine = if caller.role.is_clinic() {
        f.clinic_code == caller.facility.as_str()
    } else {
        caller.role.is_pharmacy() && f.pharmacy_code == caller.facility.as_str()
    };
    if !mine {
        return Err(not_found());
    }
    Ok(f)
}

/// Moves the case by `step` (409 naming the current state when out of order) and records it.
async fn take_step(
    tx: &impl GenericClient,
    caller: &Caller,
    f: &FallbackRecord,
    step: Step,
    change: &Change<'_>,
    detail: serde_json::Value,
) -> Result<FallbackStatus, ApiError> {
    let side_ok = match step.taken_by() {
        Side::Clinic => caller.role.is_clinic(),
        Side::Pharmacy => caller.role.is_pharmacy(),
    };
    if !side_ok {
        return Err(ApiError::forbidden(match step.taken_by() {
            Side::Clinic => "only the issuing clinic takes this step",
            Side::Pharmacy => "only the requesting pharmacy takes this step",
        }));
    }
    let Some(next) = f.status.apply(step) else {
        return Err(ApiError::conflict(
            "FALLBACK_STATE_CONFLICT",
            format!(
                "the case is {}; {} is not possible from there",
                f.status.as_str(),
                step.as_str()
            ),
        )
        .with("current_status", f.status.as_str()));
    };
    cases::apply(tx, f.id, next, change).await?;
    cases::append_event(
        tx,
        f.id,
        caller.actor(),
        step.as_str(),
        Some(f.status),
        next,
        detail,
    )
    .await?;
    Ok(next)
}

/// A step request on the case `id`, as the handler received it.
struct StepRequest<'a> {
    state: &'a AppState,
    req: &'a HttpRequest,
    caller: &'a Caller,
    key: &'a IdempotencyKey,
    id: &'a str,
    canonical: &'a [u8],
}

/// Takes `step` on the case in the request's transaction (after `validate` approves the case as
/// it is) and answers with the case: the shape of every step but the resolution.
async fn step_reply(
    r: StepRequest<'_>,
    step: Step,
    change: Change<'_>,
    detail: serde_json::Value,
    validate: impl Fn(&FallbackRecord) -> Result<(), ApiError>,
) -> Result<HttpResponse, ApiError> {
    idempotent(r.state, r.req, r.caller, r.key, r.canonical, async |tx| {
        let f = own_case(tx, r.caller, r.id).await?;
        validate(&f)?;
        take_step(tx, r.caller, &f, step, &change, detail).await?;
        reply_with(tx, f.id, StatusCode::OK).await
    })
    .await
}

async fn reply_with(
    tx: &impl GenericClient,
    id: Uuid,
    status: StatusCode,
) -> Result<Reply, ApiError> {
    let f = cases::get(tx, id).await?.ok_or_else(ApiError::internal)?;
    Reply::new(status, view(tx, f).await?)
}

const MAIL_FOOTER: &str =
    "\n\n--\n電子処方箋リレー（自動送信）\nこのメールに返信しても届きません。";

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// A pharmacy asks the issuing clinic to cancel the e-prescription and reissue on paper or FAX.
#[utoipa::path(
    post, path = "/v1/fallbacks", tag = "fallbacks",
    request_body = FallbackRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 201, body = FallbackView, description = "requested; the clinic is mailed"),
        (status = 403, body = Problem, description = "wrong role, or not a registered pharmacy"),
        (status = 404, body = Problem, description = "PRESCRIPTION_NOT_FOUND (by number: counted towards the receive throttle)"),
        (status = 409, body = Problem, description = "FALLBACK_EXISTS (member fallback_id), ALREADY_DISPENSED, HELD_BY_ANOTHER_PHARMACY, PRESCRIPTION_CLOSED"),
        (status = 422, body = Problem, description = "VALIDATION_FAILED"),
        (status = 429, body = Problem, description = "TOO_MANY_ATTEMPTS: too many wrong 引換番号 (receives and requests by number together); retry after Retry-After seconds"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/fallbacks")]
pub async fn request(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(PHARMACY_STAFF)?;
    let body = body.parse::<FallbackRequest>()?;
    let r = &body.value;
    let mut e = FieldErrors::new();
    let reason = text("reason", Some(&r.reason), true, 500, &mut e);
    let note = text("note", r.note.as_deref(), false, 1000, &mut e);
    let offline = r.offline.as_ref().and_then(|o| offline_request(o, &mut e));
    let by_number = match (&r.prescription_id, &r.exchange_number, &r.insured) {
        (Some(_), None, None) => None,
        (None, Some(n), Some(k)) => {
            let number = e.take("exchange_number", ExchangeNumber::parse(n));
            let identity = identity_of(k, "insured", &mut e);
            number.zip(identity)
        }
        _ => {
            e.add(
                "prescription_id",
                "ONE_OF",
                "give either prescription_id, or exchange_number with insured",
            );
            None
        }
    };
    let (Some(reason), true) = (reason, e.is_empty()) else {
        return Err(ApiError::validation(e.into_vec()));
    };
    // A lookup by number and identity is throttled like the receive's: the same limits, the same
    // failure count.
    let identity_hash = by_number
        .as_ref()
        .map(|(_, identity)| identity.throttle_key());
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let pharmacy = own_facility(tx, &caller, FacilityKind::Pharmacy).await?;
        let missing = || {
            ApiError::not_found(
                "PRESCRIPTION_NOT_FOUND",
                "no prescription with this number and insurance identity (or id visible to this pharmacy)",
            )
        };
        let p: Record = match (&by_number, r.prescription_id) {
            (Some((number, identity)), _) => {
                let hash = identity_hash.as_deref().unwrap_or_default();
                refuse_if_throttled(tx, &state.settings.throttle, hash, caller.facility.as_str())
                    .await?;
                match prescriptions::find_by_number(tx, number, identity, None).await? {
                    Some(found) => found,
                    None => {
                        return failed_lookup(tx, caller.facility.as_str(), hash, missing()).await;
                    }
                }
            }
            (None, Some(id)) => prescriptions::get(tx, id)
                .await?
                .filter(|p| p.holder_code.as_deref() == Some(caller.facility.as_str()))
                .ok_or_else(missing)?,
            (None, None) => return Err(ApiError::internal()),
        };
        match p.status {
            Status::Registered => {}
            Status::Dispensing if p.holder_code.as_deref() == Some(caller.facility.as_str()) => {}
            Status::Dispensing => {
                return Err(ApiError::conflict(
                    "HELD_BY_ANOTHER_PHARMACY",
                    "another pharmacy holds this prescription; only the holder may ask for a fallback",
                ));
            }
            Status::Dispensed => {
                return Err(ApiError::conflict(
                    "ALREADY_DISPENSED",
                    "the prescription has been dispensed; there is nothing to fall back from",
                )
                .with("current_status", "dispensed"));
            }
            Status::Cancelled | Status::Expired => {
                return Err(ApiError::conflict(
                    "PRESCRIPTION_CLOSED",
                    format!(
                        "the prescription is {}; ask the clinic for a new one",
                        p.status.as_str()
                    ),
                )
                .with("current_status", p.status.as_str()));
            }
        }
        let id = Uuid::now_v7();
        if let Err(existing) = cases::insert(
            tx,
            &NewFallback {
                id,
                prescription_id: p.id,
                clinic_code: &p.issuer_code,
                pharmacy_code: caller.facility.as_str(),
                reason: &reason,
                preferred: r.preferred,
                note: note.as_deref(),
                offline: offline.as_ref(),
            },
        )
        .await?
        {
            return Err(ApiError::conflict(
                "FALLBACK_EXISTS",
                "this prescription already has an open fallback case",
            )
            .with("fallback_id", existing));
        }
        cases::append_event(
            tx,
            id,
            caller.actor(),
            "requested",
            None,
            FallbackStatus::Requested,
            serde_json::json!({"preferred": r.preferred.as_str(), "offline": offline}),
        )
        .await?;
        let clinic = facility(tx, &p.issuer_code).await?;
        let preferred = match r.preferred {
            FallbackMode::PaperReissue => "紙の処方箋の再発行",
            FallbackMode::Fax => "FAXでの送付（原本は後日郵送）",
        };
        outbox::enqueue(
            tx,
            &Mail {
                to: vec![clinic.email.clone()],
                subject: format!(
                    "【電子処方箋】代替手段の依頼{}：{}（引換番号 {}）",
                    if offline.is_some() {
                        "（障害中の依頼の登録）"
                    } else {
                        ""
                    },
                    pharmacy.name,
                    p.exchange_number
                ),
                body: format!(
                    "{} 御中\n\n{} から、電子処方箋を受け付けられないため代替手段の依頼がありました。\n\
                     電子処方箋を取り消し、紙の処方箋の交付またはFAXでの送付をお願いします。\n{}\n\
                     引換番号: {}\n交付年月日: {}\n処方ID: {}\n理由: {}\n希望: {}\n{}\
                     薬局: {}（{}）{}\n\n\
                     対応: POST /v1/fallbacks/{}/resolve {{\"mode\": \"paper_reissue\" | \"fax\"}}{}",
                    clinic.name,
                    pharmacy.name,
                    offline.as_ref().map(offline_paragraph).unwrap_or_default(),
                    p.exchange_number,
                    p.issued_on,
                    p.id,
                    reason,
                    preferred,
                    note.as_deref()
                        .map(|n| format!("備考: {n}\n"))
                        .unwrap_or_default(),
                    pharmacy.name,
                    pharmacy.code,
                    pharmacy
                        .phone
                        .as_deref()
                        .map(|t| format!(" 電話 {t}"))
                        .unwrap_or_default(),
                    id,
                    MAIL_FOOTER
                ),
                attachments: Vec::new(),
                kind: "fallback_requested",
                dedupe_key: Some(format!("fallback_requested:{id}")),
            },
        )
        .await?;
        reply_with(tx, id, StatusCode::CREATED).await
    })
    .await
}

/// The caller facility's cases (the clinic's or the pharmacy's).
#[utoipa::path(
    get, path = "/v1/fallbacks", tag = "fallbacks", params(ListQuery),
    responses((status = 200, body = FallbackList, description = "newest first"),
              (status = 422, body = Problem, description = "unknown status")),
    security(("bearer" = []))
)]
#[get("/v1/fallbacks")]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<ListQuery>,
) -> Result<web::Json<FallbackList>, ApiError> {
    caller.require(&[
        Role::Doctor,
        Role::ClinicClerk,
        Role::Pharmacist,
        Role::PharmacyClerk,
    ])?;
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(FallbackStatus::parse(s).ok_or_else(|| {
            ApiError::field(
                "status",
                "UNKNOWN_STATUS",
                "status is one of requested, withdrawn, paper_reissued, faxed, dispensed_from_fax, original_mailed, closed",
            )
        })?),
    };
    let client = state.pool.get().await.map_err(DbError::from)?;
    let mut fallbacks = Vec::new();
    for f in cases::list(
        &client,
        caller.facility.as_str(),
        caller.role.is_clinic(),
        status,
    )
    .await?
    {
        fallbacks.push(view(&client, f).await?);
    }
    Ok(web::Json(FallbackList { fallbacks }))
}

/// One case with its history, for its clinic or its pharmacy.
#[utoipa::path(
    get, path = "/v1/fallbacks/{id}", tag = "fallbacks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = FallbackView, description = "OK"),
              (status = 403, body = Problem, description = "wrong role (clinic and pharmacy staff only)"),
              (status = 404, body = Problem, description = "FALLBACK_NOT_FOUND (also another facility's)")),
    security(("bearer" = []))
)]
#[get("/v1/fallbacks/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<FallbackView>, ApiError> {
    // A wrong role is told so, as by the list, rather than that the case does not exist.
    caller.require(&[
        Role::Doctor,
        Role::ClinicClerk,
        Role::Pharmacist,
        Role::PharmacyClerk,
    ])?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let f = cases::get(&client, id).await?.ok_or_else(not_found)?;
    let mine = (caller.role.is_clinic() && f.clinic_code == caller.facility.as_str())
        || (caller.role.is_pharmacy() && f.pharmacy_code == caller.facility.as_str());
    if !mine {
        return Err(not_found());
    }
    Ok(web::Json(view(&client, f).await?))
}

/// The clinic resolves: the e-prescription is cancelled in the same transaction (or the
/// cancellation is left pending while a pharmacy holds it); `paper_reissue` registers the paper
/// prescription that replaces it, `fax` mails the paper prescription PDF to the pharmacy's FAX
/// gateway.
#[utoipa::path(
    post, path = "/v1/fallbacks/{id}/resolve", tag = "fallbacks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = ResolveRequest,
    responses((status = 200, body = FallbackView, description = "resolved"),
              (status = 404, body = Problem, description = "FALLBACK_NOT_FOUND"),
              (status = 409, body = Problem, description = "FALLBACK_STATE_CONFLICT (member current_status), ALREADY_DISPENSED, NO_FAX_ADDRESS")),
    security(("bearer" = []))
)]
#[post("/v1/fallbacks/{id}/resolve")]
pub async fn resolve(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    // Cancelling and reissuing are the prescriber's acts.
    caller.require(&[Role::Doctor])?;
    let body = body.parse::<ResolveRequest>()?;
    let mode = body.value.mode;
    let fonts = state.fonts.clone();
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let f = own_case(tx, &caller, &id).await?;
        if f.status.apply(Step::Resolve(mode)).is_none() {
            // Let take_step name the state.
            take_step(tx, &caller, &f, Step::Resolve(mode), &Change::default(), serde_json::Value::Null)
                .await?;
        }
        let p = prescriptions::get_for_update(tx, f.prescription_id)
            .await?
            .ok_or_else(ApiError::internal)?;
        let pharmacy = facility(tx, &f.pharmacy_code).await?;
        let why = format!("代替手段への切替（{}）: {}", mode.as_str(), f.reason);
        let cancellation = match p.status {
            Status::Dispensed => {
                return Err(ApiError::conflict(
                    "ALREADY_DISPENSED",
                    "the e-prescription was dispensed after all; the pharmacy should withdraw the request",
                )
                .with("current_status", "dispensed"));
            }
            Status::Cancelled => "applied",
            Status::Dispensing if p.cancellation_pending => "pending",
            Status::Dispensing => {
                prescriptions::set_cancellation_pending(tx, p.id, &why).await?;
                events::append(
                    tx,
                    p.id,
                    caller.actor(),
                    EventAction::CancellationRequested,
                    serde_json::json!({"reason": why, "holder": p.holder_code, "fallback_id": f.id}),
                )
                .await?;
                "pending"
            }
            Status::Registered | Status::Expired => {
                prescriptions::set_cancelled(tx, p.id, &why).await?;
                events::append(
                    tx,
                    p.id,
                    caller.actor(),
                    EventAction::Cancelled,
                    serde_json::json!({"reason": why, "fallback_id": f.id}),
                )
                .await?;
                "applied"
            }
        };
        let mut change = Change {
            mode: Some(mode),
            cancellation: Some(cancellation),
            ..Change::default()
        };
        let mut detail = serde_json::json!({"mode": mode.as_str(), "cancellation": cancellation});
        match mode {
            FallbackMode::PaperReissue => {
                let reissued = reissue_on_paper(tx, &caller, &p).await?;
                change.reissued_prescription_id = Some(reissued.id);
                detail["reissued_prescription_id"] = serde_json::json!(reissued.id);
            }
            FallbackMode::Fax => {
                let Some(fax) = pharmacy.fax_email.clone() else {
                    return Err(ApiError::conflict(
                        "NO_FAX_ADDRESS",
                        format!(
                            "{} has no FAX address registered; resolve with paper_reissue or ask the operator to add its fax_email",
                            pharmacy.name
                        ),
                    ));
                };
                let clinic = facility(tx, &p.issuer_code).await?;
                let document = p.document.clone();
                let fonts = fonts.clone();
                let institution = clinic.clone();
                let pdf = web::block(move || {
                    super::documents::paper_pdf_bytes(&institution, &document, None, &fonts)
                })
                .await
                .map_err(|_| ApiError::internal())?
                .map_err(|e| {
                    tracing::error!(error = %e, "paper prescription for FAX did not render");
                    ApiError::internal()
                })?;
                outbox::enqueue(
                    tx,
                    &Mail {
                        to: vec![fax],
                        subject: format!(
                            "【処方箋FAX】{} → {}（引換番号 {}）",
                            clinic.name, pharmacy.name, p.exchange_number
                        ),
                        body: format!(
                            "{} 御中\n\n{} より、電子処方箋に代えて処方箋をFAXで送付します（添付PDF）。\n\
                             処方箋の原本は後日郵送します。到着時にFAXとの照合をお願いします。\n\n\
                             引換番号: {}\n交付年月日: {}\n依頼番号: {}{}",
                            pharmacy.name,
                            clinic.name,
                            p.exchange_number,
                            p.issued_on,
                            f.id,
                            MAIL_FOOTER
                        ),
                        attachments: vec![Attachment {
                            filename: format!("shohousen-{}.pdf", p.exchange_number),
                            content_type: "application/pdf".into(),
                            bytes: pdf,
                        }],
                        kind: "fallback_fax",
                        dedupe_key: Some(format!("fallback_fax:{}", f.id)),
                    },
                )
                .await?;
            }
        }
        take_step(tx, &caller, &f, Step::Resolve(mode), &change, detail).await?;
        reply_with(tx, f.id, StatusCode::OK).await
    })
    .await
}

/// Registers the paper prescription that replaces `old` (same content, its own 引換番号), linked
/// by `replaces`: it can be received only once `old` is cancelled.
async fn reissue_on_paper(
    tx: &impl GenericClient,
    caller: &Caller,
    old: &Record,
) -> Result<Record, ApiError> {
    let mut document = old.document.clone();
    document.issue_type = crate::domain::lifecycle::IssueType::PaperWithExchangeNumber;
    let mut rng = rand::rng();
    for _ in 0..20 {
        let number = ExchangeNumber::random(&mut rng);
        let id = Uuid::now_v7();
        if let Some(record) = prescriptions::insert(
            tx,
            id,
            &caller.facility,
            &caller.staff,
            &document,
            &number,
            old.check,
        )
        .await?
        {
            prescriptions::set_replaces(tx, id, old.id).await?;
            events::append(
                tx,
                id,
                caller.actor(),
                EventAction::Registered,
                serde_json::json!({"issue_type": "paper_with_exchange_number", "replaces": old.id}),
            )
            .await?;
            return Ok(record);
        }
    }
    tracing::error!("no free 引換番号 after 20 draws");
    Err(ApiError::internal())
}

/// The pharmacy withdraws its request before the clinic resolved it.
#[utoipa::path(
    post, path = "/v1/fallbacks/{id}/withdraw", tag = "fallbacks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = WithdrawRequest,
    responses((status = 200, body = FallbackView, description = "withdrawn"),
              (status = 409, body = Problem, description = "FALLBACK_STATE_CONFLICT (member current_status)")),
    security(("bearer" = []))
)]
#[post("/v1/fallbacks/{id}/withdraw")]
pub async fn withdraw(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(PHARMACY_STAFF)?;
    let body = body.parse::<WithdrawRequest>()?;
    let mut e = FieldErrors::new();
    let why = text("reason", body.value.reason.as_deref(), false, 500, &mut e);
    if !e.is_empty() {
        return Err(ApiError::validation(e.into_vec()));
    }
    step_reply(
        StepRequest {
            state: &state,
            req: &req,
            caller: &caller,
            key: &key,
            id: &id,
            canonical: &body.canonical,
        },
        Step::Withdraw,
        Change::default(),
        serde_json::json!({"reason": why}),
        |_| Ok(()),
    )
    .await
}

/// The pharmacy dispensed from the FAX.
#[utoipa::path(
    post, path = "/v1/fallbacks/{id}/dispensed", tag = "fallbacks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = DispensedRequest,
    responses((status = 200, body = FallbackView, description = "recorded"),
              (status = 409, body = Problem, description = "FALLBACK_STATE_CONFLICT (member current_status)")),
    security(("bearer" = []))
)]
#[post("/v1/fallbacks/{id}/dispensed")]
pub async fn dispensed(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Pharmacist])?;
    let body = body.parse::<DispensedRequest>()?;
    let on = body.value.dispensed_on;
    if on > today() {
        return Err(ApiError::field(
            "dispensed_on",
            "IN_FUTURE",
            "dispensed_on must not be in the future",
        ));
    }
    let change = Change {
        dispensed_on: Some(on),
        ..Change::default()
    };
    step_reply(
        StepRequest {
            state: &state,
            req: &req,
            caller: &caller,
            key: &key,
            id: &id,
            canonical: &body.canonical,
        },
        Step::Dispensed,
        change,
        serde_json::json!({"dispensed_on": on}),
        |_| Ok(()),
    )
    .await
}

/// The clinic posted the paper original.
#[utoipa::path(
    post, path = "/v1/fallbacks/{id}/original-mailed", tag = "fallbacks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = MailedRequest,
    responses((status = 200, body = FallbackView, description = "recorded"),
              (status = 409, body = Problem, description = "FALLBACK_STATE_CONFLICT (member current_status)")),
    security(("bearer" = []))
)]
#[post("/v1/fallbacks/{id}/original-mailed")]
pub async fn original_mailed(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(CLINIC_STAFF)?;
    let body = body.parse::<MailedRequest>()?;
    let mut e = FieldErrors::new();
    let tracking = text(
        "tracking",
        body.value.tracking.as_deref(),
        false,
        100,
        &mut e,
    );
    let on = body.value.mailed_on;
    if on > today() {
        e.add(
            "mailed_on",
            "IN_FUTURE",
            "mailed_on must not be in the future",
        );
    }
    if !e.is_empty() {
        return Err(ApiError::validation(e.into_vec()));
    }
    let change = Change {
        original_mailed_on: Some(on),
        tracking: tracking.as_deref(),
        ..Change::default()
    };
    step_reply(
        StepRequest {
            state: &state,
            req: &req,
            caller: &caller,
            key: &key,
            id: &id,
            canonical: &body.canonical,
        },
        Step::OriginalMailed,
        change,
        serde_json::json!({"mailed_on": on, "tracking": tracking}),
        |_| Ok(()),
    )
    .await
}

/// The pharmacy received the original and compared it with the FAX (照合); a difference needs a
/// note. Closes the case.
#[utoipa::path(
    post, path = "/v1/fallbacks/{id}/original-received", tag = "fallbacks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = ReceivedRequest,
    responses((status = 200, body = FallbackView, description = "closed"),
              (status = 409, body = Problem, description = "FALLBACK_STATE_CONFLICT (member current_status)"),
              (status = 422, body = Problem, description = "VALIDATION_FAILED (note REQUIRED when matches is false)")),
    security(("bearer" = []))
)]
#[post("/v1/fallbacks/{id}/original-received")]
pub async fn original_received(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(PHARMACY_STAFF)?;
    let body = body.parse::<ReceivedRequest>()?;
    let r = &body.value;
    let mut e = FieldErrors::new();
    let note = text("note", r.note.as_deref(), !r.matches, 1000, &mut e);
    if r.received_on > today() {
        e.add(
            "received_on",
            "IN_FUTURE",
            "received_on must not be in the future",
        );
    }
    if !e.is_empty() {
        return Err(ApiError::validation(e.into_vec()));
    }
    let change = Change {
        original_received_on: Some(r.received_on),
        original_matches: Some(r.matches),
        original_note: note.as_deref(),
        ..Change::default()
    };
    step_reply(
        StepRequest {
            state: &state,
            req: &req,
            caller: &caller,
            key: &key,
            id: &id,
            canonical: &body.canonical,
        },
        Step::OriginalReceived,
        change,
        serde_json::json!({"received_on": r.received_on, "matches": r.matches, "note": note}),
        |f| match f.original_mailed_on {
            Some(mailed) if r.received_on < mailed => Err(ApiError::field(
                "received_on",
                "BEFORE_MAILED",
                format!("received_on is before the original was posted ({mailed})"),
            )),
            _ => Ok(()),
        },
    )
    .await
}

fn period(q: &PeriodQuery) -> Result<(Date, Date), ApiError> {
    let mut e = FieldErrors::new();
    let mut parse = |field: &str, raw: &Option<String>, default: Date| match raw {
        None => Some(default),
        Some(s) => match s.parse::<Date>() {
            Ok(d) => Some(d),
            Err(_) => {
                e.add(field, "FORMAT", format!("{field} is a date YYYY-MM-DD"));
                None
            }
        },
    };
    let to = parse("to", &q.to, today());
    let from = parse(
        "from",
        &q.from,
        today()
            .checked_sub(jiff::ToSpan::days(30))
            .unwrap_or(today()),
    );
    match (from, to) {
        (Some(f), Some(t)) if f <= t => Ok((f, t)),
        (Some(_), Some(_)) => Err(ApiError::field(
            "from",
            "AFTER_TO",
            "from must not be after to",
        )),
        _ => Err(ApiError::validation(e.into_vec())),
    }
}

async fn owed(
    c: &impl GenericClient,
    clinic: &str,
    from: Date,
    to: Date,
) -> Result<Vec<OwedToPharmacy>, DbError> {
    let mut out: Vec<OwedToPharmacy> = Vec::new();
    for f in cases::originals_owed(c, clinic, from, to).await? {
        let item = OwedOriginal {
            fallback_id: f.id,
            prescription_id: f.prescription_id,
            exchange_number: f.exchange_number.clone(),
            patient_name: f.patient_name.clone(),
            issued_on: f.issued_on,
            faxed_on: f.resolved_at.map(in_tokyo),
            status: f.status,
        };
        match out.last_mut() {
            Some(group) if group.pharmacy.code == f.pharmacy_code => group.originals.push(item),
            _ => out.push(OwedToPharmacy {
                pharmacy: facility_name(c, &f.pharmacy_code).await?,
                originals: vec![item],
            }),
        }
    }
    Ok(out)
}

/// The paper originals this clinic owes by post after FAXing, grouped by pharmacy.
#[utoipa::path(
    get, path = "/v1/fallbacks/originals", tag = "fallbacks", params(PeriodQuery),
    responses((status = 200, body = OwedOriginals, description = "grouped by pharmacy"),
              (status = 422, body = Problem, description = "bad period")),
    security(("bearer" = []))
)]
#[get("/v1/fallbacks/originals")]
pub async fn originals(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<PeriodQuery>,
) -> Result<web::Json<OwedOriginals>, ApiError> {
    caller.require(CLINIC_STAFF)?;
    let (from, to) = period(&query)?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    Ok(web::Json(OwedOriginals {
        from,
        to,
        pharmacies: owed(&client, caller.facility.as_str(), from, to).await?,
    }))
}

/// One cover letter (送付状) for the originals owed to one pharmacy: the prescriptions, patients
/// and FAX dates, to put in the envelope.
#[utoipa::path(
    get, path = "/v1/fallbacks/originals/cover-letter.pdf", tag = "fallbacks",
    // PeriodQuery's fields, with the pharmacy required here.
    params(
        ("from" = Option<String>, Query, format = Date, description = "First day (Japan), default 30 days ago; not after `to`."),
        ("to" = Option<String>, Query, format = Date, description = "Last day (Japan), default today."),
        ("pharmacy" = String, Query, description = "薬局コード (10 digits) of the pharmacy the letter is addressed to."),
    ),
    responses((status = 200, description = "PDF", content_type = "application/pdf", body = Vec<u8>),
              (status = 404, body = Problem, description = "NOTHING_OWED to that pharmacy in the period"),
              (status = 422, body = Problem, description = "pharmacy missing or malformed; bad period")),
    security(("bearer" = []))
)]
#[get("/v1/fallbacks/originals/cover-letter.pdf")]
pub async fn cover_letter(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(CLINIC_STAFF)?;
    let (from, to) = period(&query)?;
    let pharmacy = query
        .pharmacy
        .as_deref()
        .ok_or_else(|| ApiError::field("pharmacy", "REQUIRED", "pharmacy (薬局コード) is required"))
        .and_then(|p| {
            FacilityCode::parse(p).map_err(|e| ApiError::field("pharmacy", e.code, e.message))
        })?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let group = owed(&client, caller.facility.as_str(), from, to)
        .await?
        .into_iter()
        .find(|g| g.pharmacy.code == pharmacy.as_str())
        .ok_or_else(|| {
            ApiError::not_found(
                "NOTHING_OWED",
                "no originals are owed to this pharmacy in the period",
            )
        })?;
    let clinic = facility(&client, caller.facility.as_str()).await?;
    let to_pharmacy = facility(&client, pharmacy.as_str()).await?;
    drop(client);
    let fonts = state.fonts.clone();
    let rows: Vec<crate::documents::pdf::CoverLetterRow> = group
        .originals
        .iter()
        .map(|o| crate::documents::pdf::CoverLetterRow {
            exchange_number: o.exchange_number.clone(),
            patient_name: o.patient_name.clone(),
            issued_on: o.issued_on,
            faxed_on: o.faxed_on,
        })
        .collect();
    let today = today();
    let pdf = web::block(move || {
        crate::documents::pdf::render_cover_letter(&clinic, &to_pharmacy, today, &rows, &fonts)
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "cover letter did not render");
        ApiError::internal()
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/pdf")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"soufujo-{}.pdf\"", pharmacy.as_str()),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(pdf.pdf))
}

/// A cancellation left pending while a pharmacy held `p` was applied (on release, or on the last
/// refill use): the clinic is told by mail, and fallback cases waiting for it say so.
pub async fn pending_cancellation_applied(
    tx: &impl GenericClient,
    p: &Record,
) -> Result<(), ApiError> {
    let waiting = cases::cancellation_applied(tx, p.id).await?;
    let clinic = facility(tx, &p.issuer_code).await?;
    let holder = match &p.holder_code {
        Some(code) => facilities::name_of(tx, code).await?,
        None => None,
    };
    outbox::enqueue(
        tx,
        &Mail {
            to: vec![clinic.email.clone()],
            subject: format!(
                "【電子処方箋】取消が適用されました（引換番号 {}）",
                p.exchange_number
            ),
            body: format!(
                "{} 御中\n\n保留中だった電子処方箋の取消が適用されました。\n\n\
                 引換番号: {}\n交付年月日: {}\n処方ID: {}\n保持していた薬局: {}\n取消理由: {}{}{}",
                clinic.name,
                p.exchange_number,
                p.issued_on,
                p.id,
                holder.as_deref().unwrap_or("-"),
                p.cancellation_reason.as_deref().unwrap_or("-"),
                if waiting.is_empty() {
                    String::new()
                } else {
                    "\n代替手段（紙・FAX）の依頼に対する取消です。".to_string()
                },
                MAIL_FOOTER
            ),
            attachments: Vec::new(),
            kind: "cancellation_applied",
            dedupe_key: Some(format!("cancellation_applied:{}", p.id)),
        },
    )
    .await?;
    Ok(())
}

/// `p` was dispensed while its cancellation was pending: a paper reissue replacing it is
/// cancelled in the same transaction, so the two are never both dispensed.
pub async fn replaced_prescription_dispensed(
    tx: &impl GenericClient,
    caller: &Caller,
    p: &Record,
) -> Result<(), ApiError> {
    let why = "置き換え元の電子処方箋が調剤されたため取消";
    if let Some(reissue) = prescriptions::cancel_replacement_of(tx, p.id, why).await? {
        events::append(
            tx,
            reissue,
            caller.actor(),
            EventAction::Cancelled,
            serde_json::json!({"reason": why, "replaced": p.id}),
        )
        .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct HeldQuery {
    /// Held longer than this many hours; default `[fallbacks] held_reminder_hours`.
    #[param(minimum = 0, maximum = 8760)]
    pub older_than_hours: Option<i64>,
}

/// A prescription held `dispensing` without a result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldPrescription {
    pub prescription_id: Uuid,
    pub exchange_number: String,
    #[schema(value_type = String, format = DateTime)]
    pub held_since: Timestamp,
    pub held_hours: i64,
    /// The reminder mailed to the pharmacy for this holding, if any.
    pub reminder: Option<outbox::KeyedMail>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldAtPharmacy {
    pub pharmacy: FacilityName,
    pub prescriptions: Vec<HeldPrescription>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldList {
    pub older_than_hours: i64,
    pub pharmacies: Vec<HeldAtPharmacy>,
}

/// Prescriptions held `dispensing` past an age (the "調剤中 forever" list), per pharmacy, with
/// their reminder state: a pharmacy sees its own, the operator (admin) every pharmacy's.
#[utoipa::path(
    get, path = "/v1/held-prescriptions", tag = "fallbacks", params(HeldQuery),
    responses((status = 200, body = HeldList, description = "longest held first, per pharmacy"),
              (status = 403, body = Problem, description = "clinic roles"),
              (status = 422, body = Problem, description = "older_than_hours out of range")),
    security(("bearer" = []))
)]
#[get("/v1/held-prescriptions")]
pub async fn held(
    state: web::Data<AppState>,
    caller: Caller,
    query: super::extract::Query<HeldQuery>,
) -> Result<web::Json<HeldList>, ApiError> {
    caller.require(&[Role::Pharmacist, Role::PharmacyClerk, Role::Admin])?;
    let hours = query
        .older_than_hours
        .unwrap_or(state.settings.fallbacks.held_reminder_hours);
    if !(0..=24 * 365).contains(&hours) {
        return Err(ApiError::field(
            "older_than_hours",
            "OUT_OF_RANGE",
            "older_than_hours is between 0 and 8760",
        ));
    }
    let pharmacy = (caller.role != Role::Admin).then(|| caller.facility.as_str());
    let client = state.pool.get().await.map_err(DbError::from)?;
    let held = prescriptions::held_longer_than(&client, pharmacy, hours).await?;
    let keys: Vec<String> = held
        .iter()
        .filter_map(|p| {
            p.held_since
                .map(|s| crate::reminders::held_reminder_key(p.id, s))
        })
        .collect();
    let mut reminders = outbox::by_dedupe_keys(&client, &keys).await?;
    let now = Timestamp::now();
    let mut pharmacies: Vec<HeldAtPharmacy> = Vec::new();
    for p in held {
        let (Some(holder), Some(since)) = (p.holder_code.clone(), p.held_since) else {
            continue;
        };
        let item = HeldPrescription {
            prescription_id: p.id,
            exchange_number: p.exchange_number.clone(),
            held_since: since,
            held_hours: now.duration_since(since).as_hours(),
            reminder: reminders.remove(&crate::reminders::held_reminder_key(p.id, since)),
        };
        match pharmacies.last_mut() {
            Some(g) if g.pharmacy.code == holder => g.prescriptions.push(item),
            _ => pharmacies.push(HeldAtPharmacy {
                pharmacy: facility_name(&client, &holder).await?,
                prescriptions: vec![item],
            }),
        }
    }
    Ok(web::Json(HeldList {
        older_than_hours: hours,
        pharmacies,
    }))
}
