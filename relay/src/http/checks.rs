//! `/v1/checks`: the duplicate/contraindication check against everything registered for the
//! patient, with the disclosure rules of domain.md §7 — without consent a hit names only the new
//! drug and the kind; consent on the card reader, or a recorded verbal consent (口頭同意, scoped to
//! the check and expiring), reveals the causing drugs but never the other institution or pharmacy.

use std::collections::{HashMap, HashSet};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Caller, IdempotencyKey, JsonBytes};
use super::prescriptions::{InsuredKey, identity_of, registered_facility, unknown_drug_codes};
use super::state::AppState;
use super::tx::{Reply, idempotent};
use crate::auth::Role;
use crate::config::ChecksSettings;
use crate::db::{self, DbError, GenericClient, checks, insured, master, prescriptions};
use crate::domain::checks::{
    self as engine, HistoryLine, Hit, HitKind, Ingredient, NewDrugRef, NewLine, Options, Pair,
    Revealable,
};
use crate::domain::dispensing::DispensedItem;
use crate::domain::errors::FieldErrors;
use crate::domain::identifiers::InsuranceIdentity;
use crate::domain::prescription::{CodeSystem, Rp, RpDraft, validate_rps};
use crate::domain::time::today;

/// Doctors check at prescribing, pharmacists at dispensing.
const CHECKERS: &[Role] = &[Role::Doctor, Role::Pharmacist];
/// How far back the history is read: longer than any supply the check can count.
const HISTORY_DAYS: i64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckContext {
    Prescribing,
    Dispensing,
}

impl CheckContext {
    /// The context a role checks in: doctors prescribe, pharmacists dispense.
    pub fn of(role: Role) -> Self {
        if role.is_pharmacy() {
            CheckContext::Dispensing
        } else {
            CheckContext::Prescribing
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            CheckContext::Prescribing => "prescribing",
            CheckContext::Dispensing => "dispensing",
        }
    }
}

/// Who the patient is: a qualification of the caller's facility (its card consent applies), or
/// the insurance identity and birth date.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientRef {
    #[serde(default)]
    pub qualification_id: Option<Uuid>,
    #[serde(default)]
    pub insured: Option<InsuredKey>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub birth_date: Option<Date>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub patient: PatientRef,
    pub context: CheckContext,
    pub rps: Vec<RpDraft>,
    /// Leave out this facility's own prescriptions and dispensings.
    #[serde(default)]
    pub exclude_own_facility: bool,
}

/// What may be shown of the drugs causing a hit: never the other side's institution or pharmacy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OtherDrugs {
    pub drugs: Vec<Revealable>,
    /// `card_consent` (chosen on the card reader) or `verbal_consent` (口頭同意, recorded).
    pub revealed_by: &'static str,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HitView {
    pub hit_id: String,
    pub kind: HitKind,
    pub new_drug: NewDrugRef,
    /// The new drug's ingredient and route concerned.
    pub ingredient: String,
    pub route: String,
    /// True when every cause is another line of the same new prescription.
    pub within_this_prescription: bool,
    /// The causing drugs, only with consent; `null` otherwise.
    pub other: Option<OtherDrugs>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckView {
    pub check_id: Uuid,
    pub context: String,
    /// `clear`, `hits`, or `unavailable` (the check could not run: never reported as clear).
    pub outcome: String,
    /// Consent from the card reader: every hit shows its causing drugs.
    pub details_visible: bool,
    pub hits: Vec<HitView>,
    pub unavailable_reason: Option<String>,
    pub verbal_consents: Vec<checks::Consent>,
    /// The doctor's decision to proceed (「重複等あり・医師許可」).
    #[serde(rename = "override")]
    pub override_: Option<checks::Override>,
    #[schema(value_type = String, format = DateTime)]
    pub checked_at: Timestamp,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerbalConsentRequest {
    /// The hits the patient agreed to reveal (hits of this check); all hits when absent.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub hit_ids: Option<Vec<String>>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// 投与理由: travels with the prescription to the pharmacy. Not blank; at most 500 characters.
    // Not blank as str::trim sees it: a character outside Unicode White_Space.
    #[schema(
        max_length = 500,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub reason: String,
}

/// The view `caller` may see of a stored check.
async fn view_of(
    c: &impl GenericClient,
    stored: checks::StoredCheck,
) -> Result<CheckView, DbError> {
    // Both reads in one round trip (pipelined on the connection).
    let (consents, override_) = tokio::try_join!(
        checks::consents(c, stored.id),
        checks::override_of(c, stored.id)
    )?;
    let now = Timestamp::now();
    let revealed: HashSet<&str> = consents
        .iter()
        .filter(|c| c.expires_at > now)
        .flat_map(|c| c.hit_ids.iter().map(String::as_str))
        .collect();
    let hits = stored
        .hits
        .iter()
        .map(|h| {
            let by = if stored.details_visible {
                Some("card_consent")
            } else if revealed.contains(h.hit_id.as_str()) {
                Some("verbal_consent")
            } else {
                None
            };
            HitView {
                hit_id: h.hit_id.clone(),
                kind: h.kind,
                new_drug: h.new_drug.clone(),
                ingredient: h.ingredient.clone(),
                route: h.route.clone(),
                within_this_prescription: h
                    .causes
                    .iter()
                    .all(|c| c.reveal.within_this_prescription),
                other: by.map(|revealed_by| OtherDrugs {
                    drugs: h.causes.iter().map(|c| c.reveal.clone()).collect(),
                    revealed_by,
                }),
            }
        })
        .collect();
    Ok(CheckView {
        check_id: stored.id,
        context: stored.context.clone(),
        outcome: stored.outcome.clone(),
        details_visible: stored.details_visible,
        hits,
        unavailable_reason: stored.unavailable_reason.clone(),
        verbal_consents: consents,
        override_,
        checked_at: stored.at,
    })
}

/// Ingredients (with route) of each drug code, resolved through the master.
async fn ingredients_of(
    c: &impl GenericClient,
    drugs: &[(CodeSystem, String)],
) -> Result<HashMap<(CodeSystem, String), Vec<Ingredient>>, DbError> {
    let mut out: HashMap<(CodeSystem, String), Vec<Ingredient>> = HashMap::new();
    let yj: Vec<&str> = drugs
        .iter()
        .filter(|(s, _)| *s == CodeSystem::Yj)
        .map(|(_, c)| c.as_str())
        .collect();
    for row in master::ingredients_of_yj_codes(c, &yj).await? {
        out.entry((CodeSystem::Yj, row.yj_code))
            .or_default()
            .push(Ingredient::new(row.ingredient, row.route.as_str()));
    }
    for (system, code) in drugs {
        if out.contains_key(&(*system, code.clone())) {
            continue;
        }
        let rows = match system {
            CodeSystem::Yj => continue,
            CodeSystem::Generic => master::ingredients_of_generic_code(c, code).await?,
            CodeSystem::Receipt => master::ingredients_of_receipt_codes(c, &[code]).await?,
        };
        out.insert(
            (*system, code.clone()),
            rows.into_iter()
                .map(|r| Ingredient::new(r.ingredient, r.route.as_str()))
                .collect(),
        );
    }
    Ok(out)
}

/// The patient's history as check lines: each dispensing's items from its dispensing date, or the
/// prescribed lines from the issue date while nothing was dispensed. `exclude` (the prescription
/// being dispensed) is left out: its own earlier uses are not a duplicate of itself.
async fn history_lines(
    c: &impl GenericClient,
    patient: &Patient,
    exclude: Option<Uuid>,
    today: Date,
) -> Result<Vec<HistoryLine>, DbError> {
    let since = today.checked_sub(HISTORY_DAYS.days()).unwrap_or(today);
    let records: Vec<_> = prescriptions::history(c, &patient.identities, patient.birth_date, since)
        .await?
        .into_iter()
        // A paper reissue and the e-prescription it replaces are one prescription.
        .filter(|r| exclude.is_none() || (Some(r.id) != exclude && r.replaces != exclude))
        .collect();
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let mut dispensed = prescriptions::dispensings_of(c, &ids).await?;
    struct Raw {
        source: Uuid,
        facility: String,
        system: CodeSystem,
        code: String,
        name: String,
        prescribed_on: Date,
        dispensed_on: Option<Date>,
        days: u32,
    }
    let mut raw = Vec::new();
    for r in records {
        let dispensings = dispensed.remove(&r.id).unwrap_or_default();
        if dispensings.is_empty() {
            for rp in &r.document.rps {
                for d in &rp.drugs {
                    raw.push(Raw {
                        source: r.id,
                        facility: r.issuer_code.clone(),
                        system: d.code_system,
                        code: d.code.clone(),
                        name: d.name.clone(),
                        prescribed_on: r.issued_on,
                        dispensed_on: None,
                        days: engine::days_counted(rp.dosage_form, rp.quantity),
                    });
                }
            }
        }
        for d in dispensings {
            for item in &d.dispensing.items {
                raw.push(Raw {
                    source: r.id,
                    facility: d.pharmacy_code.clone(),
                    system: item.code_system,
                    code: item.code.clone(),
                    name: item.name.clone(),
                    prescribed_on: r.issued_on,
                    dispensed_on: Some(d.dispensing.dispensed_on),
                    days: item.days.unwrap_or(engine::DEFAULT_WINDOW_DAYS),
                });
            }
        }
    }
    let codes: Vec<(CodeSystem, String)> = raw.iter().map(|r| (r.system, r.code.clone())).collect();
    let ingredients = ingredients_of(c, &codes).await?;
    Ok(raw
        .into_iter()
        .map(|r| HistoryLine {
            ingredients: ingredients
                .get(&(r.system, r.code.clone()))
                .cloned()
                .unwrap_or_default(),
            source: r.source,
            facility_code: r.facility,
            code: r.code,
            name: r.name,
            prescribed_on: r.prescribed_on,
            dispensed_on: r.dispensed_on,
            days: r.days,
            cancelled: false,
        })
        .collect())
}

/// The outcome of running the engine: hits, or why the check could not run.
pub struct Ran {
    pub hits: Vec<Hit>,
    pub unavailable: Option<String>,
}

impl Ran {
    fn outcome(&self) -> &'static str {
        match (&self.unavailable, self.hits.is_empty()) {
            (Some(_), _) => "unavailable",
            (None, true) => "clear",
            (None, false) => "hits",
        }
    }
}

/// What is checked: a prescription draft's RPs, or the items of a dispensing result.
#[derive(Clone, Copy)]
pub enum Draft<'a> {
    Rps(&'a [Rp]),
    Items(&'a [DispensedItem]),
}

impl Draft<'_> {
    fn codes(&self) -> Vec<(CodeSystem, String)> {
        match self {
            Draft::Rps(rps) => rps
                .iter()
                .flat_map(|rp| rp.drugs.iter().map(|d| (d.code_system, d.code.clone())))
                .collect(),
            Draft::Items(items) => items
                .iter()
                .map(|i| (i.code_system, i.code.clone()))
                .collect(),
        }
    }

    /// Where a line sits, as the error names it.
    fn position(&self, line: &NewLine) -> String {
        match self {
            Draft::Rps(_) => format!("rps[{}].drugs[{}]", line.rp, line.drug),
            Draft::Items(_) => format!("items[{}]", line.rp),
        }
    }
}

/// The patient a check is about, resolved once: every coverage of the registry's person (so the
/// history follows insurance changes), else the identity given.
#[derive(Debug, Clone)]
pub struct Patient {
    pub person_id: Option<Uuid>,
    pub identities: Vec<InsuranceIdentity>,
    /// The identity the check was asked with (or the qualification's), kept with the check.
    pub identity: Option<InsuranceIdentity>,
    pub birth_date: Date,
    /// Consent to view past medication chosen on the card reader, with sharing allowed.
    pub details_visible: bool,
    pub qualification_id: Option<Uuid>,
}

impl Patient {
    /// The patient of insurance identity and birth date, across insurance changes when the
    /// registry knows the person under that identity with that birth date.
    pub async fn by_identity(
        c: &impl GenericClient,
        identity: &InsuranceIdentity,
        birth_date: Date,
    ) -> Result<Self, DbError> {
        let person = insured::person_by_identity(c, identity)
            .await?
            .filter(|p| p.birth_date == birth_date);
        let mut identities: Vec<InsuranceIdentity> = person
            .as_ref()
            .map(|p| p.coverages.iter().map(|c| c.identity.clone()).collect())
            .unwrap_or_default();
        if !identities.contains(identity) {
            identities.push(identity.clone());
        }
        Ok(Self {
            person_id: person.map(|p| p.id),
            identities,
            identity: Some(identity.clone()),
            birth_date,
            details_visible: false,
            qualification_id: None,
        })
    }

    /// The consent recorded with the qualification `id` applies to this check.
    pub async fn with_qualification(
        mut self,
        c: &impl GenericClient,
        id: Option<Uuid>,
    ) -> Result<Self, DbError> {
        let Some(id) = id else { return Ok(self) };
        if let Some(q) = db::qualifications::get_confirmed(c, id).await? {
            let medication = q.detail.pointer("/consent/medication") == Some(&true.into());
            self.details_visible = q.info_sharing && medication;
            self.qualification_id = Some(id);
        }
        Ok(self)
    }

    /// Whether `check` was run for this patient.
    fn ran(&self, check: &checks::StoredCheck) -> bool {
        check.birth_date == self.birth_date
            && (check.person_id.is_some() && check.person_id == self.person_id
                || check
                    .identity
                    .as_ref()
                    .is_some_and(|i| self.identities.contains(i)))
    }
}

/// Runs the check of `draft` against the patient's history inside the caller's transaction.
pub async fn run_check(
    c: &impl GenericClient,
    draft: Draft<'_>,
    patient: &Patient,
    own_facility: &str,
    exclude_own_facility: bool,
    exclude_prescription: Option<Uuid>,
) -> Result<Ran, DbError> {
    let today = today();
    if !master::drug_master_loaded(c).await? {
        return Ok(Ran {
            hits: Vec::new(),
            unavailable: Some("the drug master is not loaded; check by other means".into()),
        });
    }
    let ingredients = ingredients_of(c, &draft.codes()).await?;
    let lookup = |system: CodeSystem, code: &str| {
        ingredients
            .get(&(system, code.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    let new: Vec<NewLine> = match draft {
        Draft::Rps(rps) => engine::rp_lines(rps, |d| lookup(d.code_system, &d.code)),
        Draft::Items(items) => engine::item_lines(items, |i| lookup(i.code_system, &i.code)),
    };
    if let Some(line) = new.iter().find(|l| l.ingredients.is_empty()) {
        return Ok(Ran {
            hits: Vec::new(),
            unavailable: Some(format!(
                "{} ({}) has no ingredient in the drug master; the check cannot run for it",
                draft.position(line),
                line.name
            )),
        });
    }
    let history = history_lines(c, patient, exclude_prescription, today).await?;
    let names: Vec<&str> = new
        .iter()
        .flat_map(|l| l.ingredients.iter().map(|i| i.name.as_str()))
        .collect();
    let pairs: Vec<Pair> = master::contraindications_involving(c, &names)
        .await?
        .iter()
        .map(Pair::from)
        .collect();
    let hits = engine::run(
        &new,
        &history,
        &pairs,
        &Options {
            today,
            own_facility: Some(own_facility.to_string()),
            exclude_own_facility,
        },
    );
    Ok(Ran {
        hits,
        unavailable: None,
    })
}

/// What a check is asked for.
pub struct CheckRun<'a> {
    pub context: CheckContext,
    pub patient: &'a Patient,
    pub draft: Draft<'a>,
    pub exclude_own_facility: bool,
    /// The prescription being dispensed (its own earlier uses are not history).
    pub exclude_prescription: Option<Uuid>,
}

/// Runs a check and records it (append-only), inside the caller's transaction.
pub async fn record_check(
    tx: &impl GenericClient,
    caller: &Caller,
    run: CheckRun<'_>,
) -> Result<checks::StoredCheck, ApiError> {
    let ran = run_check(
        tx,
        run.draft,
        run.patient,
        caller.facility.as_str(),
        run.exclude_own_facility,
        run.exclude_prescription,
    )
    .await?;
    // The row as stored comes back from the INSERT (RETURNING): no second read.
    checks::insert(
        tx,
        &checks::NewCheck {
            id: Uuid::now_v7(),
            actor: caller.actor(),
            context: run.context.as_str(),
            qualification_id: run.patient.qualification_id,
            person_id: run.patient.person_id,
            identity: run.patient.identity.as_ref(),
            birth_date: run.patient.birth_date,
            outcome: ran.outcome(),
            details_visible: run.patient.details_visible,
            exclude_own: run.exclude_own_facility,
            drug_codes: run.draft.codes().into_iter().map(|(_, c)| c).collect(),
            hits: &ran.hits,
            unavailable_reason: ran.unavailable.as_deref(),
        },
    )
    .await
    .map_err(ApiError::from)
}

/// What may let a registration or a dispensing through a check with hits, or one that could not
/// run.
pub struct Pass {
    /// The check the request names (`check_id`): a check of the caller's facility, in the same
    /// context, for the same patient, with an override younger than `override_valid_hours`.
    pub named: Option<Uuid>,
    /// An override that travels with the prescription (the prescriber's, at dispensing).
    pub carried: Option<Uuid>,
    pub acknowledge_unavailable: bool,
}

/// Runs and records the check inside a registration or a dispensing, then decides whether the
/// change may go ahead. `Ok(Ok(link))`: go ahead, recording `link`. `Ok(Err(problem))`: a 409 to
/// commit together with the check (the caller needs its id to reveal or override). `Err`: a bad
/// request that changes nothing.
pub async fn checked(
    tx: &impl GenericClient,
    caller: &Caller,
    settings: &ChecksSettings,
    run: CheckRun<'_>,
    pass: Pass,
) -> Result<Result<prescriptions::CheckLink, ApiError>, ApiError> {
    let patient = run.patient;
    let ran = record_check(tx, caller, run).await?;
    gate(tx, caller, settings, &ran, patient, pass).await
}

async fn gate(
    tx: &impl GenericClient,
    caller: &Caller,
    settings: &ChecksSettings,
    ran: &checks::StoredCheck,
    patient: &Patient,
    g: Pass,
) -> Result<Result<prescriptions::CheckLink, ApiError>, ApiError> {
    let mut link = prescriptions::CheckLink {
        check_id: Some(ran.id),
        override_check_id: None,
        unavailable_acknowledged: false,
    };
    // A named check must be one this caller may use, whatever the outcome now.
    let named = match g.named {
        None => None,
        Some(id) => {
            let unknown = || {
                ApiError::field(
                    "check_id",
                    "UNKNOWN_CHECK",
                    format!("{id} is not a check of this facility"),
                )
            };
            let named = checks::get(tx, id)
                .await?
                .filter(|k| k.facility_code == caller.facility.as_str())
                .ok_or_else(unknown)?;
            if named.context != ran.context {
                return Err(ApiError::field(
                    "check_id",
                    "WRONG_CONTEXT",
                    format!(
                        "check {id} was a {} check; this needs a {} check",
                        named.context, ran.context
                    ),
                ));
            }
            if !patient.ran(&named) {
                return Err(ApiError::field(
                    "check_id",
                    "OTHER_PATIENT",
                    format!("check {id} was run for another patient"),
                ));
            }
            Some(named)
        }
    };
    match ran.outcome.as_str() {
        "clear" => return Ok(Ok(link)),
        "unavailable" => {
            if g.acknowledge_unavailable {
                link.unavailable_acknowledged = true;
                return Ok(Ok(link));
            }
            let view = view_of(tx, ran.clone()).await?;
            return Ok(Err(ApiError::conflict(
                "CHECK_UNAVAILABLE",
                format!(
                    "the duplicate/contraindication check could not run ({}); check by other means and send acknowledge_check_unavailable: true",
                    ran.unavailable_reason.as_deref().unwrap_or("unknown reason")
                ),
            )
            .with("check", view)));
        }
        _ => {}
    }
    let now = Timestamp::now();
    let mut overridden: Vec<Hit> = Vec::new();
    let mut used = None;
    let mut why = Vec::new();
    if let Some(named) = &named {
        let fresh_until = named
            .at
            .checked_add(settings.override_valid_hours.max(1).hours())
            .unwrap_or(named.at);
        match checks::override_of(tx, named.id).await? {
            None => why.push(format!("check {} has no override", named.id)),
            Some(_) if fresh_until <= now => why.push(format!(
                "the override of check {} is older than {} hours; check again",
                named.id, settings.override_valid_hours
            )),
            Some(_) => {
                overridden.extend(named.hits.iter().cloned());
                used = Some(named.id);
            }
        }
    }
    if let Some(carried) = g.carried
        && let Some(k) = checks::get(tx, carried).await?
        && checks::override_of(tx, carried).await?.is_some()
    {
        overridden.extend(k.hits);
        used = used.or(Some(carried));
    }
    let by: Vec<&Hit> = overridden.iter().collect();
    let open: Vec<String> = engine::uncovered(&ran.hits, &by)
        .iter()
        .map(|h| h.hit_id.clone())
        .collect();
    if open.is_empty() {
        link.override_check_id = used;
        return Ok(Ok(link));
    }
    let who = if ran.context == "prescribing" {
        "the doctor"
    } else {
        "the pharmacist, after a 疑義照会,"
    };
    let mut detail = format!(
        "the check found {} unresolved hit(s) ({}): reveal them with the patient's consent, then {who} overrides check {} with a reason and sends its id as check_id",
        open.len(),
        open.join(", "),
        ran.id
    );
    if !why.is_empty() {
        detail = format!("{detail}; {}", why.join("; "));
    }
    let view = view_of(tx, ran.clone()).await?;
    Ok(Err(ApiError::conflict("UNRESOLVED_CHECK_HITS", detail)
        .with("check", view)
        .with("unresolved_hit_ids", open)))
}

/// The patient of a qualification of the caller's facility, with its card consent.
async fn patient_by_qualification(
    tx: &impl GenericClient,
    caller: &Caller,
    qid: Uuid,
) -> Result<Patient, ApiError> {
    let q = super::qualifications::usable(tx, caller, qid, false).await?;
    let birth_date = q
        .person
        .as_ref()
        .map(|p| p.birth_date)
        .or(q.stored.birth_date)
        .ok_or_else(|| {
            ApiError::field(
                "patient.qualification_id",
                "PATIENT_UNKNOWN",
                "this qualification does not identify the patient (不詳); give patient.insured and patient.birth_date",
            )
        })?;
    let mut identities: Vec<InsuranceIdentity> = q
        .person
        .as_ref()
        .map(|p| p.coverages.iter().map(|c| c.identity.clone()).collect())
        .unwrap_or_default();
    if let Some(i) = &q.stored.identity
        && !identities.contains(i)
    {
        identities.push(i.clone());
    }
    Ok(Patient {
        person_id: q.person.as_ref().map(|p| p.id),
        identities,
        identity: q.stored.identity.clone(),
        birth_date,
        details_visible: q.view.info_sharing && q.view.consent.medication,
        qualification_id: Some(qid),
    })
}

fn check_not_found() -> ApiError {
    ApiError::not_found("CHECK_NOT_FOUND", "this facility has no check with this id")
}

async fn own_check(
    c: &impl GenericClient,
    caller: &Caller,
    raw: &str,
) -> Result<checks::StoredCheck, ApiError> {
    let id = Uuid::parse_str(raw).map_err(|_| check_not_found())?;
    checks::get(c, id)
        .await?
        .filter(|k| k.facility_code == caller.facility.as_str())
        .ok_or_else(check_not_found)
}

/// Run a duplicate/contraindication check for a draft.
#[utoipa::path(
    post, path = "/v1/checks", tag = "checks",
    request_body = CheckRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 201, body = CheckView, description = "the check, masked as the consent allows"),
        (status = 403, body = Problem, description = "wrong role"),
        (status = 404, body = Problem, description = "QUALIFICATION_NOT_FOUND"),
        (status = 410, body = Problem, description = "QUALIFICATION_EXPIRED"),
        (status = 422, body = Problem, description = "VALIDATION_FAILED (every bad field listed)"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/checks")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(CHECKERS)?;
    let body = body.parse::<CheckRequest>()?;
    let request = &body.value;
    let mut e = FieldErrors::new();
    let rps = match validate_rps(&request.rps) {
        Ok(rps) => Some(rps),
        Err(errors) => {
            for fe in errors {
                e.add(fe.field, fe.code, fe.message);
            }
            None
        }
    };
    let p = &request.patient;
    let identity = match (&p.qualification_id, &p.insured) {
        (Some(_), Some(_)) | (None, None) => {
            e.add(
                "patient",
                "ONE_OF",
                "give either patient.qualification_id or patient.insured with patient.birth_date",
            );
            None
        }
        (None, Some(k)) => {
            if p.birth_date.is_none() {
                e.add(
                    "patient.birth_date",
                    "REQUIRED",
                    "patient.birth_date is required with patient.insured",
                );
            }
            identity_of(k, "patient.insured", &mut e)
        }
        (Some(_), None) => None,
    };
    if request.context != CheckContext::of(caller.role) {
        e.add(
            "context",
            "ROLE_CONTEXT",
            "doctors check at prescribing (context: prescribing), pharmacists at dispensing (context: dispensing)",
        );
    }
    let (Some(rps), true) = (rps, e.is_empty()) else {
        return Err(ApiError::validation(e.into_vec()));
    };
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        registered_facility(tx, &caller).await?;
        let unknown =
            unknown_drug_codes(tx, &crate::domain::prescription::rp_drug_refs(&rps)).await?;
        if !unknown.is_empty() {
            return Err(ApiError::validation(unknown));
        }
        // The patient: every coverage of the registry's person, or the identity given.
        let patient = match (p.qualification_id, &identity) {
            (Some(qid), _) => patient_by_qualification(tx, &caller, qid).await?,
            (None, Some(i)) => {
                Patient::by_identity(tx, i, p.birth_date.unwrap_or_else(today)).await?
            }
            (None, None) => return Err(ApiError::internal()),
        };
        let stored = record_check(
            tx,
            &caller,
            CheckRun {
                context: request.context,
                patient: &patient,
                draft: Draft::Rps(&rps),
                exclude_own_facility: request.exclude_own_facility,
                exclude_prescription: None,
            },
        )
        .await?;
        Reply::new(StatusCode::CREATED, view_of(tx, stored).await?)
    })
    .await
}

/// A check this facility ran, masked as the consents allow now.
#[utoipa::path(
    get, path = "/v1/checks/{id}", tag = "checks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = CheckView, description = "OK"), (status = 403, body = Problem, description = "wrong role"),
              (status = 404, body = Problem, description = "CHECK_NOT_FOUND (also another facility's)")),
    security(("bearer" = []))
)]
#[get("/v1/checks/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<web::Json<CheckView>, ApiError> {
    caller.require(CHECKERS)?;
    let client = state.pool.get().await.map_err(DbError::from)?;
    let stored = own_check(&client, &caller, &id).await?;
    Ok(web::Json(view_of(&client, stored).await?))
}

/// 口頭同意: the patient agreed orally; the causing drugs of these hits are revealed to this
/// facility for `[checks] reveal_minutes` (30), and who recorded it, when and for which hits is kept.
#[utoipa::path(
    post, path = "/v1/checks/{id}/verbal-consent", tag = "checks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = VerbalConsentRequest,
    responses((status = 200, body = CheckView, description = "the check with the consented hits revealed"),
              (status = 404, body = Problem, description = "CHECK_NOT_FOUND"),
              (status = 409, body = Problem, description = "NO_HITS"),
              (status = 422, body = Problem, description = "VALIDATION_FAILED (unknown hit id), INFO_SHARING_UNAVAILABLE")),
    security(("bearer" = []))
)]
#[post("/v1/checks/{id}/verbal-consent")]
pub async fn verbal_consent(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(CHECKERS)?;
    let body = body.parse::<VerbalConsentRequest>()?;
    let note = body
        .value
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    if note.as_deref().is_some_and(|n| n.chars().count() > 500) {
        return Err(ApiError::field(
            "note",
            "TOO_LONG",
            "note has at most 500 characters",
        ));
    }
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let stored = own_check(tx, &caller, &id).await?;
        if stored.hits.is_empty() {
            return Err(ApiError::conflict("NO_HITS", "this check has no hits to reveal"));
        }
        if let Some(qid) = stored.qualification_id
            && let Some(q) = db::qualifications::get_confirmed(tx, qid).await?
            && !q.info_sharing
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INFO_SHARING_UNAVAILABLE",
                "電子証明書の有効期限切れの猶予期間中は、薬剤情報を共有できません（口頭同意でも表示できません）。",
            ));
        }
        let known: Vec<String> = stored.hits.iter().map(|h| h.hit_id.clone()).collect();
        let hit_ids = match &body.value.hit_ids {
            None => known.clone(),
            Some(ids) => {
                let mut e = FieldErrors::new();
                for (i, h) in ids.iter().enumerate() {
                    if !known.contains(h) {
                        e.add(format!("hit_ids[{i}]"), "UNKNOWN_HIT", format!("{h} is not a hit of this check"));
                    }
                }
                if ids.is_empty() {
                    e.add("hit_ids", "REQUIRED", "name at least one hit, or leave hit_ids out for all");
                }
                if !e.is_empty() {
                    return Err(ApiError::validation(e.into_vec()));
                }
                ids.clone()
            }
        };
        let now = Timestamp::now();
        checks::add_consent(
            tx,
            stored.id,
            caller.actor(),
            &hit_ids,
            note.as_deref(),
            now.checked_add(state.settings.checks.reveal_minutes.max(1).minutes())
                .unwrap_or(now),
        )
        .await?;
        Reply::new(StatusCode::OK, view_of(tx, stored).await?)
    })
    .await
}

/// Proceed despite the hits, with a reason: the doctor at prescribing (「重複等あり・医師許可」;
/// the reason travels with the prescription), the pharmacist at dispensing after a 疑義照会.
#[utoipa::path(
    post, path = "/v1/checks/{id}/override", tag = "checks",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = OverrideRequest,
    responses((status = 200, body = CheckView, description = "overridden (the first override stands)"),
              (status = 404, body = Problem, description = "CHECK_NOT_FOUND"),
              (status = 409, body = Problem, description = "NO_HITS"),
              (status = 422, body = Problem, description = "VALIDATION_FAILED")),
    security(("bearer" = []))
)]
#[post("/v1/checks/{id}/override")]
pub async fn override_hits(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    key: IdempotencyKey,
    id: web::Path<String>,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(CHECKERS)?;
    let body = body.parse::<OverrideRequest>()?;
    let reason = body.value.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::field(
            "reason",
            "REQUIRED",
            "reason (投与理由) is required, at most 500 characters; the pharmacy will see it",
        ));
    }
    idempotent(&state, &req, &caller, &key, &body.canonical, async |tx| {
        let stored = own_check(tx, &caller, &id).await?;
        if stored.context != CheckContext::of(caller.role).as_str() {
            return Err(ApiError::forbidden(
                "the doctor overrides a prescribing check; a pharmacist records the outcome of a 疑義照会 on a dispensing check",
            ));
        }
        if stored.outcome == "clear" {
            return Err(ApiError::conflict(
                "NO_HITS",
                "this check found nothing to override",
            ));
        }
        checks::add_override(tx, stored.id, caller.actor(), &reason).await?;
        Reply::new(StatusCode::OK, view_of(tx, stored).await?)
    })
    .await
}
