use crate::helpers::*;
use jiff::ToSpan;
use relay::auth::Role;
use serde_json::json;

/// Registers the standard prescription and returns (id, exchange number).
async fn registered(app: &TestApp) -> (String, String) {
    // The same patient's drugs again: the override lets the duplicate through.
    let r = app
        .register_overriding(&app.doctor(), &prescription())
        .await;
    (
        r["prescription_id"].as_str().unwrap().to_string(),
        r["exchange_number"].as_str().unwrap().to_string(),
    )
}

/// A number that differs from `n` (same length).
fn other_number(n: &str) -> String {
    let v: u32 = n.parse().unwrap();
    format!("{:06}", (v + 1) % 1_000_000)
}

#[tokio::test]
async fn receive_takes_the_prescription_for_the_caller() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;
    let r = app.receive(&app.pharmacist(), &number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["prescription_id"], id.as_str());
    assert_eq!(r.body["status"], "dispensing");
    assert_eq!(r.body["holder"]["code"], PHARMACY);
    assert_eq!(r.body["holder"]["name"], "検証用薬局");
    assert_eq!(r.body["issuer"]["name"], "検証用病院");
    assert_eq!(r.body["prescription"]["rps"].as_array().unwrap().len(), 2);
    // The holder receiving again is not an error; another pharmacy is told who holds it.
    let again = app.receive(&app.pharmacist(), &number, &insured()).await;
    assert_eq!(again.status, 200);
    let r = app.receive(&app.pharmacist_2(), &number, &insured()).await;
    r.assert_problem(409, "HELD_BY_ANOTHER_PHARMACY");
    assert_eq!(r.body["holder"]["code"], PHARMACY);
    assert_eq!(r.body["holder"]["name"], "検証用薬局");
    let events: Vec<String> = app
        .get(&format!("/v1/prescriptions/{id}/events"), &app.pharmacist())
        .await
        .body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["registered", "received"]);
}

#[tokio::test]
async fn typed_numbers_are_normalised() {
    let app = TestApp::spawn().await;
    for variant in [
        |n: &str| {
            n.chars()
                .map(|c| char::from_u32(c as u32 - 0x30 + 0xFF10).unwrap())
                .collect::<String>()
        },
        |n: &str| format!(" {}-{} ", &n[..3], &n[3..]),
        |n: &str| format!("{}　{}", &n[..3], &n[3..]),
        |n: &str| format!("{}ー{}", &n[..3], &n[3..]),
    ] {
        let (_, number) = registered(&app).await;
        let typed = variant(&number);
        let r = app.receive(&app.pharmacist(), &typed, &insured()).await;
        assert_eq!(r.status, 200, "{typed:?}: {}", r.text);
        assert_eq!(r.body["exchange_number"], number.as_str());
    }
    // Full-width identity fields match too.
    let (_, number) = registered(&app).await;
    let wide = json!({"insurer_number": "３１１３０８４２", "symbol": "２０２２", "number": "０１０００１", "branch": "０１"});
    assert_eq!(
        app.receive(&app.pharmacist(), &number, &wide).await.status,
        200
    );
}

#[tokio::test]
async fn wrong_number_and_wrong_identity_look_the_same() {
    let app = TestApp::spawn().await;
    let (_, number) = registered(&app).await;
    let wrong_number = app
        .receive(&app.pharmacist(), &other_number(&number), &insured())
        .await;
    wrong_number.assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    let mut other = insured();
    other["number"] = "010002".into();
    let wrong_identity = app.receive(&app.pharmacist(), &number, &other).await;
    wrong_identity.assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    assert_eq!(wrong_number.body, wrong_identity.body, "indistinguishable");
    let mut other = insured();
    other["branch"] = "02".into();
    app.receive(&app.pharmacist(), &number, &other)
        .await
        .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    // Birth date, when given, must match as well.
    let r = app
        .post(
            "/v1/prescriptions/receive",
            &app.pharmacist(),
            &json!({"exchange_number": number, "insured": insured(), "birth_date": "2011-01-02"}),
        )
        .await;
    r.assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    let r = app
        .post(
            "/v1/prescriptions/receive",
            &app.pharmacist(),
            &json!({"exchange_number": number, "insured": insured(), "birth_date": "2011-01-01"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn malformed_input_is_a_named_422_and_not_counted() {
    let app = TestApp::spawn().await;
    let (_, number) = registered(&app).await;
    for _ in 0..8 {
        let r = app.receive(&app.pharmacist(), "12a45", &insured()).await;
        r.assert_problem(422, "VALIDATION_FAILED");
        assert_eq!(r.field_errors()[0].0, "exchange_number");
    }
    let mut bad = insured();
    bad["insurer_number"] = "31130843".into();
    bad["branch"] = "1".into();
    let r = app.receive(&app.pharmacist(), &number, &bad).await;
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["insured.insurer_number", "insured.branch"]);
    // None of those counted towards the throttle.
    assert_eq!(
        app.receive(&app.pharmacist(), &number, &insured())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn cancelled_and_expired_prescriptions_are_gone() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;
    let r = app
        .post(
            &format!("/v1/prescriptions/{id}/cancel"),
            &app.doctor(),
            &json!({"reason": "処方変更"}),
        )
        .await;
    assert_eq!(r.status, 200);
    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(410, "PRESCRIPTION_CANCELLED");

    let (id, number) = registered(&app).await;
    let past = today().checked_sub(10.days()).unwrap();
    let until = today().checked_sub(1.day()).unwrap();
    app.sql(&format!(
        "UPDATE prescriptions SET issued_on = '{past}', valid_until = '{until}' WHERE id = '{id}'"
    ))
    .await;
    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(410, "PRESCRIPTION_EXPIRED");
    let stored: String = app
        .sql_one(&format!(
            "SELECT status FROM prescriptions WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(stored, "expired", "the expiry is recorded");
    let r = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    assert_eq!(r.body["status"], "expired");
    // An expired prescription no longer blocks its number; receiving again says expired again.
    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(410, "PRESCRIPTION_EXPIRED");
}

#[tokio::test]
async fn twenty_pharmacies_race_and_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let codes: Vec<String> = (0..20).map(pharmacy_code).collect();
    add_pharmacies(&app, &codes).await;
    let (id, number) = registered(&app).await;
    let tokens: Vec<String> = codes
        .iter()
        .map(|c| app.token(c, Role::Pharmacist, "p"))
        .collect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let mut tasks = Vec::new();
    for token in tokens {
        let http = app.http.clone();
        let url = format!("{}/v1/prescriptions/receive", app.address);
        let body = json!({"exchange_number": number, "insured": insured()});
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ok = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok.push(body),
            409 => {
                assert_eq!(body["code"], "HELD_BY_ANOTHER_PHARMACY");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one pharmacy receives it");
    assert_eq!(conflicts, 19);
    let winner = ok[0]["holder"]["code"].as_str().unwrap();
    let holder: String = app
        .sql_one(&format!(
            "SELECT holder_code FROM prescriptions WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(holder, winner);
    let received: i64 = app
        .sql_one(&format!(
            "SELECT count(*) FROM prescription_events WHERE prescription_id = '{id}' AND action = 'received'"
        ))
        .await;
    assert_eq!(received, 1);
}

#[tokio::test]
async fn failed_guesses_are_throttled_per_identity() {
    let app = TestApp::spawn().await;
    let (_, number) = registered(&app).await;
    let wrong = other_number(&number);
    for i in 0..5 {
        app.receive(&app.pharmacist(), &wrong, &insured())
            .await
            .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
        let _ = i;
    }
    // The sixth attempt is refused even with the right number, from any pharmacy.
    for token in [app.pharmacist(), app.pharmacist_2()] {
        let r = app.receive(&token, &number, &insured()).await;
        r.assert_problem(429, "TOO_MANY_ATTEMPTS");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=600).contains(&retry), "Retry-After {retry}");
    }
    // Another patient's identity is unaffected.
    let mut other = prescription();
    other["insurance"] = json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678", "relationship": "insured", "branch": "01"});
    let reg = app.register(&other).await;
    let r = app
        .receive(
            &app.pharmacist(),
            reg["exchange_number"].as_str().unwrap(),
            &json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678", "branch": "01"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Once the failures leave the window the identity may try again.
    app.sql("UPDATE receive_failures SET at = at - interval '11 minutes'")
        .await;
    assert_eq!(
        app.receive(&app.pharmacist(), &number, &insured())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn failed_guesses_are_throttled_per_pharmacy_with_configurable_limits() {
    let app = TestApp::spawn_with(|s| {
        s.throttle.pharmacy_limit = 4;
        s.throttle.window_seconds = 120;
    })
    .await;
    let (_, number) = registered(&app).await;
    // Four different identities, one failure each: the pharmacy limit is reached.
    for n in 1..=4 {
        let mut id = insured();
        id["number"] = format!("99999{n}").into();
        app.receive(&app.pharmacist(), "123456", &id)
            .await
            .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    }
    let r = app.receive(&app.pharmacist(), &number, &insured()).await;
    r.assert_problem(429, "TOO_MANY_ATTEMPTS");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "Retry-After {retry}");
    // Another pharmacy is not affected.
    assert_eq!(
        app.receive(&app.pharmacist_2(), &number, &insured())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn only_registered_pharmacies_receive() {
    let app = TestApp::spawn().await;
    let (_, number) = registered(&app).await;
    let stranger = app.token(&pharmacy_code(7), Role::Pharmacist, "x");
    app.receive(&stranger, &number, &insured())
        .await
        .assert_problem(403, "FORBIDDEN");
}

/// Distinct wrong guesses for `right`: the numbers after it, so none is the right one.
fn wrong_guesses(right: &str) -> impl Iterator<Item = String> {
    let v: u32 = right.parse().unwrap();
    (1..).map(move |i| format!("{:06}", (v + i) % 1_000_000))
}

/// The shipped `[throttle]` section of config/default.toml: what production runs with (neither
/// production.toml nor the environment sets it), so the figures below are the real ones.
fn shipped_throttle() -> relay::config::ThrottleSettings {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/default.toml"
    ))
    .expect("config/default.toml");
    let number = |key: &str| -> i64 {
        let section = text.split("[throttle]").nth(1).expect("[throttle] section");
        section
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(key)?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("[throttle] {key} in config/default.toml"))
    };
    relay::config::ThrottleSettings {
        window_seconds: number("window_seconds"),
        identity_limit: number("identity_limit"),
        pharmacy_limit: number("pharmacy_limit"),
    }
}

/// The guessing budget of an attacker at one pharmacy who knows a patient's insurance identity
/// but not the 引換番号: wrong guesses are sent until the relay refuses, and the budget is what
/// the answers allowed (not what the settings say). Printed for SECURITY.md.
#[tokio::test]
async fn guessing_budget_is_the_configured_limit_per_identity_and_per_pharmacy() {
    let limits = shipped_throttle();
    let app = TestApp::spawn_with(|s| s.throttle = limits.clone()).await;
    let (_, number) = registered(&app).await;
    let attacker = app.pharmacist();

    // One identity: 404 per wrong guess until 429.
    let mut allowed = 0;
    let mut retry_after = None;
    for guess in wrong_guesses(&number).take(limits.identity_limit as usize + 20) {
        let r = app.receive(&attacker, &guess, &insured()).await;
        match r.status {
            404 => allowed += 1,
            429 => {
                r.assert_problem(429, "TOO_MANY_ATTEMPTS");
                retry_after = r.header("retry-after").and_then(|v| v.parse::<i64>().ok());
                break;
            }
            other => panic!("guess {guess}: unexpected {other}: {}", r.text),
        }
    }
    let retry_after = retry_after.expect("the guesses were refused at some point");
    assert_eq!(
        allowed, limits.identity_limit,
        "wrong guesses answered before 429"
    );
    assert!(
        (1..=limits.window_seconds).contains(&retry_after),
        "Retry-After {retry_after} within the window of {} s",
        limits.window_seconds
    );
    // Refused even with the right number: the 429 tells the attacker nothing about a guess.
    app.receive(&attacker, &number, &insured())
        .await
        .assert_problem(429, "TOO_MANY_ATTEMPTS");
    let per_hour = allowed * 3600 / limits.window_seconds;
    println!(
        "guesses per hour for one identity: {per_hour} ({allowed} per {} s window; Retry-After {retry_after} s after the last)",
        limits.window_seconds
    );

    // One pharmacy over many identities, each kept below the identity limit.
    let mut allowed = 0;
    let mut refused = false;
    'identities: for n in 0.. {
        let mut identity = insured();
        identity["number"] = format!("7{n:05}").into();
        for guess in wrong_guesses("000000").take(limits.identity_limit as usize - 1) {
            let r = app.receive(&app.pharmacist_2(), &guess, &identity).await;
            match r.status {
                404 => allowed += 1,
                429 => {
                    r.assert_problem(429, "TOO_MANY_ATTEMPTS");
                    refused = true;
                    break 'identities;
                }
                other => panic!("unexpected {other}: {}", r.text),
            }
            assert!(allowed <= limits.pharmacy_limit + 20, "never refused");
        }
    }
    assert!(refused);
    assert_eq!(
        allowed, limits.pharmacy_limit,
        "wrong guesses answered before 429"
    );
    println!(
        "guesses per hour per pharmacy: {} ({allowed} per {} s window, over any identities)",
        allowed * 3600 / limits.window_seconds,
        limits.window_seconds
    );
}

/// A burst of wrong guesses for one identity, sent at once from one pharmacy: every answer is a
/// 404 or a 429, never a 503 (each failure used to take a second pooled connection while its
/// transaction held one, so a burst larger than the pool starved it), and exactly the limit is
/// answered: lookups for one identity and pharmacy run one after another (`throttle::serialize`)
/// and each commits its failure, so guesses sent at once get no more than guesses sent in turn.
#[tokio::test]
async fn a_burst_of_wrong_guesses_is_answered_404_or_429_never_503() {
    let app = TestApp::spawn_with(|s| s.database.pool_size = 8).await;
    let (_, number) = registered(&app).await;
    let limits = relay::config::ThrottleSettings::default();
    let burst = 40;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(burst));
    let mut tasks = Vec::new();
    for guess in wrong_guesses(&number).take(burst) {
        let http = app.http.clone();
        let url = format!("{}/v1/prescriptions/receive", app.address);
        let token = app.pharmacist();
        let body = json!({"exchange_number": guess, "insured": insured()});
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }));
    }
    let (mut answered, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (404, _) => answered += 1,
            (429, _) => refused += 1,
            (other, body) => panic!("unexpected {other}: {body}"),
        }
    }
    let recorded: i64 = app.sql_one("SELECT count(*) FROM receive_failures").await;
    println!(
        "{burst} concurrent wrong guesses for one identity (pool of 8): {answered} answered 404, \
         {refused} refused 429 (limit {}), {recorded} failures recorded",
        limits.identity_limit
    );
    assert_eq!(recorded, answered, "every 404 is counted");
    assert_eq!(
        answered, limits.identity_limit,
        "exactly the limit is answered, however the guesses arrive"
    );
    assert_eq!(refused, burst as i64 - limits.identity_limit);
    // Afterwards the identity is refused, the right number too.
    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(429, "TOO_MANY_ATTEMPTS");
}

/// A fallback request by 引換番号 and identity is a lookup too: its wrong guesses count with the
/// receive's and are refused the same way, or it would be a way round the throttle.
#[tokio::test]
async fn fallback_requests_by_number_are_throttled_with_the_receives() {
    let app = TestApp::spawn().await;
    let (_, number) = registered(&app).await;
    let limit = relay::config::ThrottleSettings::default().identity_limit;
    let fallback = |guess: &str| {
        json!({"exchange_number": guess, "insured": insured(),
               "reason": "薬局システム障害", "preferred": "fax"})
    };
    let mut guesses = wrong_guesses(&number);
    // Two wrong receives, then wrong fallback requests until refused.
    for guess in guesses.by_ref().take(2) {
        app.receive(&app.pharmacist(), &guess, &insured())
            .await
            .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    }
    let mut allowed = 0;
    for guess in guesses.by_ref().take(limit as usize + 20) {
        let r = app
            .post("/v1/fallbacks", &app.pharmacist(), &fallback(&guess))
            .await;
        match r.status {
            404 => allowed += 1,
            429 => {
                r.assert_problem(429, "TOO_MANY_ATTEMPTS");
                assert!(r.header("retry-after").is_some());
                break;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    println!("wrong guesses answered by POST /v1/fallbacks after 2 wrong receives: {allowed}");
    assert_eq!(allowed, limit - 2, "the receive's failures count too");
    // Refused with the right number as well, by either path, from another pharmacy too.
    app.post("/v1/fallbacks", &app.pharmacist_2(), &fallback(&number))
        .await
        .assert_problem(429, "TOO_MANY_ATTEMPTS");
    app.receive(&app.pharmacist_2(), &number, &insured())
        .await
        .assert_problem(429, "TOO_MANY_ATTEMPTS");
    // By prescription id (the holder's path) nothing is guessed: not throttled.
    app.sql("DELETE FROM receive_failures").await;
    let got = app.receive(&app.pharmacist(), &number, &insured()).await;
    assert_eq!(got.status, 200, "{}", got.text);
    app.sql(&format!(
        "INSERT INTO receive_failures (pharmacy_code, identity_hash) SELECT '{PHARMACY}', '\\x00' FROM generate_series(1, 40)"
    ))
    .await;
    let r = app
        .post(
            "/v1/fallbacks",
            &app.pharmacist(),
            &json!({"prescription_id": got.body["prescription_id"], "reason": "薬局システム障害", "preferred": "fax"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}
