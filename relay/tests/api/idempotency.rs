//! `Idempotency-Key`: the same key and body replay the stored status and body, a different body is
//! refused, failures are not stored, and keys are scoped per facility.

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::*;

fn new_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn prescription_count(app: &TestApp) -> i64 {
    app.sql_one("SELECT count(*) FROM prescriptions").await
}

async fn event_count(app: &TestApp, id: &str, action: &str) -> i64 {
    app.sql_one(&format!(
        "SELECT count(*) FROM prescription_events WHERE prescription_id = '{id}' AND action = '{action}'"
    ))
    .await
}

async fn register_keyed(app: &TestApp, token: &str, key: &str, body: &Value) -> Resp {
    app.post_keyed("/v1/prescriptions", token, Some(key), body)
        .await
}

/// Registers the standard prescription without a key; returns (id, 引換番号).
async fn registered(app: &TestApp) -> (String, String) {
    let r = app.register(&prescription()).await;
    (
        r["prescription_id"].as_str().expect("id").to_string(),
        r["exchange_number"].as_str().expect("number").to_string(),
    )
}

fn receive_body(number: &str) -> Value {
    json!({"exchange_number": number, "insured": insured()})
}

fn replayed(r: &Resp) -> bool {
    r.header("Idempotent-Replayed") == Some("true")
}

#[track_caller]
fn assert_fresh(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "body: {}", r.text);
    assert!(
        !replayed(r),
        "a first request must not be marked as replayed"
    );
}

#[track_caller]
fn assert_replay_of(r: &Resp, first: &Resp) {
    assert_eq!(r.status, first.status, "body: {}", r.text);
    assert_eq!(r.body, first.body);
    assert!(
        replayed(r),
        "Idempotent-Replayed: {:?}",
        r.header("Idempotent-Replayed")
    );
}

#[tokio::test]
async fn a_repeated_registration_replays_the_stored_response() {
    let app = TestApp::spawn().await;
    let before = prescription_count(&app).await;
    let key = new_key();

    let first = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    assert_fresh(&first, 201);
    let second = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    assert_replay_of(&second, &first);
    assert_eq!(
        second.body["prescription_id"],
        first.body["prescription_id"]
    );
    assert_eq!(
        second.body["exchange_number"],
        first.body["exchange_number"]
    );
    assert_eq!(prescription_count(&app).await, before + 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let app = TestApp::spawn().await;
    let key = new_key();
    let first = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    assert_fresh(&first, 201);
    let count = prescription_count(&app).await;

    let mut other = prescription();
    other["remarks"] = "別の処方".into();
    register_keyed(&app, &app.doctor(), &key, &other)
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(prescription_count(&app).await, count);

    // The key still answers its own request.
    let again = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    assert_replay_of(&again, &first);
}

#[tokio::test]
async fn a_failed_request_does_not_use_up_its_key() {
    let app = TestApp::spawn().await;
    let before = prescription_count(&app).await;
    let key = new_key();

    let mut invalid = prescription();
    invalid["rps"] = json!([]);
    let r = register_keyed(&app, &app.doctor(), &key, &invalid).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert!(
        r.field_errors()
            .iter()
            .any(|(f, c)| f == "rps" && c == "REQUIRED"),
        "{:?}",
        r.field_errors()
    );
    assert_eq!(prescription_count(&app).await, before);

    let r = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    assert_fresh(&r, 201);
    assert_eq!(r.body["status"], "registered");
    assert_eq!(prescription_count(&app).await, before + 1);
}

#[tokio::test]
async fn keys_are_scoped_to_the_facility() {
    let app = TestApp::spawn().await;
    let before = prescription_count(&app).await;
    let key = new_key();

    let mine = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    assert_fresh(&mine, 201);
    // Another patient, so that the check inside registration has nothing to say.
    let mut other_patient = prescription();
    other_patient["patient"]["birth_date"] = json!("1975-07-07");
    other_patient["insurance"] = json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678",
                                        "relationship": "insured", "branch": "01", "copay_rate": 30});
    let theirs = register_keyed(&app, &app.doctor_2(), &key, &other_patient).await;
    assert_fresh(&theirs, 201);
    assert_ne!(theirs.body["prescription_id"], mine.body["prescription_id"]);
    assert_eq!(prescription_count(&app).await, before + 2);

    let id = theirs.body["prescription_id"].as_str().expect("id");
    let r = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor_2())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issuer"]["code"], CLINIC_2);

    // Each facility's key still answers its own request.
    assert_replay_of(
        &register_keyed(&app, &app.doctor(), &key, &prescription()).await,
        &mine,
    );
    assert_replay_of(
        &register_keyed(&app, &app.doctor_2(), &key, &other_patient).await,
        &theirs,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_register_once() {
    let app = TestApp::spawn().await;
    let before = prescription_count(&app).await;
    let key = new_key();
    let url = format!("{}/v1/prescriptions", app.address);

    let mut set = JoinSet::new();
    for _ in 0..10 {
        let request = app
            .http
            .post(url.as_str())
            .bearer_auth(app.doctor())
            .header("Idempotency-Key", &key)
            .json(&prescription());
        set.spawn(async move {
            let r = request.send().await.expect("request sent");
            let status = r.status().as_u16();
            let replayed = r.headers().get("Idempotent-Replayed").is_some();
            let body: Value = r.json().await.expect("JSON body");
            (status, replayed, body)
        });
    }
    let results = set.join_all().await;

    for (status, _, body) in &results {
        assert_eq!(*status, 201, "{body}");
        assert_eq!(body, &results[0].2);
    }
    let fresh = results.iter().filter(|(_, replayed, _)| !replayed).count();
    assert_eq!(
        fresh, 1,
        "exactly one request does the work, the rest replay it"
    );
    assert_eq!(prescription_count(&app).await, before + 1);
}

#[tokio::test]
async fn a_repeated_cancel_replays_the_stored_response() {
    let app = TestApp::spawn().await;
    let (id, _) = registered(&app).await;
    let path = format!("/v1/prescriptions/{id}/cancel");
    let body = json!({"reason": "処方内容の変更"});
    let key = new_key();

    let first = app
        .post_keyed(&path, &app.doctor(), Some(&key), &body)
        .await;
    assert_fresh(&first, 200);
    assert_eq!(first.body["status"], "cancelled");
    let second = app
        .post_keyed(&path, &app.doctor(), Some(&key), &body)
        .await;
    assert_replay_of(&second, &first);
    assert_eq!(event_count(&app, &id, "cancelled").await, 1);
}

#[tokio::test]
async fn a_repeated_receive_replays_the_stored_response() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;
    let key = new_key();

    let first = app
        .post_keyed(
            "/v1/prescriptions/receive",
            &app.pharmacist(),
            Some(&key),
            &receive_body(&number),
        )
        .await;
    assert_fresh(&first, 200);
    assert_eq!(first.body["status"], "dispensing");
    assert_eq!(first.body["prescription_id"], id.as_str());
    let second = app
        .post_keyed(
            "/v1/prescriptions/receive",
            &app.pharmacist(),
            Some(&key),
            &receive_body(&number),
        )
        .await;
    assert_replay_of(&second, &first);
    assert_eq!(event_count(&app, &id, "received").await, 1);

    // A replay answers the stored response and does not redo the receive.
    let r = app
        .post(
            &format!("/v1/prescriptions/{id}/release"),
            &app.pharmacist(),
            &json!({"reason": "誤受付"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let third = app
        .post_keyed(
            "/v1/prescriptions/receive",
            &app.pharmacist(),
            Some(&key),
            &receive_body(&number),
        )
        .await;
    assert_replay_of(&third, &first);
    let status: String = app
        .sql_one(&format!(
            "SELECT status FROM prescriptions WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(status, "registered");
    assert_eq!(event_count(&app, &id, "received").await, 1);
}

#[tokio::test]
async fn a_malformed_key_is_refused() {
    let app = TestApp::spawn().await;
    let before = prescription_count(&app).await;

    let key = "k".repeat(300);
    let r = register_keyed(&app, &app.doctor(), &key, &prescription()).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert!(
        r.field_errors().iter().any(|(f, _)| f == "Idempotency-Key"),
        "{:?}",
        r.field_errors()
    );
    assert_eq!(prescription_count(&app).await, before);
}
