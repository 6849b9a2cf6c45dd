//! Least privilege in the database: `relay migrate` as the owner grants `database.serving_role`
//! what serving needs; `relay serve` connected as that role does a whole day's work; and that role
//! cannot change history — no UPDATE/DELETE/TRUNCATE of the audit tables, no DELETE anywhere, no
//! ALTER/DROP, no switching the append-only triggers off.

use relay_e2e::*;
use serde_json::{Value, json};

async fn call(
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = http_client()
        .build()
        .expect("client")
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The URL of `url` with another user and password.
fn as_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_serving_role_does_the_work_and_cannot_rewrite_history() {
    let relay = Relay::new("least_privilege");
    relay.migrate_and_seed();
    let owner = relay.connect().await;
    let role = format!("relay_app_{}", std::process::id());
    owner
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'app-pw'"
        ))
        .await
        .expect("create role");

    // Bad settings are named and grant nothing.
    for (value, says) in [
        ("Relay-App", "database.serving_role"),
        ("no_such_role_here", "does not exist"),
        ("postgres", "superuser"),
    ] {
        let out = relay
            .command(&["migrate"])
            .env("RELAY_DATABASE__SERVING_ROLE", value)
            .output()
            .expect("migrate");
        assert!(!out.status.success(), "{value}");
        assert!(stderr(&out).contains(says), "{value}: {}", stderr(&out));
    }
    // A table nobody classified stops the grant with its name.
    owner
        .batch_execute("CREATE TABLE stray_notes (x int)")
        .await
        .unwrap();
    let out = relay
        .command(&["migrate"])
        .env("RELAY_DATABASE__SERVING_ROLE", &role)
        .output()
        .expect("migrate");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("stray_notes"), "{}", stderr(&out));
    owner.batch_execute("DROP TABLE stray_notes").await.unwrap();
    let out = relay
        .command(&["migrate"])
        .env("RELAY_DATABASE__SERVING_ROLE", &role)
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", stderr(&out));

    // The relay serves as that role, without migrating.
    let app_url = as_user(&relay.database_url, &role, "app-pw");
    let _server = relay.serve_with(&[
        ("RELAY_DATABASE_URL", &app_url),
        ("RELAY_DATABASE__MIGRATE_ON_START", "false"),
    ]);
    let base = relay.base_url();
    let doctor = relay.token("9918000010", "doctor", "doctor-1");
    let pharmacist = relay.token("9948000014", "pharmacist", "pharmacist-1");
    let admin = relay.token("9918000010", "admin", "ops-1");
    let today = relay::domain::time::today().to_string();
    use reqwest::Method;
    let body = json!({
        "issue_type": "electronic",
        "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": "1975-07-07"},
        "insurance": {"insurer_number": "01130012", "symbol": "1234", "number": "5678", "relationship": "insured", "branch": "01", "copay_rate": 30},
        "issued_on": today,
        "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日3回毎食後", "times_per_day": 3},
                 "drugs": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 0.4, "unit": "g"}]}]
    });
    let reg = ok_post(&base, "/v1/prescriptions", &doctor, body.clone()).await;
    let id = reg["prescription_id"].as_str().unwrap().to_string();
    // A second one, cancelled by the clinic.
    let mut other = body.clone();
    other["rps"][0]["drugs"][0] = json!({"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 1, "unit": "錠"});
    let second = ok_post(&base, "/v1/prescriptions", &doctor, other).await;
    let second_id = second["prescription_id"].as_str().unwrap();
    ok_post(
        &base,
        &format!("/v1/prescriptions/{second_id}/cancel"),
        &doctor,
        json!({"reason": "処方変更"}),
    )
    .await;
    // The card path, the access log, receive, a check with consent, dispense.
    let q = ok_post(
        &base,
        "/v1/qualifications/card",
        &pharmacist,
        json!({"card_id": "CARD-0002", "auth": "face", "consent": {"medication": true}}),
    )
    .await;
    let qid = q["qualification_id"].as_str().unwrap().to_string();
    for path in [
        format!("/v1/qualifications/{qid}/prescriptions"),
        format!("/v1/qualifications/{qid}/access-log"),
    ] {
        let (status, v) = call(Method::GET, format!("{base}{path}"), &pharmacist, None).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    ok_post(
        &base,
        &format!("/v1/prescriptions/{id}/receive"),
        &pharmacist,
        json!({"qualification_id": qid}),
    )
    .await;
    let check = ok_post(&base,
        "/v1/checks",
        &pharmacist,
        json!({"patient": {"qualification_id": qid}, "context": "dispensing",
               "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回", "times_per_day": 1},
                        "drugs": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 0.4, "unit": "g"}]}]}),
    )
    .await;
    let check_id = check["check_id"].as_str().unwrap();
    ok_post(
        &base,
        &format!("/v1/checks/{check_id}/verbal-consent"),
        &pharmacist,
        json!({"note": "口頭同意"}),
    )
    .await;
    ok_post(
        &base,
        &format!("/v1/prescriptions/{id}/dispense"),
        &pharmacist,
        json!({"dispensed_on": today, "items": [{"code_system": "yj", "code": "2325003B2029",
               "name": "ガスター散２％", "dose": 0.4, "unit": "g", "days": 7}]}),
    )
    .await;
    // An operator declares and ends an outage; the documents render.
    let outage = ok_post(
        &base,
        "/v1/admin/outages",
        &admin,
        json!({"scope": "issuing", "starts_at": jiff::Timestamp::now().to_string(), "note": "保守"}),
    )
    .await;
    let outage_id = outage["id"].as_str().unwrap();
    ok_post(
        &base,
        &format!("/v1/admin/outages/{outage_id}/end"),
        &admin,
        json!({}),
    )
    .await;
    let (status, _) = call(
        Method::GET,
        format!("{base}/v1/prescriptions/{id}/sj1"),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let log = relay.log();
    assert!(!log.contains("permission denied"), "{log}");

    // Connected as the serving role, history cannot be rewritten.
    let (app, connection) = tokio_postgres::connect(&app_url, tokio_postgres::NoTls)
        .await
        .expect("connect as the serving role");
    tokio::spawn(connection);
    for sql in [
        "UPDATE prescription_events SET action = 'x'",
        "DELETE FROM prescription_events",
        "TRUNCATE prescription_events",
        "UPDATE access_log SET staff_id = 'x'",
        "DELETE FROM access_log",
        "UPDATE qualifications SET outcome = 'refused'",
        "UPDATE check_consents SET note = 'x'",
        "DELETE FROM prescriptions",
        "DELETE FROM outbox",
        "TRUNCATE idempotency_keys",
        "DELETE FROM drugs",
        "UPDATE contraindications SET basis = 'x'",
        "ALTER TABLE prescription_events DISABLE TRIGGER ALL",
        "DROP TABLE access_log",
        "SET session_replication_role = replica",
        "CREATE TABLE shadow (x int)",
    ] {
        let err = app
            .batch_execute(sql)
            .await
            .expect_err(&format!("{sql} must be refused"));
        let db = err.as_db_error().expect("a database error");
        assert!(
            db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
            "{sql}: {} {}",
            db.code().code(),
            db.message()
        );
    }
    // The owner still sees every row the relay wrote.
    let events: i64 = owner
        .query_one(
            "SELECT count(*) FROM prescription_events WHERE prescription_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 3, "registered, received, dispensed");
    owner
        .batch_execute(&format!(
            "REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .ok();
}

/// A POST that must succeed: its JSON body, or a panic naming the step.
async fn ok_post(base: &str, path: &str, token: &str, body: Value) -> Value {
    let (status, v) = call(
        reqwest::Method::POST,
        format!("{base}{path}"),
        token,
        Some(&body),
    )
    .await;
    assert!((200..300).contains(&status), "{path}: {status} {v}");
    v
}
