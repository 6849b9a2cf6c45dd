use std::time::Duration;

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use relay::auth::{AuthSettings, KeySet, Role};

fn unsigned(header: &str, claims: &serde_json::Value) -> String {
    format!("{}.{}.", B64.encode(header), B64.encode(claims.to_string()))
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let app = TestApp::spawn().await;
    let path = "/v1/prescriptions";
    // No token at all.
    let r = app
        .http
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({"sub": "x", "facility": CLINIC, "role": "doctor",
                                    "iat": now, "exp": now + 600, "iss": "relay"});
    let other = KeySet::generate_ephemeral(&AuthSettings::default()).unwrap();
    let cases = [
        ("malformed", "abc.def".to_string()),
        ("garbage", "not a token at all".to_string()),
        (
            "alg none",
            unsigned(r#"{"alg":"none","typ":"JWT"}"#, &claims),
        ),
        (
            "alg none with our kid",
            unsigned(
                &format!(r#"{{"alg":"none","kid":"{}"}}"#, app.keys.kid()),
                &claims,
            ),
        ),
        (
            "wrong key",
            other
                .mint("x", CLINIC, Role::Doctor, Duration::from_secs(600))
                .unwrap(),
        ),
        ("HS256", {
            let h = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            let c = B64.encode(claims.to_string());
            format!("{h}.{c}.{}", B64.encode(b"signature"))
        }),
    ];
    for (what, token) in cases {
        let r = app.get(path, &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.body["code"], "UNAUTHENTICATED", "{what}");
        assert!(!r.text.contains(&token), "{what}: the token is not echoed");
    }
}

#[tokio::test]
async fn expired_tokens_are_401() {
    let app = TestApp::spawn().await;
    let token = app
        .keys
        .mint("doctor-1", CLINIC, Role::Doctor, Duration::from_secs(1))
        .unwrap();
    // Default leeway is 30 s; wait past expiry plus leeway would be slow, so use a relay
    // configured without leeway.
    let strict = TestApp::spawn_with(|s| s.auth.leeway_seconds = 0).await;
    let token_strict = strict
        .keys
        .mint("doctor-1", CLINIC, Role::Doctor, Duration::from_secs(1))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = strict.get("/v1/prescriptions", &token_strict).await;
    r.assert_problem(401, "UNAUTHENTICATED");
    assert!(r.body["detail"].as_str().unwrap().contains("expired"));
    // Within the leeway the first relay still accepts its token.
    let r = app.get("/v1/prescriptions", &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn roles_and_facilities_are_enforced() {
    let app = TestApp::spawn().await;
    let body = prescription();
    // Only doctors register.
    for role in [
        Role::ClinicClerk,
        Role::Pharmacist,
        Role::PharmacyClerk,
        Role::Admin,
    ] {
        let facility = if role.is_pharmacy() { PHARMACY } else { CLINIC };
        let r = app
            .post(
                "/v1/prescriptions",
                &role_token(&app, facility, role),
                &body,
            )
            .await;
        r.assert_problem(403, "FORBIDDEN");
    }
    // A doctor token for a pharmacy code, or an unregistered clinic, cannot register.
    let r = app
        .post(
            "/v1/prescriptions",
            &app.token(PHARMACY, Role::Doctor, "d"),
            &body,
        )
        .await;
    r.assert_problem(403, "FORBIDDEN");
    let r = app
        .post(
            "/v1/prescriptions",
            &app.token("0110113719", Role::Doctor, "d"),
            &body,
        )
        .await;
    r.assert_problem(403, "FORBIDDEN");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("not registered")
    );
    // Only pharmacy staff receive.
    let reg = app.register(&body).await;
    let number = reg["exchange_number"].as_str().unwrap();
    let r = app.receive(&app.doctor(), number, &insured()).await;
    r.assert_problem(403, "FORBIDDEN");
    // A pharmacy clerk may receive; the clinic search is for clinic roles only.
    let clerk = role_token(&app, PHARMACY, Role::PharmacyClerk);
    let r = app.receive(&clerk, number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.get("/v1/prescriptions", &clerk).await;
    r.assert_problem(403, "FORBIDDEN");
    let r = app
        .get(
            "/v1/prescriptions",
            &role_token(&app, CLINIC, Role::ClinicClerk),
        )
        .await;
    assert_eq!(r.status, 200);
    // Admin endpoints need admin.
    let r = app
        .post(
            "/v1/admin/facilities",
            &app.doctor(),
            &serde_json::json!({}),
        )
        .await;
    r.assert_problem(403, "FORBIDDEN");
}
