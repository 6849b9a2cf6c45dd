//! The prescription lifecycle (domain.md §5): release (受付取消), dispensing, cancellation (at once or
//! pending while held), refills and expiry (the event log's append-only guard is in audit.rs).

use jiff::ToSpan;
use jiff::civil::Date;
use relay::auth::Role;
use serde_json::{Value, json};

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------------------

fn days_from_today(n: i64) -> Date {
    today().checked_add(n.days()).expect("date in range")
}

/// A valid dispensing result for the first RP of `prescription()`, dispensed today.
fn dispense_body() -> Value {
    json!({
        "dispensed_on": today().to_string(),
        "items": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠",
                   "dose": 1, "unit": "錠", "days": 14}]
    })
}

/// Registers `body` as doctor-1; returns (prescription id, 引換番号).
async fn register(app: &TestApp, body: &Value) -> (String, String) {
    let r = app.register(body).await;
    (
        r["prescription_id"].as_str().expect("id").to_string(),
        r["exchange_number"].as_str().expect("number").to_string(),
    )
}

/// A registered prescription received by pharmacist-1.
async fn registered_and_received(app: &TestApp) -> (String, String) {
    let (id, number) = register(app, &prescription()).await;
    receive_ok(app, &number).await;
    (id, number)
}

async fn receive_ok(app: &TestApp, number: &str) {
    let r = app.receive(&app.pharmacist(), number, &insured()).await;
    assert_eq!(r.status, 200, "receive failed: {}", r.text);
}

async fn release(app: &TestApp, id: &str, token: &str, reason: &str) -> Resp {
    app.post(
        &format!("/v1/prescriptions/{id}/release"),
        token,
        &json!({"reason": reason}),
    )
    .await
}

async fn cancel(app: &TestApp, id: &str, token: &str) -> Resp {
    app.post(
        &format!("/v1/prescriptions/{id}/cancel"),
        token,
        &json!({"reason": "処方内容の変更"}),
    )
    .await
}

async fn dispense(app: &TestApp, id: &str, token: &str, body: &Value) -> Resp {
    app.post(&format!("/v1/prescriptions/{id}/dispense"), token, body)
        .await
}

/// GET /v1/prescriptions/{id} as `token`, which must be allowed to see it.
async fn view(app: &TestApp, id: &str, token: &str) -> Value {
    let r = app.get(&format!("/v1/prescriptions/{id}"), token).await;
    assert_eq!(r.status, 200, "GET failed: {}", r.text);
    r.body
}

/// The event actions in log order, as the issuing doctor sees them.
async fn actions(app: &TestApp, id: &str) -> Vec<String> {
    let r = app
        .get(&format!("/v1/prescriptions/{id}/events"), &app.doctor())
        .await;
    assert_eq!(r.status, 200, "events failed: {}", r.text);
    r.body["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_string())
        .collect()
}

#[track_caller]
fn assert_status(r: &Resp, status: u16, state: &str) {
    assert_eq!(r.status, status, "body: {}", r.text);
    assert_eq!(r.body["status"], state, "body: {}", r.text);
}

/// A 409 problem. Its `status` member must be the HTTP status (api-essentials: every problem has
/// `status`); checked first so a failure shows the raw text, where a duplicate member would hide.
#[track_caller]
fn assert_conflict(r: &Resp, code: &str) {
    assert_eq!(
        r.body["status"], 409,
        "the problem's `status` must be 409; raw body: {}",
        r.text
    );
    r.assert_problem(409, code);
}

#[track_caller]
fn assert_names(r: &Resp, field: &str, code: &str) {
    r.assert_problem(422, "VALIDATION_FAILED");
    assert!(
        r.field_errors()
            .iter()
            .any(|(f, c)| f == field && c == code),
        "expected {field}/{code} in {:?}",
        r.field_errors()
    );
}

// ---------------------------------------------------------------------------------------------
// Release (受付取消)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn release_by_the_holder_frees_it_for_another_pharmacy() {
    let app = TestApp::spawn().await;
    let (id, number) = registered_and_received(&app).await;

    let r = release(&app, &id, &app.pharmacist(), "患者が別の薬局を希望").await;
    assert_status(&r, 200, "registered");
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "registered");
    assert!(
        v["holder"].is_null(),
        "holder after release: {}",
        v["holder"]
    );

    let r = app.receive(&app.pharmacist_2(), &number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = view(&app, &id, &app.pharmacist_2()).await;
    assert_eq!(v["status"], "dispensing");
    assert_eq!(v["holder"]["code"], PHARMACY_2);
    assert_eq!(
        actions(&app, &id).await,
        ["registered", "received", "released", "received"]
    );
}

#[tokio::test]
async fn release_by_a_pharmacy_that_does_not_hold_it_is_forbidden() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    release(&app, &id, &app.pharmacist_2(), "誤操作")
        .await
        .assert_problem(403, "FORBIDDEN");
    let v = view(&app, &id, &app.pharmacist()).await;
    assert_eq!(v["status"], "dispensing");
    assert_eq!(v["holder"]["code"], PHARMACY);
}

#[tokio::test]
async fn release_needs_a_pharmacist() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    let clerk = role_token(&app, PHARMACY, Role::PharmacyClerk);

    release(&app, &id, &clerk, "誤操作")
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(
        view(&app, &id, &app.pharmacist()).await["status"],
        "dispensing"
    );
}

#[tokio::test]
async fn release_needs_a_reason() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    for reason in ["", "   "] {
        let r = release(&app, &id, &app.pharmacist(), reason).await;
        assert_names(&r, "reason", "REQUIRED");
    }
    assert_eq!(
        view(&app, &id, &app.pharmacist()).await["status"],
        "dispensing"
    );
}

#[tokio::test]
async fn release_of_a_prescription_nobody_holds_is_forbidden() {
    let app = TestApp::spawn().await;
    let (id, _) = register(&app, &prescription()).await;

    // held_by_caller checks the holder before the state: with no holder the caller is not the
    // holding pharmacy, which the contract answers with 403 (valid token, wrong facility).
    release(&app, &id, &app.pharmacist(), "誤操作")
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(view(&app, &id, &app.doctor()).await["status"], "registered");
}

// ---------------------------------------------------------------------------------------------
// Dispensing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dispense_records_the_result() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    let r = dispense(&app, &id, &app.pharmacist(), &dispense_body()).await;
    assert_status(&r, 200, "dispensed");
    assert_eq!(r.body["prescription_id"], id.as_str());

    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "dispensed");
    assert_eq!(v["uses_dispensed"], 1);
    assert_eq!(v["has_important_note"], false);
    let d = v["dispensings"].as_array().expect("dispensings");
    assert_eq!(d.len(), 1, "{}", v["dispensings"]);
    assert_eq!(d[0]["use_number"], 1);
    assert_eq!(d[0]["pharmacy_code"], PHARMACY);
    assert_eq!(d[0]["pharmacist"], "pharmacist-1");
    assert_eq!(d[0]["dispensed_on"], today().to_string());
    assert_eq!(d[0]["items"][0]["code"], "1124001F1022");
    assert_eq!(d[0]["items"][0]["name"], "ユーロジン１ｍｇ錠");
    assert_eq!(d[0]["items"][0]["days"], 14);
    assert_eq!(
        actions(&app, &id).await,
        ["registered", "received", "dispensed"]
    );
}

#[tokio::test]
async fn dispense_validation_names_the_field() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    let mut future = dispense_body();
    future["dispensed_on"] = days_from_today(1).to_string().into();
    let mut no_items = dispense_body();
    no_items["items"] = json!([]);
    let mut unknown = dispense_body();
    unknown["items"][0]["code"] = "1124001F1099".into();
    let mut refill_date = dispense_body();
    refill_date["next_refill_date"] = days_from_today(20).to_string().into();

    for (body, field, code) in [
        (future, "dispensed_on", "IN_FUTURE"),
        (no_items, "items", "REQUIRED"),
        (unknown, "items[0].code", "UNKNOWN_DRUG_CODE"),
        (refill_date, "next_refill_date", "NOT_A_REFILL"),
    ] {
        let r = dispense(&app, &id, &app.pharmacist(), &body).await;
        assert_names(&r, field, code);
    }

    // Nothing was recorded: still held, no result.
    let v = view(&app, &id, &app.pharmacist()).await;
    assert_eq!(v["status"], "dispensing");
    assert_eq!(v["uses_dispensed"], 0);
    assert_eq!(v["dispensings"], json!([]));
}

#[tokio::test]
async fn dispense_by_a_pharmacy_that_does_not_hold_it_is_forbidden() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    dispense(&app, &id, &app.pharmacist_2(), &dispense_body())
        .await
        .assert_problem(403, "FORBIDDEN");
    let v = view(&app, &id, &app.pharmacist()).await;
    assert_eq!(v["status"], "dispensing");
    assert_eq!(v["dispensings"], json!([]));
}

#[tokio::test]
async fn dispense_needs_a_pharmacist() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    let clerk = role_token(&app, PHARMACY, Role::PharmacyClerk);

    dispense(&app, &id, &clerk, &dispense_body())
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(
        view(&app, &id, &app.pharmacist()).await["status"],
        "dispensing"
    );
}

#[tokio::test]
async fn dispensing_twice_is_a_conflict() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    assert_status(
        &dispense(&app, &id, &app.pharmacist(), &dispense_body()).await,
        200,
        "dispensed",
    );

    // The caller is the pharmacy that held and dispensed it, so this is not a permission problem
    // (403 is for the wrong role or facility) but a state conflict: 409 NOT_HELD naming the status.
    let r = dispense(&app, &id, &app.pharmacist(), &dispense_body()).await;
    assert_conflict(&r, "NOT_HELD");
    // Nor can a dispensed prescription be released.
    assert_conflict(
        &release(&app, &id, &app.pharmacist(), "誤操作").await,
        "NOT_HELD",
    );

    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "dispensed");
    assert_eq!(v["dispensings"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn an_important_note_is_flagged_to_the_issuer() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    assert_eq!(
        view(&app, &id, &app.doctor()).await["has_important_note"],
        false
    );

    let mut body = dispense_body();
    body["important_note"] = "ふらつきの訴えあり。減量をご検討ください。".into();
    assert_status(
        &dispense(&app, &id, &app.pharmacist(), &body).await,
        200,
        "dispensed",
    );

    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["has_important_note"], true);
    assert_eq!(
        v["dispensings"][0]["important_note"],
        "ふらつきの訴えあり。減量をご検討ください。"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_of_a_registered_prescription_applies_at_once_and_repeats_harmlessly() {
    let app = TestApp::spawn().await;
    let (id, _) = register(&app, &prescription()).await;

    let r = cancel(&app, &id, &app.doctor()).await;
    assert_status(&r, 200, "cancelled");
    assert_eq!(r.body["prescription_id"], id.as_str());
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["cancellation_reason"], "処方内容の変更");
    assert!(v["cancelled_at"].is_string());

    // A repeated cancel answers the current state, not an error.
    assert_status(&cancel(&app, &id, &app.doctor()).await, 200, "cancelled");
    assert_eq!(actions(&app, &id).await, ["registered", "cancelled"]);
}

#[tokio::test]
async fn cancel_by_another_clinic_is_forbidden() {
    let app = TestApp::spawn().await;
    let (id, _) = register(&app, &prescription()).await;

    cancel(&app, &id, &app.doctor_2())
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(view(&app, &id, &app.doctor()).await["status"], "registered");
}

#[tokio::test]
async fn cancel_needs_a_doctor() {
    let app = TestApp::spawn().await;
    let (id, _) = register(&app, &prescription()).await;
    let clerk = role_token(&app, CLINIC, Role::ClinicClerk);

    cancel(&app, &id, &clerk)
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(view(&app, &id, &app.doctor()).await["status"], "registered");
}

#[tokio::test]
async fn a_cancelled_prescription_cannot_be_received() {
    let app = TestApp::spawn().await;
    let (id, number) = register(&app, &prescription()).await;
    assert_status(&cancel(&app, &id, &app.doctor()).await, 200, "cancelled");

    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(410, "PRESCRIPTION_CANCELLED");
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "cancelled");
    assert!(v["holder"].is_null());
}

#[tokio::test]
async fn cancel_while_held_is_pending_until_the_holder_releases_it() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    let r = cancel(&app, &id, &app.doctor()).await;
    assert_status(&r, 202, "pending_cancellation");
    let v = view(&app, &id, &app.pharmacist()).await;
    assert_eq!(v["status"], "dispensing");
    assert_eq!(v["cancellation_pending"], true);
    assert_eq!(v["cancellation_reason"], "処方内容の変更");

    assert_status(
        &cancel(&app, &id, &app.doctor()).await,
        202,
        "pending_cancellation",
    );

    let r = release(&app, &id, &app.pharmacist(), "取消依頼のため").await;
    assert_status(&r, 200, "cancelled");
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["cancellation_pending"], false);
    assert!(v["holder"].is_null());
    assert_eq!(
        actions(&app, &id).await,
        [
            "registered",
            "received",
            "cancellation_requested",
            "released",
            "cancellation_applied"
        ]
    );
}

#[tokio::test]
async fn cancel_after_dispensing_is_refused() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    assert_status(
        &dispense(&app, &id, &app.pharmacist(), &dispense_body()).await,
        200,
        "dispensed",
    );

    assert_conflict(&cancel(&app, &id, &app.doctor()).await, "ALREADY_DISPENSED");
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "dispensed");
    assert!(v["cancelled_at"].is_null());
}

#[tokio::test]
async fn dispensing_while_a_cancellation_is_pending_rejects_the_cancellation() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    assert_status(
        &cancel(&app, &id, &app.doctor()).await,
        202,
        "pending_cancellation",
    );

    assert_status(
        &dispense(&app, &id, &app.pharmacist(), &dispense_body()).await,
        200,
        "dispensed",
    );
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "dispensed");
    assert_eq!(v["cancellation_pending"], false);
    assert_eq!(
        actions(&app, &id).await,
        [
            "registered",
            "received",
            "cancellation_requested",
            "dispensed",
            "cancellation_rejected"
        ]
    );
    assert_conflict(&cancel(&app, &id, &app.doctor()).await, "ALREADY_DISPENSED");
}

// ---------------------------------------------------------------------------------------------
// Refills and expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refill_prescription_is_received_again_in_its_window() {
    let app = TestApp::spawn().await;
    let mut body = prescription();
    body["refill_count"] = 2.into();
    let (id, number) = register(&app, &body).await;
    receive_ok(&app, &number).await;

    // First use: the next planned date is required while uses remain.
    let r = dispense(&app, &id, &app.pharmacist(), &dispense_body()).await;
    assert_names(&r, "next_refill_date", "REQUIRED");
    let planned = days_from_today(20);
    let mut first = dispense_body();
    first["next_refill_date"] = planned.to_string().into();
    assert_status(
        &dispense(&app, &id, &app.pharmacist(), &first).await,
        200,
        "registered",
    );
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "registered");
    assert_eq!(v["uses_dispensed"], 1);
    assert_eq!(v["next_refill_date"], planned.to_string());
    assert!(v["holder"].is_null());

    // Second use: not before 7 days ahead of the planned date.
    let r = app.receive(&app.pharmacist(), &number, &insured()).await;
    assert_conflict(&r, "REFILL_NOT_DUE");
    assert_eq!(r.body["opens_on"], days_from_today(13).to_string());

    app.sql(&format!(
        "UPDATE prescriptions SET next_refill_date = '{}' WHERE id = '{id}'",
        today()
    ))
    .await;
    receive_ok(&app, &number).await;
    assert_status(
        &dispense(&app, &id, &app.pharmacist(), &dispense_body()).await,
        200,
        "dispensed",
    );
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "dispensed");
    assert_eq!(v["uses_dispensed"], 2);
    let uses: Vec<&Value> = v["dispensings"]
        .as_array()
        .expect("dispensings")
        .iter()
        .map(|d| &d["use_number"])
        .collect();
    assert_eq!(uses, [&json!(1), &json!(2)]);
}

#[tokio::test]
async fn an_expired_prescription_cannot_be_received() {
    let app = TestApp::spawn().await;
    let (id, number) = register(&app, &prescription()).await;
    app.sql(&format!(
        "UPDATE prescriptions SET issued_on = '{}', valid_until = '{}' WHERE id = '{id}'",
        days_from_today(-10),
        days_from_today(-6)
    ))
    .await;

    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(410, "PRESCRIPTION_EXPIRED");
    let v = view(&app, &id, &app.doctor()).await;
    assert_eq!(v["status"], "expired");
    assert!(v["holder"].is_null());
    let stored: String = app
        .sql_one(&format!(
            "SELECT status FROM prescriptions WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(stored, "expired");
}

// ---------------------------------------------------------------------------------------------
// The event log
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn events_are_shown_to_the_issuer_and_the_holder() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;
    let path = format!("/v1/prescriptions/{id}/events");

    let r = app.get(&path, &app.doctor()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.body["events"].as_array().expect("events").clone();
    let expected = [
        ("registered", "doctor-1", CLINIC, "doctor"),
        ("received", "pharmacist-1", PHARMACY, "pharmacist"),
    ];
    assert_eq!(events.len(), expected.len(), "{}", r.body);
    let mut previous: Option<jiff::Timestamp> = None;
    for (e, (action, actor, facility, role)) in events.iter().zip(expected) {
        assert_eq!(e["action"], action, "{e}");
        assert_eq!(e["actor"], actor, "{e}");
        assert_eq!(e["facility_code"], facility, "{e}");
        assert_eq!(e["role"], role, "{e}");
        let at: jiff::Timestamp = e["at"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("`at` is not an RFC 3339 timestamp: {e}"));
        assert!(previous.is_none_or(|p| p <= at), "events out of order");
        previous = Some(at);
    }

    let r = app.get(&path, &app.pharmacist()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["events"], json!(events));
}

#[tokio::test]
async fn events_are_hidden_from_others_and_unknown_ids_are_not_found() {
    let app = TestApp::spawn().await;
    let (id, _) = registered_and_received(&app).await;

    app.get(
        &format!("/v1/prescriptions/{id}/events"),
        &app.pharmacist_2(),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
    app.get(&format!("/v1/prescriptions/{id}/events"), &app.doctor_2())
        .await
        .assert_problem(403, "FORBIDDEN");
    let unknown = uuid::Uuid::now_v7();
    app.get(
        &format!("/v1/prescriptions/{unknown}/events"),
        &app.doctor(),
    )
    .await
    .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
}
