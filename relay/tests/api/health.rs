use crate::helpers::*;
use relay::config::{DatabaseUrl, Settings};
use relay::startup::Application;

#[tokio::test]
async fn health_ready_and_jwks_need_no_token() {
    let app = TestApp::spawn().await;
    let r = app.get_anon("/healthz").await;
    assert_eq!(r.status, 200);
    let r = app.get_anon("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.get_anon("/.well-known/jwks.json").await;
    assert_eq!(r.status, 200);
    let keys = r.body["keys"].as_array().expect("keys");
    assert_eq!(keys[0]["kid"], app.keys.kid());
    assert_eq!(keys[0]["alg"], "EdDSA");
}

#[tokio::test]
async fn readyz_fails_fast_when_the_database_is_unreachable() {
    // Nothing listens on this port: a bounded 503, not a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = Settings::with_database(DatabaseUrl::new(format!(
        "postgres://relay:secret@127.0.0.1:{port}/relay"
    )));
    settings.database.migrate_on_start = false;
    settings.database.acquire_timeout_ms = 500;
    let keys = relay::auth::KeySet::generate_ephemeral(&Default::default()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Application::build_with(settings, listener, keys.clone())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let started = std::time::Instant::now();
    let http = crate::helpers::http_client().build().expect("client");
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "DATABASE_UNAVAILABLE");
    assert!(!body.to_string().contains("secret"), "no secret in {body}");
    // An API call answers 503 too, with Retry-After.
    let token = keys
        .mint(
            "doctor-1",
            CLINIC,
            relay::auth::Role::Doctor,
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let r = http
        .post(format!("{base}/v1/prescriptions"))
        .bearer_auth(token)
        .json(&prescription())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn openapi_and_swagger_ui_are_served_offline() {
    let app = TestApp::spawn().await;
    let r = app.get_anon("/openapi.json").await;
    assert_eq!(r.status, 200);
    let paths = r.body["paths"].as_object().expect("paths");
    for p in [
        "/v1/prescriptions",
        "/v1/prescriptions/{id}",
        "/v1/prescriptions/{id}/cancel",
        "/v1/prescriptions/receive",
        "/v1/prescriptions/{id}/release",
        "/v1/prescriptions/{id}/dispense",
        "/v1/prescriptions/{id}/events",
        "/v1/admin/facilities",
        "/v1/admin/insured",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(
        r.body["info"]["description"]
            .as_str()
            .unwrap()
            .contains("Retry-After")
    );
    let r = app.get_anon("/docs").await;
    assert_eq!(r.status, 302);
    let r = app.get_anon("/docs/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.text.contains("swagger"),
        "swagger page: {}",
        &r.text[..r.text.len().min(200)]
    );
    let r = app.get_anon("/docs/swagger-ui-bundle.js").await;
    assert_eq!(r.status, 200, "the UI's script is vendored");
}

#[tokio::test]
async fn unknown_routes_are_problem_json() {
    let app = TestApp::spawn().await;
    let r = app.get_anon("/nope").await;
    r.assert_problem(404, "NOT_FOUND");
    let r = app.get("/v1/prescriptions/not-a-uuid", &app.doctor()).await;
    r.assert_problem(404, "PRESCRIPTION_NOT_FOUND");
}

/// The relay's sessions carry both settings of `database`: the statement timeout and generic plans
/// (BENCHMARKS.md: re-planning each execution cost a sixth of the database's time per request).
#[tokio::test]
async fn the_relays_sessions_time_out_statements_and_plan_them_once() {
    let show = |pool: relay::db::Pool| async move {
        let c = pool.get().await.expect("connection");
        let get = async |what: &str| -> String {
            c.query_one(&format!("SHOW {what}"), &[])
                .await
                .expect("SHOW")
                .get(0)
        };
        (get("plan_cache_mode").await, get("statement_timeout").await)
    };
    let app = TestApp::spawn().await;
    assert_eq!(
        show(app.pool.clone()).await,
        ("force_generic_plan".to_string(), "10s".to_string())
    );
    let app = TestApp::spawn_with(|s| {
        s.database.generic_plans = false;
        s.database.statement_timeout_ms = 0;
    })
    .await;
    assert_eq!(
        show(app.pool.clone()).await,
        ("auto".to_string(), "0".to_string())
    );
}
