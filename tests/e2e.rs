//! The README walk-through, across processes: migrate, seed, mint tokens, serve, register →
//! receive → dispense with plain HTTP, then SIGTERM and a check of what reached the logs.

use std::time::Duration;

use relay_e2e::*;
use serde_json::{Value, json};

async fn post(base: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = relay_e2e::http_client()
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
    let r = relay_e2e::http_client()
        .build()
        .expect("client")
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_walkthrough_across_processes() {
    let relay = Relay::new("walkthrough");

    let out = relay.run(&["migrate"]);
    assert!(out.status.success(), "migrate: {}", stderr(&out));
    assert!(stdout(&out).contains("applied"), "{}", stdout(&out));
    let out = relay.run(&["migrate"]);
    assert_eq!(stdout(&out), "database is up to date");

    for _ in 0..2 {
        let out = relay.run(&["seed", "demo"]);
        assert!(out.status.success(), "seed: {}", stderr(&out));
        assert!(stdout(&out).contains("12434 drugs"), "{}", stdout(&out));
    }

    // `master import`: a レセ電 master in Shift_JIS; a wrong file changes nothing.
    let out = relay.run(&[
        "master",
        "import",
        "--receipt",
        "relay/tests/fixtures/y-sample.csv",
    ]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("JSON report");
    assert_eq!(report["receipt_drugs"], 2);
    let out = relay.run(&[
        "master",
        "import",
        "--yakka",
        "../shared/data/contraindications-seed.csv",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("contraindications-seed.csv"),
        "{}",
        stderr(&out)
    );
    let out = relay.run(&["master", "import"]);
    assert!(!out.status.success(), "nothing to import is an error");
    let out = relay.run(&["seed", "demo"]);
    assert!(
        stdout(&out).contains("12434 drugs"),
        "the master is intact: {}",
        stdout(&out)
    );

    // The first token creates the signing key and says so; the second reuses it.
    let out = relay.run(&[
        "token",
        "--facility",
        "9918000010",
        "--role",
        "doctor",
        "--staff",
        "doctor-1",
    ]);
    assert!(out.status.success(), "token: {}", stderr(&out));
    assert!(
        stderr(&out).contains("created a new one"),
        "{}",
        stderr(&out)
    );
    assert!(exists(&relay.work.join("keys/relay-ed25519.pem")));
    let doctor = stdout(&out);
    assert_eq!(doctor.split('.').count(), 3);
    let out = relay.run(&[
        "token",
        "--facility",
        "9948000014",
        "--role",
        "pharmacist",
        "--staff",
        "pharmacist-1",
        "--ttl",
        "15m",
    ]);
    assert!(!stderr(&out).contains("created a new one"));
    let pharmacist = stdout(&out);
    let out = relay.run(&[
        "token",
        "--facility",
        "9948000015",
        "--role",
        "pharmacist",
        "--staff",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("check digit"), "{}", stderr(&out));
    let out = relay.run(&[
        "token",
        "--facility",
        "9948000014",
        "--role",
        "nurse",
        "--staff",
        "x",
    ]);
    assert!(!out.status.success());

    // Without a usable font the relay refuses to start, and says what to install.
    let out = relay
        .command(&["serve"])
        .env("RELAY_DOCUMENTS__FONT_PATH", "/nonexistent/font.ttc")
        .output()
        .expect("run relay serve");
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("/nonexistent/font.ttc") && message.contains("fonts-noto-cjk"),
        "{message}"
    );

    let mut server = relay.serve();
    let base = relay.base_url();

    let body = json!({
        "issue_type": "electronic",
        "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": "1975-07-07"},
        "insurance": {"insurer_number": "01130012", "symbol": "1234", "number": "7391846", "relationship": "insured", "branch": "01", "copay_rate": 30},
        "issued_on": relay::domain::time::today().to_string(),
        "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日3回毎食後", "times_per_day": 3},
                 "drugs": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 0.4, "unit": "g"}]}]
    });
    let (status, reg) = post(&base, "/v1/prescriptions", &doctor, &body).await;
    assert_eq!(status, 201, "{reg}");
    let id = reg["prescription_id"].as_str().unwrap().to_string();
    let number = reg["exchange_number"].as_str().unwrap().to_string();

    let insured = json!({"insurer_number": "01130012", "symbol": "1234", "number": "7391846", "branch": "01"});
    let (status, got) = post(
        &base,
        "/v1/prescriptions/receive",
        &pharmacist,
        &json!({"exchange_number": number, "insured": insured}),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["prescription"]["patient"]["name"], "髙橋 𠮷子");

    let (status, done) = post(&base, &format!("/v1/prescriptions/{id}/dispense"), &pharmacist, &json!({
        "dispensed_on": relay::domain::time::today().to_string(),
        "items": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 0.4, "unit": "g", "days": 7}],
        "important_note": "眠気の訴えあり"
    })).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "dispensed");

    let (status, view) = get(&base, &format!("/v1/prescriptions/{id}"), &doctor).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "dispensed");
    assert_eq!(view["has_important_note"], true);
    let (status, list) = get(
        &base,
        "/v1/prescriptions?insurer_number=01130012&symbol=1234&number=7391846&branch=01",
        &doctor,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["prescriptions"][0]["exchange_number"], number.as_str());

    // Graceful shutdown on SIGTERM: exit code 0.
    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("relay exits after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");

    // The logs saw the requests but no patient name or insurance number.
    let log = relay.log();
    assert!(
        log.contains("/v1/prescriptions/{id}/dispense"),
        "route patterns are logged:\n{log}"
    );
    assert!(log.contains("relay stopped"), "{log}");
    for secret in [
        "髙橋",
        "𠮷子",
        "タカハシ",
        "01130012",
        "7391846",
        "眠気",
        "postgres://postgres@",
    ] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

/// The card path across processes: a マイナ保険証 read at one pharmacy lists the patient's
/// prescriptions from two clinics and receives one; a second pharmacy then sees it held.
#[tokio::test(flavor = "multi_thread")]
async fn card_path_across_processes() {
    let relay = Relay::new("cardpath");
    relay.migrate_and_seed();
    let token = |facility: &str, role: &str, staff: &str| relay.token(facility, role, staff);
    let doctor_1 = token("9918000010", "doctor", "doctor-1");
    let doctor_2 = token("9918000028", "doctor", "doctor-2");
    let clerk_1 = token("9948000014", "pharmacy_clerk", "pharmacy-clerk-1");
    let pharmacist_2 = token("9948000022", "pharmacist", "pharmacist-2");

    let mut server = relay.serve();
    let base = relay.base_url();
    let today = relay::domain::time::today().to_string();
    let prescription = |drug: (&str, &str)| {
        json!({
            "issue_type": "electronic",
            "patient": {"name": "髙橋　𠮷子", "name_kana": "ﾀｶﾊｼ ﾖｼｺ", "sex": "female", "birth_date": "1975-07-07"},
            "insurance": {"insurer_number": "01130012", "symbol": "1234", "number": "5678",
                          "relationship": "insured", "branch": "01", "copay_rate": 30},
            "issued_on": today,
            "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回朝食後", "times_per_day": 1},
                     "drugs": [{"code_system": "yj", "code": drug.0, "name": drug.1, "dose": 1, "unit": "錠"}]}]
        })
    };
    let (status, first) = post(
        &base,
        "/v1/prescriptions",
        &doctor_1,
        &prescription(("1124001F1022", "ユーロジン１ｍｇ錠")),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = post(
        &base,
        "/v1/prescriptions",
        &doctor_2,
        &prescription(("2325003F1024", "ガスター錠１０ｍｇ")),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let wanted = second["prescription_id"].as_str().unwrap().to_string();

    // The card reader at 検証用薬局: face recognition, consent to share medication.
    let card = json!({"card_id": "CARD-0002", "auth": "face", "consent": {"medication": true}});
    let (status, q) = post(&base, "/v1/qualifications/card", &clerk_1, &card).await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(q["claim_basis"], "current");
    let qid = q["qualification_id"].as_str().unwrap().to_string();
    let (status, list) = get(
        &base,
        &format!("/v1/qualifications/{qid}/prescriptions"),
        &clerk_1,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let items = list["prescriptions"].as_array().unwrap();
    let mut issuers: Vec<&str> = items
        .iter()
        .map(|p| p["issuer"]["code"].as_str().unwrap())
        .collect();
    issuers.sort();
    assert_eq!(issuers, ["9918000010", "9918000028"], "{list}");
    let (status, got) = post(
        &base,
        &format!("/v1/prescriptions/{wanted}/receive"),
        &clerk_1,
        &json!({"qualification_id": qid}),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["holder"]["code"], "9948000014");
    assert_eq!(got["qualification"]["claim"]["insurer_number"], "01130012");

    // The same card at the second pharmacy: the prescription shows as held by the first.
    let (status, q2) = post(&base, "/v1/qualifications/card", &pharmacist_2, &card).await;
    assert_eq!(status, 201, "{q2}");
    let q2id = q2["qualification_id"].as_str().unwrap().to_string();
    let (_, list) = get(
        &base,
        &format!("/v1/qualifications/{q2id}/prescriptions"),
        &pharmacist_2,
    )
    .await;
    let held = list["prescriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prescription_id"] == wanted.as_str())
        .expect("still listed")
        .clone();
    assert_eq!(held["status"], "dispensing");
    assert_eq!(held["holder"]["name"], "検証用薬局");
    assert_eq!(held["receivable"], false);
    let (status, refused) = post(
        &base,
        &format!("/v1/prescriptions/{wanted}/receive"),
        &pharmacist_2,
        &json!({"qualification_id": q2id}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "HELD_BY_ANOTHER_PHARMACY");
    // The other one is still receivable there.
    let other = list["prescriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prescription_id"] != wanted.as_str())
        .unwrap()
        .clone();
    assert_eq!(other["receivable"], true);

    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("relay exits after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let log = relay.log();
    for secret in ["髙橋", "01130012", "CARD-0002"] {
        assert!(!log.contains(secret), "the log mentions {secret}:\n{log}");
    }
}
