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

/// A relay started the way `relay serve` starts, from settings that name key files, on the
/// database of `app`.
struct Serving {
    address: String,
    handle: actix_web::dev::ServerHandle,
}

impl Serving {
    async fn start(app: &TestApp, signing: &std::path::Path, extra: &[std::path::PathBuf]) -> Self {
        let mut settings = relay::config::Settings::with_database(relay::config::DatabaseUrl::new(
            app.database_url().await,
        ));
        settings.jobs.enabled = false;
        settings.auth.private_key_path = Some(signing.to_path_buf());
        settings.auth.extra_public_keys = extra.to_vec();
        let relay = relay::startup::Application::build(settings)
            .await
            .expect("relay starts");
        let serving = Serving {
            address: format!("http://127.0.0.1:{}", relay.port()),
            handle: relay.server_handle(),
        };
        tokio::spawn(relay.run_until_stopped());
        serving
    }

    /// The status of the clinic's lookup with `token`, and the kids of the relay's JWKS.
    async fn try_token(&self, app: &TestApp, token: &str) -> (u16, Vec<String>) {
        let r = app
            .http
            .get(format!("{}/v1/prescriptions", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let jwks: serde_json::Value = app
            .http
            .get(format!("{}/.well-known/jwks.json", self.address))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("jwks json");
        let kids = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect();
        (status, kids)
    }

    async fn stop(self) {
        self.handle.stop(true).await;
    }
}

#[tokio::test]
async fn key_rotation_accepts_both_keys_until_the_old_public_key_is_removed() {
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};

    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("relay-rotation-{}", uuid::Uuid::now_v7()));
    // Two key files as `relay serve` creates them, the old one's public half beside them.
    let key_in = |name: &str| {
        let settings = AuthSettings {
            key_dir: dir.join(name),
            ..AuthSettings::default()
        };
        let (keys, _) = KeySet::load_or_create(&settings).expect("key file");
        (keys, settings.signing_key_path())
    };
    let (old, old_private) = key_in("old");
    let (new, new_private) = key_in("new");
    let old_public = dir.join("old-public.pem");
    let pem = std::fs::read_to_string(&old_private).unwrap();
    std::fs::write(
        &old_public,
        SigningKey::from_pkcs8_pem(&pem)
            .unwrap()
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let mint = |keys: &KeySet| {
        keys.mint("doctor-1", CLINIC, Role::Doctor, Duration::from_secs(600))
            .unwrap()
    };
    let (old_token, new_token) = (mint(&old), mint(&new));
    let (old_kid, new_kid) = (old.kid().to_string(), new.kid().to_string());

    // Before: only the old key.
    let relay = Serving::start(&app, &old_private, &[]).await;
    assert_eq!(
        relay.try_token(&app, &old_token).await,
        (200, vec![old_kid.clone()])
    );
    assert_eq!(relay.try_token(&app, &new_token).await.0, 401);
    relay.stop().await;
    // During: signing with the new key, the old public key still accepted.
    let relay = Serving::start(&app, &new_private, std::slice::from_ref(&old_public)).await;
    let both = vec![new_kid.clone(), old_kid.clone()];
    assert_eq!(relay.try_token(&app, &old_token).await, (200, both.clone()));
    assert_eq!(relay.try_token(&app, &new_token).await, (200, both));
    relay.stop().await;
    // After: the old public key removed from [auth]; its tokens are refused as unknown.
    let relay = Serving::start(&app, &new_private, &[]).await;
    assert_eq!(
        relay.try_token(&app, &new_token).await,
        (200, vec![new_kid])
    );
    let r = app
        .http
        .get(format!("{}/v1/prescriptions", relay.address))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "UNAUTHENTICATED");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not signed by a key"),
        "{problem}"
    );
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The token is the authority for who the caller is: the relay does not look its staff id up
/// (the staff table only holds names and the 目視確認 flag). What it does check is that a
/// pharmacy's acts come from a registered pharmacy, whatever role the token claims.
#[tokio::test]
async fn pharmacy_roles_at_a_clinic_code_are_refused_pharmacy_acts() {
    let app = TestApp::spawn().await;
    let reg = app.register(&prescription()).await;
    let number = reg["exchange_number"].as_str().unwrap();
    let id = reg["prescription_id"].as_str().unwrap();
    for role in [Role::Pharmacist, Role::PharmacyClerk] {
        let misplaced = role_token(&app, CLINIC, role);
        app.receive(&misplaced, number, &insured())
            .await
            .assert_problem(403, "FORBIDDEN");
        app.get("/v1/presends", &misplaced)
            .await
            .assert_problem(403, "FORBIDDEN");
        app.post(
            "/v1/fallbacks",
            &misplaced,
            &serde_json::json!({"exchange_number": number, "insured": insured(),
                                "reason": "障害", "preferred": "fax"}),
        )
        .await
        .assert_problem(403, "FORBIDDEN");
    }
    // Nothing happened to the prescription.
    let r = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    assert_eq!(r.body["status"], "registered", "{}", r.text);
}
