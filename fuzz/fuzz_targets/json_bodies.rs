//! Every JSON request body of the HTTP API. The first byte picks the body (`A` + its index in
//! [`BODIES`], so seed files stay readable text); the rest is the body, parsed as
//! `JsonBytes::parse` does (`extract::parse_json`: syntax, NUL characters, types with the field
//! path) and then checked as the handler checks it before it touches the database. Never panics;
//! errors are fine.
//!
//! Where a handler checks inline, the check is repeated here; where it calls a function (the
//! drafts' `validate`, `identity_of`, `card_reading`, …), the same function is called.
#![no_main]

use std::fmt::Debug;

use jiff::ToSpan;
use jiff::civil::Date;
use libfuzzer_sys::fuzz_target;
use relay::auth::Role;
use relay::domain::FieldErrors;
use relay::domain::dispensing::{DispenseContext, DispenseDraft};
use relay::domain::eligibility::DisasterDraft;
use relay::domain::facility::{FacilityDraft, InsuredDraft};
use relay::domain::identifiers::{ExchangeNumber, FacilityCode};
use relay::domain::prescription::{PrescriptionDraft, rp_drug_refs, validate_rps};
use relay::http::admin::StaffDraft;
use relay::http::checks::{CheckContext, CheckRequest, OverrideRequest, VerbalConsentRequest};
use relay::http::extract::{JsonBody, parse_json};
use relay::http::fallbacks::{
    self, DispensedRequest, FallbackRequest, MailedRequest, ReceivedRequest, ResolveRequest,
    WithdrawRequest,
};
use relay::http::outages::OutageDraft;
use relay::http::prescriptions::{
    self, CardReceiveRequest, ReasonBody, ReceiveRequest, identity_of,
};
use relay::http::presends::PresendRequest;
use relay::http::qualifications::{self, CardRequest, FallbackBody};
use serde::de::DeserializeOwned;

/// A fixed "today", so that a crash reproduces on any day (the handlers use `time::today()`).
const TODAY: Date = Date::constant(2026, 4, 1);

type Refusal = Box<dyn Debug>;
type Outcome = Result<(), Refusal>;
/// Parses and checks one kind of body.
type Check = fn(&[u8]) -> Outcome;

/// (route, check) per body; the index is the selector.
const BODIES: &[(&str, Check)] = &[
    ("POST /v1/prescriptions", prescription_draft),
    ("POST /v1/prescriptions/{id}/cancel, /release", reason_body),
    ("POST /v1/prescriptions/receive", receive_request),
    (
        "POST /v1/prescriptions/{id}/receive-by-card",
        card_receive_request,
    ),
    ("POST /v1/prescriptions/{id}/dispense", dispense_draft),
    ("POST /v1/checks", check_request),
    (
        "POST /v1/checks/{id}/verbal-consent",
        verbal_consent_request,
    ),
    ("POST /v1/checks/{id}/override", override_request),
    ("POST /v1/fallbacks", fallback_request),
    ("POST /v1/fallbacks/{id}/resolve", resolve_request),
    ("POST /v1/fallbacks/{id}/withdraw", withdraw_request),
    ("POST /v1/fallbacks/{id}/dispensed", dispensed_request),
    ("POST /v1/fallbacks/{id}/original-mailed", mailed_request),
    (
        "POST /v1/fallbacks/{id}/original-received",
        received_request,
    ),
    ("POST /v1/admin/outages", outage_draft),
    ("POST /v1/prescriptions/{id}/presend", presend_request),
    ("POST /v1/qualifications/card", card_request),
    ("POST /v1/qualifications", qualification_fallback),
    ("POST /v1/admin/facilities", facility_draft),
    ("POST /v1/admin/insured", insured_draft),
    ("POST /v1/admin/staff", staff_draft),
    ("POST /v1/admin/disasters", disaster_draft),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let (route, check) = BODIES[usize::from(selector.wrapping_sub(b'A')) % BODIES.len()];
    let outcome = check(json);
    relay_fuzz::explain(|| format!("{route}: {outcome:?}"));
});

/// `JsonBytes::parse`: 400 MALFORMED_JSON or 422 naming the field, else the value.
fn parse<T: DeserializeOwned>(json: &[u8]) -> Result<JsonBody<T>, Refusal> {
    parse_json::<T>(json).map_err(|e| Box::new(e) as Refusal)
}

fn refused(e: impl Debug + 'static) -> Refusal {
    Box::new(e)
}

fn done(e: FieldErrors) -> Outcome {
    e.finish(|| ()).map_err(refused)
}

fn prescription_draft(json: &[u8]) -> Outcome {
    let draft = parse::<PrescriptionDraft>(json)?.value;
    match draft.validate(TODAY) {
        Ok(p) => {
            let _ = p.drug_refs();
            Ok(())
        }
        Err(errors) => {
            // Unknown codes of well-formed lines are reported with the other errors.
            let _ = draft.drug_refs();
            Err(refused(errors))
        }
    }
}

fn reason_body(json: &[u8]) -> Outcome {
    let body = parse::<ReasonBody>(json)?.value;
    prescriptions::reason(&body).map(drop).map_err(refused)
}

fn receive_request(json: &[u8]) -> Outcome {
    let request = parse::<ReceiveRequest>(json)?.value;
    let mut e = FieldErrors::new();
    let number = e.take(
        "exchange_number",
        ExchangeNumber::parse(&request.exchange_number),
    );
    let identity = identity_of(&request.insured, "insured", &mut e);
    if request.birth_date.is_some_and(|b| b > TODAY) {
        e.add(
            "birth_date",
            "IN_FUTURE",
            "birth_date must not be in the future",
        );
    }
    if let (Some(_), Some(identity)) = (number, identity) {
        let _ = identity.throttle_key();
    }
    done(e)
}

fn card_receive_request(json: &[u8]) -> Outcome {
    parse::<CardReceiveRequest>(json).map(drop)
}

fn dispense_draft(json: &[u8]) -> Outcome {
    let draft = parse::<DispenseDraft>(json)?.value;
    // The context comes from the held prescription: try both kinds of refill use.
    let mut last = Ok(());
    for refill_uses_remain in [false, true] {
        let ctx = DispenseContext {
            today: TODAY,
            issued_on: TODAY.saturating_sub(3.days()),
            refill_uses_remain,
        };
        last = match draft.validate(ctx) {
            Ok(dispensing) => {
                let _ = dispensing.drug_refs();
                Ok(())
            }
            Err(errors) => Err(refused(errors)),
        };
    }
    last
}

fn check_request(json: &[u8]) -> Outcome {
    let request = parse::<CheckRequest>(json)?.value;
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
    match (&p.qualification_id, &p.insured) {
        (Some(_), Some(_)) | (None, None) => e.add("patient", "ONE_OF", "one of"),
        (None, Some(k)) => {
            if p.birth_date.is_none() {
                e.add("patient.birth_date", "REQUIRED", "required");
            }
            let _ = identity_of(k, "patient.insured", &mut e);
        }
        (Some(_), None) => {}
    }
    if request.context != CheckContext::of(Role::Doctor)
        && request.context != CheckContext::of(Role::Pharmacist)
    {
        e.add("context", "ROLE_CONTEXT", "neither role's context");
    }
    if let Some(rps) = rps {
        let _ = rp_drug_refs(&rps);
    }
    done(e)
}

fn verbal_consent_request(json: &[u8]) -> Outcome {
    let body = parse::<VerbalConsentRequest>(json)?.value;
    let note = body
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > 500) {
        return Err(refused("note: TOO_LONG"));
    }
    Ok(())
}

fn override_request(json: &[u8]) -> Outcome {
    let body = parse::<OverrideRequest>(json)?.value;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(refused("reason: REQUIRED"));
    }
    Ok(())
}

fn fallback_request(json: &[u8]) -> Outcome {
    let r = parse::<FallbackRequest>(json)?.value;
    let mut e = FieldErrors::new();
    let _ = fallbacks::text("reason", Some(&r.reason), true, 500, &mut e);
    let _ = fallbacks::text("note", r.note.as_deref(), false, 1000, &mut e);
    let _ = r
        .offline
        .as_ref()
        .and_then(|o| fallbacks::offline_request(o, &mut e));
    match (&r.prescription_id, &r.exchange_number, &r.insured) {
        (Some(_), None, None) => {}
        (None, Some(n), Some(k)) => {
            let _ = e.take("exchange_number", ExchangeNumber::parse(n));
            let _ = identity_of(k, "insured", &mut e);
        }
        _ => e.add("prescription_id", "ONE_OF", "one of"),
    }
    done(e)
}

fn resolve_request(json: &[u8]) -> Outcome {
    parse::<ResolveRequest>(json).map(drop)
}

fn withdraw_request(json: &[u8]) -> Outcome {
    let body = parse::<WithdrawRequest>(json)?.value;
    let mut e = FieldErrors::new();
    let _ = fallbacks::text("reason", body.reason.as_deref(), false, 500, &mut e);
    done(e)
}

fn dispensed_request(json: &[u8]) -> Outcome {
    let body = parse::<DispensedRequest>(json)?.value;
    if body.dispensed_on > TODAY {
        return Err(refused("dispensed_on: IN_FUTURE"));
    }
    Ok(())
}

fn mailed_request(json: &[u8]) -> Outcome {
    let body = parse::<MailedRequest>(json)?.value;
    let mut e = FieldErrors::new();
    let _ = fallbacks::text("tracking", body.tracking.as_deref(), false, 100, &mut e);
    if body.mailed_on > TODAY {
        e.add("mailed_on", "IN_FUTURE", "in the future");
    }
    done(e)
}

fn received_request(json: &[u8]) -> Outcome {
    let r = parse::<ReceivedRequest>(json)?.value;
    let mut e = FieldErrors::new();
    let _ = fallbacks::text("note", r.note.as_deref(), !r.matches, 1000, &mut e);
    if r.received_on > TODAY {
        e.add("received_on", "IN_FUTURE", "in the future");
    }
    done(e)
}

fn outage_draft(json: &[u8]) -> Outcome {
    let draft = parse::<OutageDraft>(json)?.value;
    draft.validate().map(drop).map_err(refused)
}

fn presend_request(json: &[u8]) -> Outcome {
    let body = parse::<PresendRequest>(json)?.value;
    FacilityCode::parse(&body.pharmacy)
        .map(drop)
        .map_err(refused)
}

fn card_request(json: &[u8]) -> Outcome {
    let body = parse::<CardRequest>(json)?.value;
    qualifications::card_reading(&body)
        .map(drop)
        .map_err(refused)
}

fn qualification_fallback(json: &[u8]) -> Outcome {
    let body = parse::<FallbackBody>(json)?.value;
    qualifications::fallback_request(&body)
        .map(drop)
        .map_err(refused)
}

fn facility_draft(json: &[u8]) -> Outcome {
    let draft = parse::<FacilityDraft>(json)?.value;
    draft.validate().map(drop).map_err(refused)
}

fn insured_draft(json: &[u8]) -> Outcome {
    let draft = parse::<InsuredDraft>(json)?.value;
    draft.validate(TODAY).map(drop).map_err(refused)
}

fn staff_draft(json: &[u8]) -> Outcome {
    let d = parse::<StaffDraft>(json)?.value;
    let mut e = FieldErrors::new();
    let _ = e.take("facility_code", FacilityCode::parse(&d.facility_code));
    let staff_id = d.staff_id.trim();
    if staff_id.is_empty()
        || staff_id.chars().count() > 64
        || staff_id.chars().any(char::is_control)
    {
        e.add("staff_id", "FORMAT", "1–64 characters");
    }
    let name = d.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        e.add("name", "REQUIRED", "at most 100 characters");
    }
    done(e)
}

fn disaster_draft(json: &[u8]) -> Outcome {
    let draft = parse::<DisasterDraft>(json)?.value;
    draft.validate().map(drop).map_err(refused)
}
