//! Declared outages: the admin endpoints, the public state, the audit trail, and
//! `ensure_running` (what registration and the receives call) on the test database directly.

use std::time::Duration;

use actix_web::ResponseError;
use jiff::{SignedDuration, Timestamp};
use relay::http::outages::{Suspended, ensure_running};
use serde_json::{Value, json};

use crate::helpers::*;

fn at(offset_seconds: i64) -> String {
    (Timestamp::now() + SignedDuration::from_secs(offset_seconds)).to_string()
}

async fn declare(app: &TestApp, body: Value) -> Value {
    let r = app.post("/v1/admin/outages", &app.admin(), &body).await;
    assert_eq!(r.status, 201, "declare: {}", r.text);
    r.body
}

async fn end(app: &TestApp, id: &str) -> Resp {
    app.post(
        &format!("/v1/admin/outages/{id}/end"),
        &app.admin(),
        &json!({}),
    )
    .await
}

/// What `ensure_running` answers on a fresh pooled connection: `None` for Ok, else the status,
/// the `Retry-After` header and the problem body.
async fn check(app: &TestApp, what: Suspended) -> Option<(u16, Option<u64>, Value)> {
    let client = app.pool.get().await.expect("connection");
    match ensure_running(&client, what).await {
        Ok(()) => None,
        Err(e) => {
            let res = e.error_response();
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Some((e.status().as_u16(), retry, e.body()))
        }
    }
}

async fn service_state(app: &TestApp, token: &str) -> Value {
    let r = app.get("/v1/outages/active", token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

#[tokio::test]
async fn outage_issuing_suspends_registration_only_until_ended() {
    let app = TestApp::spawn().await;
    assert!(check(&app, Suspended::Issuing).await.is_none());
    assert!(check(&app, Suspended::Receiving).await.is_none());
    let state = service_state(&app, &app.doctor()).await;
    assert_eq!(state["issuing_suspended"], false);
    assert_eq!(state["active"], json!([]));

    let outage = declare(
        &app,
        json!({"scope": "issuing", "starts_at": at(-60), "note": "電子処方箋管理サービス障害"}),
    )
    .await;
    assert_eq!(outage["state"], "active");
    assert_eq!(outage["scope"], "issuing");
    assert_eq!(outage["ends_at"], Value::Null);
    assert_eq!(outage["declared_by"]["staff_id"], "admin-1");
    assert_eq!(outage["declared_by"]["facility_code"], CLINIC);
    let id = outage["id"].as_str().expect("id").to_string();

    // Registration is refused: 503, Retry-After 300 (no planned end), paper instruction.
    let (status, retry, body) = check(&app, Suspended::Issuing).await.expect("suspended");
    assert_eq!(status, 503);
    assert_eq!(retry, Some(300));
    assert_eq!(body["code"], "SERVICE_SUSPENDED");
    assert_eq!(body["status"], 503);
    assert_eq!(body["suspended"], "issuing");
    assert_eq!(body["outage"]["id"], id.as_str());
    assert_eq!(body["outage"]["scope"], "issuing");
    assert_eq!(body["outage"]["note"], "電子処方箋管理サービス障害");
    assert_eq!(body["outage"]["starts_at"], outage["starts_at"]);
    assert_eq!(body["outage"]["ends_at"], Value::Null);
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("紙の処方箋を発行してください"), "{detail}");
    assert!(detail.contains("issue a paper prescription"), "{detail}");
    // Receiving is not suspended by an `issuing` outage.
    assert!(check(&app, Suspended::Receiving).await.is_none());

    // Every role sees it within one request.
    for token in [app.doctor(), app.pharmacist(), app.admin()] {
        let state = service_state(&app, &token).await;
        assert_eq!(state["issuing_suspended"], true, "{state}");
        assert_eq!(state["receiving_suspended"], false, "{state}");
        assert_eq!(state["active"][0]["id"], id.as_str());
    }

    // Ending restores service at once, no restart.
    let r = end(&app, &id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "ended");
    assert_eq!(r.body["ended_by"]["staff_id"], "admin-1");
    assert!(r.body["ended_at"].is_string());
    assert!(check(&app, Suspended::Issuing).await.is_none());
    let state = service_state(&app, &app.pharmacist()).await;
    assert_eq!(state["issuing_suspended"], false);
    assert_eq!(state["active"], json!([]));

    // Ending twice: 409 naming the state.
    let r = end(&app, &id).await;
    r.assert_problem(409, "OUTAGE_ALREADY_ENDED");
    assert_eq!(r.body["state"], "ended");
    assert!(r.text.contains("admin-1"), "{}", r.text);
}

#[tokio::test]
async fn outage_all_suspends_receiving_too_with_retry_after_to_the_planned_end() {
    let app = TestApp::spawn().await;
    let outage = declare(
        &app,
        json!({"scope": "all", "starts_at": at(-10), "ends_at": at(3600), "note": "計画停止"}),
    )
    .await;
    let id = outage["id"].as_str().unwrap();
    for what in [Suspended::Issuing, Suspended::Receiving] {
        let (status, retry, body) = check(&app, what).await.expect("suspended");
        assert_eq!(status, 503);
        let retry = retry.expect("Retry-After");
        assert!((3590..=3600).contains(&retry), "Retry-After {retry}");
        assert_eq!(body["outage"]["id"], id);
        assert_eq!(body["outage"]["scope"], "all");
        assert_eq!(body["outage"]["ends_at"], outage["ends_at"]);
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("再開予定"), "{detail}");
        assert!(detail.contains("JST"), "{detail}");
        if what == Suspended::Receiving {
            assert_eq!(body["suspended"], "receiving");
            assert!(detail.contains("FAX"), "{detail}");
            assert!(detail.contains("paper"), "{detail}");
        }
    }
    let state = service_state(&app, &app.pharmacist()).await;
    assert_eq!(state["issuing_suspended"], true);
    assert_eq!(state["receiving_suspended"], true);

    // Two overlapping outages: Retry-After is when the last one ends (no planned end: 300).
    let open = declare(
        &app,
        json!({"scope": "issuing", "starts_at": at(-5), "note": "発行側のみ"}),
    )
    .await;
    let (_, retry, body) = check(&app, Suspended::Issuing).await.unwrap();
    assert_eq!(retry, Some(300));
    assert_eq!(body["outage"]["id"], open["id"]);
    let (_, retry, body) = check(&app, Suspended::Receiving).await.unwrap();
    assert!(retry.unwrap() > 3000);
    assert_eq!(body["outage"]["id"], id);

    // `ensure_running` reads inside the caller's transaction just as well.
    let mut client = app.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let err = ensure_running(&tx, Suspended::Receiving)
        .await
        .expect_err("suspended");
    assert_eq!(err.code(), "SERVICE_SUSPENDED");
    drop(tx);

    assert_eq!(end(&app, id).await.status, 200);
    assert!(check(&app, Suspended::Receiving).await.is_none());
    assert!(
        check(&app, Suspended::Issuing).await.is_some(),
        "the other runs"
    );
    assert_eq!(end(&app, open["id"].as_str().unwrap()).await.status, 200);
    assert!(check(&app, Suspended::Issuing).await.is_none());
}

#[tokio::test]
async fn outage_scheduled_in_the_future_starts_by_itself_and_can_be_called_off() {
    let app = TestApp::spawn().await;
    let later = declare(
        &app,
        json!({"scope": "all", "starts_at": at(7200), "ends_at": at(9000), "note": "メンテナンス"}),
    )
    .await;
    assert_eq!(later["state"], "scheduled");
    assert!(check(&app, Suspended::Issuing).await.is_none());
    assert!(check(&app, Suspended::Receiving).await.is_none());
    let state = service_state(&app, &app.doctor()).await;
    assert_eq!(state["issuing_suspended"], false);
    assert_eq!(state["scheduled"][0]["id"], later["id"]);

    // Calling off a scheduled outage is an end (audited as such).
    let r = end(&app, later["id"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "ended");
    let was: String = app
        .sql_one(&format!(
            "SELECT detail->>'was' FROM outage_events WHERE outage_id = '{}' AND action = 'ended'",
            later["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(was, "scheduled");
    assert_eq!(
        service_state(&app, &app.doctor()).await["scheduled"],
        json!([])
    );

    // One starting in two seconds suspends once its start passes, with nobody touching it.
    let soon = declare(
        &app,
        json!({"scope": "issuing", "starts_at": at(2), "note": "まもなく停止"}),
    )
    .await;
    assert_eq!(soon["state"], "scheduled");
    assert!(check(&app, Suspended::Issuing).await.is_none());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _, body) = check(&app, Suspended::Issuing).await.expect("started");
    assert_eq!(status, 503);
    assert_eq!(body["outage"]["id"], soon["id"]);
}

#[tokio::test]
async fn outage_past_its_planned_end_no_longer_suspends() {
    let app = TestApp::spawn().await;
    // Recorded after the fact: it is over already.
    let past = declare(
        &app,
        json!({"scope": "all", "starts_at": at(-7200), "ends_at": at(-3600), "note": "昨日の障害"}),
    )
    .await;
    assert_eq!(past["state"], "elapsed");
    assert!(check(&app, Suspended::Issuing).await.is_none());
    assert!(check(&app, Suspended::Receiving).await.is_none());
    let r = end(&app, past["id"].as_str().unwrap()).await;
    r.assert_problem(409, "OUTAGE_ALREADY_ENDED");
    assert_eq!(r.body["state"], "elapsed");

    // One that ends in two seconds stops suspending by itself; Retry-After counts down to it.
    let short = declare(
        &app,
        json!({"scope": "all", "starts_at": at(-1), "ends_at": at(2), "note": "短時間停止"}),
    )
    .await;
    let (_, retry, _) = check(&app, Suspended::Receiving).await.expect("running");
    assert!(matches!(retry, Some(1..=2)), "Retry-After {retry:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(check(&app, Suspended::Receiving).await.is_none());
    assert!(check(&app, Suspended::Issuing).await.is_none());
    let r = end(&app, short["id"].as_str().unwrap()).await;
    r.assert_problem(409, "OUTAGE_ALREADY_ENDED");
    assert_eq!(r.body["state"], "elapsed");
}

#[tokio::test]
async fn outage_end_of_unknown_or_malformed_id_is_404_and_concurrent_ends_conflict() {
    let app = TestApp::spawn().await;
    end(&app, &uuid::Uuid::now_v7().to_string())
        .await
        .assert_problem(404, "OUTAGE_NOT_FOUND");
    end(&app, "not-a-uuid")
        .await
        .assert_problem(404, "OUTAGE_NOT_FOUND");

    let o = declare(
        &app,
        json!({"scope": "issuing", "starts_at": at(-1), "note": "同時終了"}),
    )
    .await;
    let id = o["id"].as_str().unwrap();
    let (a, b) = tokio::join!(end(&app, id), end(&app, id));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    let ended: i64 = app
        .sql_one("SELECT count(*) FROM outage_events WHERE action = 'ended'")
        .await;
    assert_eq!(ended, 1);
}

#[tokio::test]
async fn outage_declaration_validation_names_every_field() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    let start = at(0);
    for (body, expected) in [
        (
            json!({"scope": "issuing", "starts_at": start, "ends_at": at(-60), "note": "x"}),
            vec![("ends_at", "BEFORE_STARTS_AT")],
        ),
        (
            json!({"scope": "issuing", "starts_at": start, "ends_at": start, "note": "x"}),
            vec![("ends_at", "BEFORE_STARTS_AT")],
        ),
        (
            json!({"scope": "issuing", "starts_at": start, "note": "  　"}),
            vec![("note", "REQUIRED")],
        ),
        (
            json!({"scope": "issuing", "starts_at": start, "ends_at": at(-60), "note": ""}),
            vec![("ends_at", "BEFORE_STARTS_AT"), ("note", "REQUIRED")],
        ),
        (
            json!({"scope": "issuing", "starts_at": start, "note": "あ".repeat(1001)}),
            vec![("note", "TOO_LONG")],
        ),
        (
            json!({"scope": "partial", "starts_at": start, "note": "x"}),
            vec![("scope", "INVALID_VALUE")],
        ),
        (
            json!({"scope": "all", "note": "x"}),
            vec![("starts_at", "REQUIRED")],
        ),
        (
            json!({"scope": "all", "starts_at": "2026-04-01 08:00", "note": "x"}),
            vec![("starts_at", "INVALID_VALUE")],
        ),
        (
            json!({"scope": "all", "starts_at": start, "note": "x", "severity": "high"}),
            vec![("severity", "UNKNOWN_FIELD")],
        ),
    ] {
        let r = app.post("/v1/admin/outages", &admin, &body).await;
        r.assert_problem(422, "VALIDATION_FAILED");
        let got = r.field_errors();
        for (field, code) in expected {
            assert!(
                got.contains(&(field.to_string(), code.to_string())),
                "{body}: {got:?}"
            );
        }
    }
    let n: i64 = app.sql_one("SELECT count(*) FROM outages").await;
    assert_eq!(n, 0, "nothing declared");
    let r = app
        .get("/v1/admin/outages?active=maybe", &app.admin())
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
}

#[tokio::test]
async fn outage_audit_rows_are_written_and_cannot_be_changed() {
    let app = TestApp::spawn().await;
    let o = declare(
        &app,
        json!({"scope": "all", "starts_at": at(-1), "ends_at": at(600), "note": "監査"}),
    )
    .await;
    let id = o["id"].as_str().unwrap();
    assert_eq!(end(&app, id).await.status, 200);

    let client = app.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT action, actor, facility_code, role, detail FROM outage_events
              WHERE outage_id = $1::text::uuid ORDER BY id",
            &[&id],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let admin = |a: &str| {
        (
            a.to_string(),
            "admin-1".to_string(),
            CLINIC.to_string(),
            "admin".to_string(),
        )
    };
    assert_eq!(got, vec![admin("declared"), admin("ended")]);
    let declared: Value = rows[0].get(4);
    assert_eq!(declared["scope"], "all");
    assert_eq!(declared["note"], "監査");
    let ended: Value = rows[1].get(4);
    assert_eq!(ended["was"], "active");

    // The audit trail refuses UPDATE, DELETE and TRUNCATE.
    for sql in [
        "UPDATE outage_events SET actor = 'someone-else'",
        "DELETE FROM outage_events",
        "TRUNCATE outage_events",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert!(format!("{err:?}").contains("append-only"), "{sql}: {err:?}");
    }
    // The outage itself can be ended once, and never edited or deleted.
    for sql in [
        "UPDATE outages SET note = 'rewritten'",
        "UPDATE outages SET ended_at = now() - interval '1 day'",
        "DELETE FROM outages",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let text = format!("{err:?}");
        assert!(
            text.contains("only be ended") || text.contains("never deleted"),
            "{sql}: {text}"
        );
    }
    let err = client
        .batch_execute("TRUNCATE outages CASCADE")
        .await
        .expect_err("truncate");
    assert!(format!("{err:?}").contains("append-only"), "{err:?}");
    let n: i64 = app.sql_one("SELECT count(*) FROM outage_events").await;
    assert_eq!(n, 2);
}

#[tokio::test]
async fn outage_admin_endpoints_need_the_admin_role_and_the_state_needs_a_token() {
    let app = TestApp::spawn().await;
    let body = json!({"scope": "all", "starts_at": at(-1), "note": "x"});
    for token in [app.doctor(), app.pharmacist()] {
        app.post("/v1/admin/outages", &token, &body)
            .await
            .assert_problem(403, "FORBIDDEN");
        app.get("/v1/admin/outages", &token)
            .await
            .assert_problem(403, "FORBIDDEN");
    }
    let o = declare(&app, body).await;
    let id = o["id"].as_str().unwrap();
    app.post(
        &format!("/v1/admin/outages/{id}/end"),
        &app.pharmacist(),
        &json!({}),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
    assert!(
        check(&app, Suspended::Receiving).await.is_some(),
        "still running"
    );
    app.get_anon("/v1/outages/active")
        .await
        .assert_problem(401, "UNAUTHENTICATED");
    let state = service_state(&app, &app.pharmacist()).await;
    assert_eq!(state["receiving_suspended"], true);
    assert!(
        state["active"][0].get("declared_by").is_none(),
        "the public view names no staff: {state}"
    );
}

#[tokio::test]
async fn outage_declaration_is_idempotent_and_the_list_filters_by_running() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    let body = json!({"scope": "issuing", "starts_at": at(-1), "note": "再送"});
    let a = app
        .post_keyed("/v1/admin/outages", &admin, Some("outage-key-1"), &body)
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let b = app
        .post_keyed("/v1/admin/outages", &admin, Some("outage-key-1"), &body)
        .await;
    assert_eq!(b.status, 201);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(a.body["id"], b.body["id"]);
    let n: i64 = app.sql_one("SELECT count(*) FROM outage_events").await;
    assert_eq!(n, 1, "one declaration, one audit row");

    declare(
        &app,
        json!({"scope": "all", "starts_at": at(-7200), "ends_at": at(-3600), "note": "過去"}),
    )
    .await;
    declare(
        &app,
        json!({"scope": "all", "starts_at": at(3600), "note": "予定"}),
    )
    .await;
    let list = |q: &'static str| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let r = app.get(&format!("/v1/admin/outages{q}"), &admin).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.body["outages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["state"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("?active=true").await, ["active"]);
    let mut others = list("?active=false").await;
    others.sort();
    assert_eq!(others, ["elapsed", "scheduled"]);
    assert_eq!(list("").await.len(), 3);
}
