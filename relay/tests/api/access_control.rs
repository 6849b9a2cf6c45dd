//! Who may call what (issue 10): every route of the router × every role × the caller's own
//! facility or another facility of the same kind, with the outcome written out in one table.
//!
//! "Own" is the facility the resource belongs to on the caller's side: the issuing clinic for
//! clinic roles, the holding (or requesting) pharmacy for pharmacy roles, and for `admin` the
//! facility the demo operator belongs to (the first clinic). "Other" is the second clinic or
//! pharmacy. Denials are what the relay does by design (ARCHITECTURE.md, the handlers, the
//! OpenAPI text): 403 `FORBIDDEN` for a wrong role or facility, 404 where the relay deliberately
//! hides that a case, check or qualification of another facility exists, and the documented
//! 409 where a pharmacy is told who holds a prescription. The table must list every route the
//! router registers (`relay/src/http/mod.rs`) and every path of `/openapi.json`, so a new
//! endpoint cannot slip in without its row.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use jiff::ToSpan;
use relay::auth::Role;
use serde_json::{Value, json};

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// Expected outcomes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Allowed: this status (2xx; 302 for `/docs`).
    Ok(u16),
    /// Allowed list (200): whether the fixture's resource is in it.
    Listed(bool),
    /// 403 `FORBIDDEN`: wrong role or facility.
    Forbidden,
    /// 404 with this code: the relay hides another facility's resource.
    Hidden(&'static str),
    /// Another documented refusal that is not a denial (e.g. 409 naming the holder).
    Refused(u16, &'static str),
    /// 401 `UNAUTHENTICATED`: no token.
    Unauthenticated,
}

use Want::{Forbidden as F, Unauthenticated as U};

const fn ok(status: u16) -> Want {
    Want::Ok(status)
}

const fn hid(code: &'static str) -> Want {
    Want::Hidden(code)
}

/// The fixture's resource is listed (`true`) or left out (`false`).
const fn list(seen: bool) -> Want {
    Want::Listed(seen)
}

impl Want {
    fn allows(self) -> bool {
        matches!(self, Want::Ok(_) | Want::Listed(_))
    }

    fn label(self) -> String {
        match self {
            Want::Ok(s) => s.to_string(),
            Want::Listed(true) => "200+".into(),
            Want::Listed(false) => "200-".into(),
            Want::Forbidden => "403".into(),
            Want::Hidden(_) => "404".into(),
            Want::Refused(s, _) => s.to_string(),
            Want::Unauthenticated => "401".into(),
        }
    }

    /// Whether a response matches; `key` is the id whose presence shows a list includes the
    /// fixture.
    fn matches(self, status: u16, body: &Value, text: &str, key: &str) -> bool {
        let code = body["code"].as_str().unwrap_or("");
        match self {
            Want::Ok(s) => status == s,
            Want::Listed(seen) => {
                assert!(!key.is_empty(), "a listed row needs a fixture key");
                status == 200 && text.contains(key) == seen
            }
            Want::Forbidden => status == 403 && code == "FORBIDDEN",
            Want::Hidden(c) => status == 404 && code == c,
            Want::Refused(s, c) => status == s && code == c,
            Want::Unauthenticated => status == 401 && code == "UNAUTHENTICATED",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// What exists before a row's request is sent. Every cell that is allowed to change something
/// gets a fixture of its own; the others of a row share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Nothing,
    /// A prescription issued by the first clinic.
    Registered,
    /// … received by the first pharmacy.
    Held,
    /// … pre-sent by the clinic to the first pharmacy.
    Presend,
    /// A check with hits run by the first clinic's doctor and one by the first pharmacy's
    /// pharmacist.
    Checks,
    /// Card qualifications (CARD-0001, the test patient) made by the first clinic and the first
    /// pharmacy, and a registered prescription of that patient.
    Card,
    /// A held prescription with a fallback case of the first pharmacy and the first clinic …
    FallbackRequested,
    /// … resolved by FAX (an original is owed to the pharmacy) …
    FallbackFaxed,
    /// … whose original the clinic has posted.
    FallbackMailed,
    /// A scheduled outage (starting tomorrow: nothing is suspended meanwhile).
    Outage,
    /// A declared disaster.
    Disaster,
    /// A dead mail in the outbox.
    DeadMail,
}

#[derive(Debug, Clone, Default)]
struct Fx {
    /// Unique per fixture: numbers of insured persons, facility codes, staff ids.
    n: u32,
    prescription: String,
    number: String,
    insured: Value,
    presend: String,
    clinic_check: String,
    pharmacy_check: String,
    clinic_qualification: String,
    pharmacy_qualification: String,
    fallback: String,
    outage: String,
    disaster: String,
    mail: String,
    /// The id that shows a list includes this fixture.
    key: String,
}

static NEXT: AtomicU32 = AtomicU32::new(1);

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The facility of a token: own or other, of the kind the role works at.
fn facility_of(role: Role, own: bool) -> &'static str {
    match (role.is_pharmacy(), own) {
        (true, true) => PHARMACY,
        (true, false) => PHARMACY_2,
        (false, true) => CLINIC,
        (false, false) => CLINIC_2,
    }
}

fn token(app: &TestApp, role: Role, own: bool) -> String {
    let side = if own { "own" } else { "other" };
    app.token(
        facility_of(role, own),
        role,
        &format!("{}-{side}", role.as_str()),
    )
}

#[track_caller]
fn id_of(r: &Resp, field: &str) -> String {
    assert!((200..300).contains(&r.status), "fixture step: {}", r.text);
    r.body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {}", r.text))
        .to_string()
}

fn card_body() -> Value {
    json!({"card_id": "CARD-0001", "auth": "face", "consent": {"medication": true}})
}

fn dispense_body() -> Value {
    json!({
        "dispensed_on": today().to_string(),
        "items": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠",
                   "dose": 1, "unit": "錠", "days": 14}]
    })
}

/// A prescription of a fresh insured person, issued by the first clinic's doctor.
async fn registered(app: &TestApp, fx: &mut Fx) {
    let number = format!("7{:07}", fx.n);
    let r = app
        .post(
            "/v1/prescriptions",
            &app.doctor(),
            &prescription_for(&number),
        )
        .await;
    fx.prescription = id_of(&r, "prescription_id");
    fx.number = id_of(&r, "exchange_number");
    fx.insured = insured_for(&number);
    fx.key = fx.prescription.clone();
}

async fn held(app: &TestApp, fx: &mut Fx) {
    registered(app, fx).await;
    let r = app
        .receive(&app.pharmacist(), &fx.number, &fx.insured)
        .await;
    assert_eq!(r.status, 200, "receive: {}", r.text);
}

async fn fallback(app: &TestApp, fx: &mut Fx, stage: Setup) {
    held(app, fx).await;
    let r = app
        .post(
            "/v1/fallbacks",
            &app.pharmacist(),
            &json!({"prescription_id": fx.prescription, "reason": "薬局システム障害", "preferred": "fax"}),
        )
        .await;
    fx.fallback = id_of(&r, "fallback_id");
    fx.key = fx.fallback.clone();
    if stage == Setup::FallbackRequested {
        return;
    }
    let r = app
        .post(
            &format!("/v1/fallbacks/{}/resolve", fx.fallback),
            &app.doctor(),
            &json!({"mode": "fax"}),
        )
        .await;
    assert_eq!(r.status, 200, "resolve: {}", r.text);
    if stage == Setup::FallbackFaxed {
        return;
    }
    let r = app
        .post(
            &format!("/v1/fallbacks/{}/original-mailed", fx.fallback),
            &app.doctor(),
            &json!({"mailed_on": today().to_string()}),
        )
        .await;
    assert_eq!(r.status, 200, "original-mailed: {}", r.text);
}

async fn setup(app: &TestApp, setup: Setup) -> Fx {
    let mut fx = Fx {
        n: next(),
        ..Fx::default()
    };
    match setup {
        Setup::Nothing => {}
        Setup::Registered => registered(app, &mut fx).await,
        Setup::Held => held(app, &mut fx).await,
        Setup::Presend => {
            registered(app, &mut fx).await;
            let r = app
                .post(
                    &format!("/v1/prescriptions/{}/presend", fx.prescription),
                    &app.doctor(),
                    &json!({"pharmacy": PHARMACY}),
                )
                .await;
            fx.presend = id_of(&r, "id");
            fx.key = fx.presend.clone();
        }
        Setup::Checks => {
            // The registered prescription is the history both checks find again.
            registered(app, &mut fx).await;
            let check = |context: &str| {
                json!({"patient": {"insured": fx.insured, "birth_date": "2011-01-01"},
                       "context": context, "rps": prescription()["rps"]})
            };
            let r = app
                .post("/v1/checks", &app.doctor(), &check("prescribing"))
                .await;
            assert_eq!(r.body["outcome"], "hits", "{}", r.text);
            fx.clinic_check = id_of(&r, "check_id");
            let r = app
                .post("/v1/checks", &app.pharmacist(), &check("dispensing"))
                .await;
            assert_eq!(r.body["outcome"], "hits", "{}", r.text);
            fx.pharmacy_check = id_of(&r, "check_id");
        }
        Setup::Card => {
            let r = app
                .post(
                    "/v1/qualifications/card",
                    &role_token(app, CLINIC, Role::ClinicClerk),
                    &card_body(),
                )
                .await;
            fx.clinic_qualification = id_of(&r, "qualification_id");
            let r = app
                .post(
                    "/v1/qualifications/card",
                    &role_token(app, PHARMACY, Role::PharmacyClerk),
                    &card_body(),
                )
                .await;
            fx.pharmacy_qualification = id_of(&r, "qualification_id");
            // The card patient is the same person every time: earlier fixtures are history.
            let reg = app
                .register_overriding(&app.doctor(), &prescription())
                .await;
            fx.prescription = reg["prescription_id"].as_str().unwrap().to_string();
            fx.key = fx.prescription.clone();
        }
        Setup::FallbackRequested | Setup::FallbackFaxed | Setup::FallbackMailed => {
            fallback(app, &mut fx, setup).await
        }
        Setup::Outage => {
            let starts = jiff::Timestamp::now().checked_add(24.hours()).unwrap();
            let r = app
                .post(
                    "/v1/admin/outages",
                    &app.admin(),
                    &json!({"scope": "issuing", "starts_at": starts.to_string(), "note": "計画停止（試験）"}),
                )
                .await;
            fx.outage = id_of(&r, "id");
            fx.key = fx.outage.clone();
        }
        Setup::Disaster => {
            let r = app
                .post(
                    "/v1/admin/disasters",
                    &app.admin(),
                    &json!({"name": format!("訓練{}", fx.n), "prefectures": ["15"],
                            "starts_on": today().to_string()}),
                )
                .await;
            fx.disaster = id_of(&r, "disaster_id");
            fx.key = fx.disaster.clone();
        }
        Setup::DeadMail => {
            // The fallback request mails the clinic; that mail is made to have failed for good.
            fallback(app, &mut fx, Setup::FallbackRequested).await;
            let id: uuid::Uuid = app
                .sql_one(&format!(
                    "SELECT id FROM outbox WHERE body LIKE '%{}%' ORDER BY id DESC LIMIT 1",
                    fx.fallback
                ))
                .await;
            app.sql(&format!(
                "UPDATE outbox SET status = 'dead', attempts = 8, last_error = '550 mailbox unavailable (test)' WHERE id = '{id}'"
            ))
            .await;
            fx.mail = id.to_string();
            fx.key = fx.mail.clone();
        }
    }
    fx
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

struct Row {
    method: &'static str,
    /// The router's pattern.
    path: &'static str,
    setup: Setup,
    /// Without a token.
    anon: Want,
    /// `[own, other]` for each role of `Role::ALL`: doctor, clinic_clerk, pharmacist,
    /// pharmacy_clerk, admin.
    want: [[Want; 2]; 5],
}

const fn row(
    method: &'static str,
    path: &'static str,
    setup: Setup,
    anon: Want,
    want: [[Want; 2]; 5],
) -> Row {
    Row {
        method,
        path,
        setup,
        anon,
        want,
    }
}

/// Anyone, with or without a token.
const PUBLIC: [[Want; 2]; 5] = [[ok(200), ok(200)]; 5];
/// Admin only, whichever facility the admin's token names.
const ADMIN_201: [[Want; 2]; 5] = [[F, F], [F, F], [F, F], [F, F], [ok(201), ok(201)]];
const ADMIN_200: [[Want; 2]; 5] = [[F, F], [F, F], [F, F], [F, F], [ok(200), ok(200)]];
const ADMIN_LISTS: [[Want; 2]; 5] = [[F, F], [F, F], [F, F], [F, F], [list(true), list(true)]];
/// Issuer (clinic roles) and holder (pharmacy roles) only; another facility is told 403.
const ISSUER_OR_HOLDER: [[Want; 2]; 5] = [
    [ok(200), F],
    [ok(200), F],
    [ok(200), F],
    [ok(200), F],
    [F, F],
];
/// Reception staff of any registered clinic or pharmacy.
const RECEPTION_201: [[Want; 2]; 5] = [
    [ok(201), ok(201)],
    [ok(201), ok(201)],
    [ok(201), ok(201)],
    [ok(201), ok(201)],
    [F, F],
];
const QNF: Want = hid("QUALIFICATION_NOT_FOUND");
const FNF: Want = hid("FALLBACK_NOT_FOUND");
const CNF: Want = hid("CHECK_NOT_FOUND");
const PNF: Want = hid("PRESCRIPTION_NOT_FOUND");
const HELD: Want = Want::Refused(409, "HELD_BY_ANOTHER_PHARMACY");
const T: Want = list(true);
const N: Want = list(false);
const OK200: Want = ok(200);
const OK201: Want = ok(201);

/// The rule of every route. Columns: doctor, clinic_clerk, pharmacist, pharmacy_clerk, admin,
/// each `[own, other]`. T / N: a list with / without the fixture's resource.
#[rustfmt::skip]
const TABLE: &[Row] = {
    use Setup::*;
    &[
    // Public.
    row("GET",  "/healthz",                               Nothing,           OK200,   PUBLIC),
    row("GET",  "/readyz",                                Nothing,           OK200,   PUBLIC),
    row("GET",  "/.well-known/jwks.json",                 Nothing,           OK200,   PUBLIC),
    row("GET",  "/consultation-room",                     Nothing,           OK200,   PUBLIC),
    row("GET",  "/openapi.json",                          Nothing,           OK200,   PUBLIC),
    row("GET",  "/docs",                                  Nothing,           ok(302), [[ok(302), ok(302)]; 5]),
    row("GET",  "/docs/{_:.*}",                           Nothing,           OK200,   PUBLIC),
    // Administration and operations.
    row("POST", "/v1/admin/facilities",                   Nothing,           U, ADMIN_201),
    row("POST", "/v1/admin/insured",                      Nothing,           U, ADMIN_201),
    row("POST", "/v1/admin/staff",                        Nothing,           U, ADMIN_200),
    row("POST", "/v1/admin/disasters",                    Nothing,           U, ADMIN_201),
    row("GET",  "/v1/admin/disasters",                    Disaster,          U, ADMIN_LISTS),
    row("POST", "/v1/admin/disasters/{id}/end",           Disaster,          U, ADMIN_200),
    row("POST", "/v1/admin/outages",                      Nothing,           U, ADMIN_201),
    row("GET",  "/v1/admin/outages",                      Outage,            U, ADMIN_LISTS),
    row("POST", "/v1/admin/outages/{id}/end",             Outage,            U, ADMIN_200),
    // What is suspended now: every token, so every screen can say so.
    row("GET",  "/v1/outages/active",                     Outage,            U, [[T, T]; 5]),
    row("GET",  "/v1/admin/outbox",                       DeadMail,          U, ADMIN_LISTS),
    row("POST", "/v1/admin/outbox/{id}/retry",            DeadMail,          U, ADMIN_200),
    // Checks: the doctor at prescribing, the pharmacist at dispensing; another facility's
    // check does not exist for the caller.
    //                                                                          doctor           clinic_clerk  pharmacist       pharmacy_clerk  admin
    row("POST", "/v1/checks",                             Nothing,           U, [[OK201, OK201], [F, F],       [OK201, OK201], [F, F],         [F, F]]),
    row("GET",  "/v1/checks/{id}",                        Checks,            U, [[OK200, CNF],   [F, F],       [OK200, CNF],   [F, F],         [F, F]]),
    row("POST", "/v1/checks/{id}/verbal-consent",         Checks,            U, [[OK200, CNF],   [F, F],       [OK200, CNF],   [F, F],         [F, F]]),
    row("POST", "/v1/checks/{id}/override",               Checks,            U, [[OK200, CNF],   [F, F],       [OK200, CNF],   [F, F],         [F, F]]),
    // Eligibility: reception staff; a qualification is only ever its facility's.
    row("POST", "/v1/qualifications/card",                Nothing,           U, RECEPTION_201),
    row("POST", "/v1/qualifications",                     Nothing,           U, RECEPTION_201),
    row("GET",  "/v1/qualifications/{id}",                Card,              U, [[OK200, QNF],   [OK200, QNF], [OK200, QNF],   [OK200, QNF],   [F, F]]),
    row("GET",  "/v1/qualifications/{id}/prescriptions",  Card,              U, [[F, F],         [F, F],       [T, QNF],       [T, QNF],       [F, F]]),
    // The patient's 閲覧記録, through the facility holding their card qualification.
    row("GET",  "/v1/qualifications/{id}/access-log",     Card,              U, [[OK200, QNF],   [OK200, QNF], [OK200, QNF],   [OK200, QNF],   [F, F]]),
    // Prescriptions: issued by any registered clinic; seen by the issuer and the holder.
    row("POST", "/v1/prescriptions",                      Nothing,           U, [[OK201, OK201], [F, F],       [F, F],         [F, F],         [F, F]]),
    row("GET",  "/v1/prescriptions",                      Registered,        U, [[T, N],         [T, N],       [F, F],         [F, F],         [F, F]]),
    row("GET",  "/v1/prescriptions/{id}",                 Held,              U, ISSUER_OR_HOLDER),
    row("POST", "/v1/prescriptions/{id}/cancel",          Registered,        U, [[OK200, F],     [F, F],       [F, F],         [F, F],         [F, F]]),
    // Any pharmacy with the number and identity may receive; one that does not hold it is
    // told who does.
    row("POST", "/v1/prescriptions/receive",              Held,              U, [[F, F],         [F, F],       [OK200, HELD],  [OK200, HELD],  [F, F]]),
    // The card path with the first pharmacy's qualification: useless to anyone else.
    row("POST", "/v1/prescriptions/{id}/receive",         Card,              U, [[F, F],         [F, F],       [OK200, QNF],   [OK200, QNF],   [F, F]]),
    row("POST", "/v1/prescriptions/{id}/release",         Held,              U, [[F, F],         [F, F],       [OK200, F],     [F, F],         [F, F]]),
    row("POST", "/v1/prescriptions/{id}/dispense",        Held,              U, [[F, F],         [F, F],       [OK200, F],     [F, F],         [F, F]]),
    row("GET",  "/v1/prescriptions/{id}/events",          Held,              U, ISSUER_OR_HOLDER),
    row("POST", "/v1/prescriptions/{id}/presend",         Registered,        U, [[OK201, F],     [OK201, F],   [F, F],         [F, F],         [F, F]]),
    row("GET",  "/v1/presends",                           Presend,           U, [[F, F],         [F, F],       [T, N],         [T, N],         [F, F]]),
    row("POST", "/v1/presends/{id}/prepared",             Presend,           U, [[F, F],         [F, F],       [OK200, F],     [OK200, F],     [F, F]]),
    row("GET",  "/v1/directory",                          Nothing,           U, [[OK200, OK200], [OK200, OK200], [OK200, OK200], [OK200, OK200], [F, F]]),
    row("GET",  "/v1/prescriptions/{id}/sj1",             Held,              U, ISSUER_OR_HOLDER),
    row("GET",  "/v1/prescriptions/{id}/copy.pdf",        Held,              U, ISSUER_OR_HOLDER),
    row("GET",  "/v1/prescriptions/{id}/paper.pdf",       Held,              U, ISSUER_OR_HOLDER),
    // Fallback to paper or FAX: a case id says nothing to anyone else (404).
    row("POST", "/v1/fallbacks",                          Held,              U, [[F, F],         [F, F],       [OK201, PNF],   [OK201, PNF],   [F, F]]),
    row("GET",  "/v1/fallbacks",                          FallbackRequested, U, [[T, N],         [T, N],       [T, N],         [T, N],         [F, F]]),
    row("GET",  "/v1/fallbacks/originals",                FallbackFaxed,     U, [[T, N],         [T, N],       [F, F],         [F, F],         [F, F]]),
    row("GET",  "/v1/fallbacks/originals/cover-letter.pdf", FallbackFaxed,   U, [[OK200, hid("NOTHING_OWED")], [OK200, hid("NOTHING_OWED")], [F, F], [F, F], [F, F]]),
    row("GET",  "/v1/fallbacks/{id}",                     FallbackRequested, U, [[OK200, FNF],   [OK200, FNF], [OK200, FNF],   [OK200, FNF],   [F, F]]),
    // Cancelling and reissuing are the prescriber's acts.
    row("POST", "/v1/fallbacks/{id}/resolve",             FallbackRequested, U, [[OK200, FNF],   [F, F],       [F, F],         [F, F],         [F, F]]),
    row("POST", "/v1/fallbacks/{id}/withdraw",            FallbackRequested, U, [[F, F],         [F, F],       [OK200, FNF],   [OK200, FNF],   [F, F]]),
    row("POST", "/v1/fallbacks/{id}/dispensed",           FallbackFaxed,     U, [[F, F],         [F, F],       [OK200, FNF],   [F, F],         [F, F]]),
    row("POST", "/v1/fallbacks/{id}/original-mailed",     FallbackFaxed,     U, [[OK200, FNF],   [OK200, FNF], [F, F],         [F, F],         [F, F]]),
    row("POST", "/v1/fallbacks/{id}/original-received",   FallbackMailed,    U, [[F, F],         [F, F],       [OK200, FNF],   [OK200, FNF],   [F, F]]),
    // A pharmacy sees what it holds; the operator sees every pharmacy's.
    row("GET",  "/v1/held-prescriptions",                 Held,              U, [[F, F],         [F, F],       [T, N],         [T, N],         [T, T]]),
    ]
};

fn check_of(fx: &Fx, role: Role) -> &str {
    if role.is_pharmacy() {
        &fx.pharmacy_check
    } else {
        &fx.clinic_check
    }
}

fn qualification_of(fx: &Fx, role: Role) -> &str {
    if role.is_pharmacy() {
        &fx.pharmacy_qualification
    } else {
        &fx.clinic_qualification
    }
}

/// A request of a row: the path with its ids and query, and the JSON body of a POST.
struct Req {
    path: String,
    body: Value,
}

/// The request a row sends for `role` with fixture `fx`: a valid one, so that only the caller
/// decides the outcome.
fn request(row: &Row, fx: &Fx, role: Role) -> Req {
    let p = &fx.prescription;
    let q = qualification_of(fx, role);
    let c = check_of(fx, role);
    let f = &fx.fallback;
    let today = today().to_string();
    let (path, body) = match (row.method, row.path) {
        ("GET", "/docs/{_:.*}") => ("/docs/".to_string(), json!({})),
        ("POST", "/v1/admin/facilities") => (
            row.path.into(),
            json!({"code": pharmacy_code(fx.n), "kind": "pharmacy", "name": format!("試験薬局{}", fx.n),
                   "email": format!("rx{}@test.invalid", fx.n)}),
        ),
        ("POST", "/v1/admin/insured") => (
            row.path.into(),
            json!({"insurer_number": "39131156", "number": format!("8{:07}", fx.n), "branch": "00",
                   "name": "試験　太郎", "sex": "male", "birth_date": "1950-01-01",
                   "valid_from": "2025-04-01"}),
        ),
        ("POST", "/v1/admin/staff") => (
            row.path.into(),
            json!({"facility_code": CLINIC, "staff_id": format!("clerk-{}", fx.n),
                   "role": "clinic_clerk", "name": "受付　花子"}),
        ),
        ("POST", "/v1/admin/disasters") => (
            row.path.into(),
            json!({"name": format!("訓練{}", fx.n), "prefectures": ["15"], "starts_on": today}),
        ),
        ("POST", "/v1/admin/disasters/{id}/end") => (
            format!("/v1/admin/disasters/{}/end", fx.disaster),
            json!({}),
        ),
        ("POST", "/v1/admin/outages") => {
            // Scheduled for later: nothing is suspended while the table runs.
            let starts = jiff::Timestamp::now().checked_add(48.hours()).unwrap();
            (
                row.path.into(),
                json!({"scope": "issuing", "starts_at": starts.to_string(), "note": "計画停止（試験）"}),
            )
        }
        ("POST", "/v1/admin/outages/{id}/end") => {
            (format!("/v1/admin/outages/{}/end", fx.outage), json!({}))
        }
        ("POST", "/v1/admin/outbox/{id}/retry") => {
            (format!("/v1/admin/outbox/{}/retry", fx.mail), json!({}))
        }
        ("POST", "/v1/checks") => {
            let context = if role.is_pharmacy() {
                "dispensing"
            } else {
                "prescribing"
            };
            (
                row.path.into(),
                json!({"patient": {"insured": insured_for(&format!("6{:07}", fx.n)), "birth_date": "2011-01-01"},
                       "context": context, "rps": prescription()["rps"]}),
            )
        }
        ("GET", "/v1/checks/{id}") => (format!("/v1/checks/{c}"), json!({})),
        ("POST", "/v1/checks/{id}/verbal-consent") => {
            (format!("/v1/checks/{c}/verbal-consent"), json!({}))
        }
        ("POST", "/v1/checks/{id}/override") => (
            format!("/v1/checks/{c}/override"),
            json!({"reason": "重複を確認済み（試験）"}),
        ),
        ("POST", "/v1/qualifications/card") => (row.path.into(), card_body()),
        ("POST", "/v1/qualifications") => (
            row.path.into(),
            json!({"method": "self_declaration",
                   "insured": {"name": "初診　花子", "birth_date": "1990-09-09", "sex": "female"},
                   "declaration": {"address": "東京都港区1-1-1", "contact": "090-0000-0000"}}),
        ),
        ("GET", "/v1/qualifications/{id}") => (format!("/v1/qualifications/{q}"), json!({})),
        ("GET", "/v1/qualifications/{id}/prescriptions") => {
            (format!("/v1/qualifications/{q}/prescriptions"), json!({}))
        }
        ("GET", "/v1/qualifications/{id}/access-log") => {
            (format!("/v1/qualifications/{q}/access-log"), json!({}))
        }
        ("POST", "/v1/prescriptions") => {
            (row.path.into(), prescription_for(&format!("5{:07}", fx.n)))
        }
        ("GET", "/v1/prescriptions") => {
            let number = fx.insured["number"].as_str().unwrap_or_default();
            (
                format!("/v1/prescriptions?insurer_number=31130842&number={number}"),
                json!({}),
            )
        }
        ("POST", "/v1/prescriptions/{id}/cancel") => (
            format!("/v1/prescriptions/{p}/cancel"),
            json!({"reason": "処方内容の変更"}),
        ),
        ("POST", "/v1/prescriptions/receive") => (
            row.path.into(),
            json!({"exchange_number": fx.number, "insured": fx.insured}),
        ),
        ("POST", "/v1/prescriptions/{id}/receive") => (
            format!("/v1/prescriptions/{p}/receive"),
            json!({"qualification_id": fx.pharmacy_qualification}),
        ),
        ("POST", "/v1/prescriptions/{id}/release") => (
            format!("/v1/prescriptions/{p}/release"),
            json!({"reason": "患者さんの希望"}),
        ),
        ("POST", "/v1/prescriptions/{id}/dispense") => {
            (format!("/v1/prescriptions/{p}/dispense"), dispense_body())
        }
        ("POST", "/v1/prescriptions/{id}/presend") => (
            format!("/v1/prescriptions/{p}/presend"),
            json!({"pharmacy": PHARMACY}),
        ),
        ("POST", "/v1/presends/{id}/prepared") => {
            (format!("/v1/presends/{}/prepared", fx.presend), json!({}))
        }
        ("POST", "/v1/fallbacks") => (
            row.path.into(),
            json!({"prescription_id": p, "reason": "薬局システム障害", "preferred": "paper_reissue"}),
        ),
        ("GET", "/v1/fallbacks/originals/cover-letter.pdf") => {
            (format!("{}?pharmacy={PHARMACY}", row.path), json!({}))
        }
        ("GET", "/v1/fallbacks/{id}") => (format!("/v1/fallbacks/{f}"), json!({})),
        ("POST", "/v1/fallbacks/{id}/resolve") => (
            format!("/v1/fallbacks/{f}/resolve"),
            json!({"mode": "paper_reissue"}),
        ),
        ("POST", "/v1/fallbacks/{id}/withdraw") => {
            (format!("/v1/fallbacks/{f}/withdraw"), json!({}))
        }
        ("POST", "/v1/fallbacks/{id}/dispensed") => (
            format!("/v1/fallbacks/{f}/dispensed"),
            json!({"dispensed_on": today}),
        ),
        ("POST", "/v1/fallbacks/{id}/original-mailed") => (
            format!("/v1/fallbacks/{f}/original-mailed"),
            json!({"mailed_on": today}),
        ),
        ("POST", "/v1/fallbacks/{id}/original-received") => (
            format!("/v1/fallbacks/{f}/original-received"),
            json!({"received_on": today, "matches": true}),
        ),
        ("GET", "/v1/held-prescriptions") => (
            "/v1/held-prescriptions?older_than_hours=0".into(),
            json!({}),
        ),
        // Every other id in a path is the prescription's.
        ("GET", path) => (path.replace("{id}", p), json!({})),
        (method, path) => panic!("no request for {method} {path}: add one"),
    };
    Req { path, body }
}

// ---------------------------------------------------------------------------------------------
// The routes the relay registers
// ---------------------------------------------------------------------------------------------

fn http_source(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/http")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first string literal in `text`.
fn first_literal(text: &str) -> &str {
    let start = text.find('"').expect("a string literal") + 1;
    let end = start + text[start..].find('"').expect("a closed string literal");
    &text[start..end]
}

/// The method and path of handler `function` in `relay/src/http/{module}.rs`, from its route
/// attribute (`#[get("…")]`).
fn handler_route(module: &str, function: &str) -> (String, String) {
    let source = http_source(&format!("{module}.rs"));
    let mut attribute = None;
    for line in source.lines() {
        let line = line.trim();
        for method in ["get", "post", "put", "delete", "patch"] {
            if line.starts_with(&format!("#[{method}(\"")) {
                attribute = Some((method.to_uppercase(), first_literal(line).to_string()));
            }
        }
        if line.starts_with(&format!("pub async fn {function}(")) {
            return attribute
                .unwrap_or_else(|| panic!("{module}::{function} has no route attribute"));
        }
    }
    panic!("no handler {module}::{function} in src/http/{module}.rs")
}

/// Every (method, path) `http::configure` registers, read from its source.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = http_source("mod.rs");
    let configure = source
        .split("pub fn configure")
        .nth(1)
        .expect("http::configure in src/http/mod.rs");
    let configure = &configure[..configure.find("\n}\n").unwrap_or(configure.len())];
    let mut routes = BTreeSet::new();
    for (at, _) in configure.match_indices(".service(") {
        let rest = &configure[at + ".service(".len()..];
        if rest.starts_with("SwaggerUi::new(") {
            // The UI's assets under one pattern, and the document it shows.
            routes.insert(("GET".into(), first_literal(rest).to_string()));
            let url = &rest[rest.find(".url(").expect("SwaggerUi .url(")..];
            routes.insert(("GET".into(), first_literal(url).to_string()));
            continue;
        }
        let target = &rest[..rest.find(')').expect("closing parenthesis")];
        let (module, function) = target.split_once("::").unwrap_or_else(|| {
            panic!("unrecognised service {target:?}: teach this test to read it")
        });
        routes.insert(handler_route(module.trim(), function.trim()));
    }
    for (at, _) in configure.match_indices(".route(") {
        let rest = &configure[at..];
        let path = first_literal(rest);
        let method = rest[rest.find("web::").expect("web::<method>()") + 5..]
            .split('(')
            .next()
            .unwrap()
            .to_uppercase();
        routes.insert((method, path.to_string()));
    }
    assert!(
        !configure.contains("web::resource(") && !configure.contains("web::scope("),
        "http::configure uses resources or scopes: teach this test to read them"
    );
    routes
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

async fn send(app: &TestApp, method: &str, req: &Req, token: Option<&str>) -> (u16, Value, String) {
    let url = format!("{}{}", app.address, req.path);
    let mut builder = match method {
        "GET" => app.http.get(url),
        "POST" => app.http.post(url).json(&req.body),
        other => panic!("no requests with {other} in this table"),
    };
    if let Some(t) = token {
        builder = builder.bearer_auth(t);
    }
    let r = builder.send().await.expect("request sent");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body, text)
}

/// One cell's outcome for the printed table: the label, with the expected one after `≠` when
/// they differ.
fn cell(want: Want, got: u16, matched: bool) -> String {
    if matched {
        want.label()
    } else {
        format!("{got}≠{}", want.label())
    }
}

#[tokio::test]
async fn every_route_by_role_and_own_or_other_facility() {
    let started = std::time::Instant::now();
    let app = TestApp::spawn_with(|s| s.jobs.enabled = false).await;
    let rows = TABLE;

    // The table covers the router and the OpenAPI document, no more and no less.
    let listed: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(listed.len(), rows.len(), "a route is listed twice");
    let routes = router_routes();
    let missing: Vec<_> = routes.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&routes).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "the access-control table must list exactly the router's routes;\n\
         in the router, not in the table (add a row with its rule): {missing:?}\n\
         in the table, not in the router: {stale:?}"
    );
    let doc = app.get_anon("/openapi.json").await.body;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let key = (method.to_uppercase(), path.clone());
            assert!(
                listed.contains(&key),
                "{key:?} is documented in /openapi.json but has no row"
            );
        }
    }

    let mut printed = Vec::new();
    let mut wrong = Vec::new();
    let mut requests = 0;
    for row in rows {
        let mut shared: Option<Fx> = None;
        let mut line = Vec::new();
        for (role_index, cells) in std::iter::once(None)
            .chain(Role::ALL.iter().copied().map(Some))
            .enumerate()
        {
            let choices: Vec<(Option<bool>, Want)> = match cells {
                None => vec![(None, row.anon)],
                Some(_) => vec![
                    (Some(true), row.want[role_index - 1][0]),
                    (Some(false), row.want[role_index - 1][1]),
                ],
            };
            let mut labels = Vec::new();
            for (own, want) in choices {
                // A change that is allowed gets its own fixture, so the next cell starts from
                // the same state.
                let fresh = row.method == "POST" && want.allows();
                let fx = if fresh {
                    setup(&app, row.setup).await
                } else {
                    if shared.is_none() {
                        shared = Some(setup(&app, row.setup).await);
                    }
                    shared.clone().expect("shared fixture")
                };
                let role = cells.unwrap_or(Role::Doctor);
                let req = request(row, &fx, role);
                let token = own.map(|own| token(&app, role, own));
                let (status, body, text) = send(&app, row.method, &req, token.as_deref()).await;
                requests += 1;
                let matched = want.matches(status, &body, &text, &fx.key);
                if !matched {
                    let who = match (cells, own) {
                        (Some(role), Some(own)) => {
                            format!("{} ({})", role.as_str(), if own { "own" } else { "other" })
                        }
                        _ => "no token".to_string(),
                    };
                    wrong.push(format!(
                        "{} {} as {who}: wanted {want:?}, got {status}: {}",
                        row.method,
                        req.path,
                        text.chars().take(300).collect::<String>()
                    ));
                }
                labels.push(cell(want, status, matched));
            }
            line.push(labels.join(" "));
        }
        printed.push(format!(
            "{:<5}{:<44}{:>5} |{}",
            row.method,
            row.path,
            line[0],
            line[1..]
                .iter()
                .map(|c| format!("{c:>13}"))
                .collect::<Vec<_>>()
                .join(" |")
        ));
    }

    println!(
        "{:<5}{:<44}{:>5} |{:>13} |{:>13} |{:>13} |{:>13} |{:>13}",
        "", "route", "anon", "doctor", "clinic_clerk", "pharmacist", "pharmacy_clk", "admin"
    );
    println!(
        "{:<49}{:>5} |{}",
        "",
        "",
        ["own other"; 5]
            .iter()
            .map(|c| format!("{c:>13}"))
            .collect::<Vec<_>>()
            .join(" |")
    );
    for line in &printed {
        println!("{line}");
    }
    println!(
        "200+ / 200-: the list includes / leaves out the fixture's resource; 404: hidden from \
         another facility; got≠wanted marks a difference. {} routes, {requests} requests in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        wrong.is_empty(),
        "{} cells differ from the table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
