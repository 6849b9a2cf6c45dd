//! No patient data in the relay's logs (ARCHITECTURE.md, "No patient data in logs"): a whole
//! working day through the real `relay serve` — a registry entry, registrations (one through a
//! check's override), a check with verbal consent, receive by 引換番号 with the insurance identity
//! and birth date, the card path, a fallback-ladder refusal, documents, a FAX fallback whose mail
//! fails, a cancellation, bad input of every kind (validation errors that echo the fields back,
//! malformed JSON, names in paths and query strings, a bad token) and guesses until throttled —
//! then the whole log is searched for what identifies the patient.
//!
//! Searched for (each also percent-encoded and as JSON `\u` escapes):
//! - the patient's names: 髙橋 𠮷子 (kanji, with 髙 and 𠮷 outside JIS X 0208), タカハシ ヨシコ
//!   (full-width kana, as registered) and ﾀｶﾊｼ ﾖｼｺ (half-width, as in the registry), in parts;
//! - the insurance identity: 保険者番号 06139273, 記号 港ア73 (also as typed, 港ア７３), 番号 7391846,
//!   and the card id;
//! - the birth date 1958-11-23 (also 19581123, 1958/11/23, 昭和33年);
//! - free text a patient may be named in: the dispensing note, a cancellation reason, a fallback
//!   note;
//! - every 引換番号 issued, as a whole token: with the insurance identity it is all a pharmacy
//!   needs to take the prescription and read it, so a log that holds numbers is one leaked
//!   identity away from the prescriptions; unlike the identity it is not needed to follow a
//!   request (the prescription id is);
//! - every bearer token.
//!
//! Run twice: as production runs (RELAY_ENV=production: JSON, level info) and at debug, where
//! libraries log more than the relay does (tokio-postgres logs statement parameters at debug; the
//! relay caps it at info).

use relay_e2e::*;
use serde_json::{Value, json};

const CLINIC: &str = "9918000010";
const CLINIC_2: &str = "9918000028";
const PHARMACY: &str = "9948000014";

const INSURER: &str = "06139273";
const SYMBOL_TYPED: &str = "港ア７３";
const NUMBER: &str = "7391846";
const CARD: &str = "CARD-LP-7391";
const BIRTH: &str = "1958-11-23";

fn today() -> String {
    relay::domain::time::today().to_string()
}

fn identity() -> Value {
    json!({"insurer_number": INSURER, "symbol": SYMBOL_TYPED, "number": NUMBER, "branch": "02"})
}

fn prescription(drug: (&str, &str)) -> Value {
    json!({
        "issue_type": "electronic",
        "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": BIRTH},
        "insurance": {"insurer_number": INSURER, "symbol": SYMBOL_TYPED, "number": NUMBER,
                      "relationship": "insured", "branch": "02", "copay_rate": 30},
        "issued_on": today(),
        "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回朝食後", "times_per_day": 1},
                 "drugs": [{"code_system": "yj", "code": drug.0, "name": drug.1, "dose": 1, "unit": "錠"}]}]
    })
}

const FAMOTIDINE: (&str, &str) = ("2325003F1024", "ガスター錠１０ｍｇ");
const ESTAZOLAM: (&str, &str) = ("1124001F1022", "ユーロジン１ｍｇ錠");
const AMLODIPINE: (&str, &str) = ("2171022F1045", "アムロジン錠２．５ｍｇ");

/// What the session used that identifies the patient, and the numbers and tokens it was given.
struct Secrets {
    exchange_numbers: Vec<String>,
    tokens: Vec<String>,
}

/// `s` as it could appear in a log: itself, percent-encoded (either case), JSON-escaped.
fn encodings(s: &str) -> Vec<String> {
    let percent: String = s
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let escaped: String = s
        .encode_utf16()
        .map(|u| {
            if u < 0x80 {
                char::from(u as u8).to_string()
            } else {
                format!("\\u{u:04x}")
            }
        })
        .collect();
    let mut all = vec![s.to_string()];
    for e in [percent.clone(), percent.to_lowercase(), escaped] {
        if !all.contains(&e) {
            all.push(e);
        }
    }
    all
}

/// True when `needle` occurs in `hay` as a whole token (not inside a longer run of letters or
/// digits, as 6 digits can inside a timestamp's microseconds or a UUID).
fn contains_token(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Every finding of patient data in `log`, as "what: line".
fn findings(log: &str, secrets: &Secrets) -> Vec<String> {
    let fixed = [
        "髙橋",
        "𠮷子",
        "タカハシ",
        "ヨシコ",
        "ﾀｶﾊｼ",
        "ﾖｼｺ",
        INSURER,
        "港ア73",
        SYMBOL_TYPED,
        NUMBER,
        CARD,
        BIRTH,
        "19581123",
        "1958/11/23",
        "昭和33年",
        "眠気の訴えあり",
        "本人の希望",
        "髙橋様",
    ];
    let mut found = Vec::new();
    for secret in fixed {
        for form in encodings(secret) {
            for line in log.lines().filter(|l| l.contains(&form)) {
                found.push(format!("{secret} ({form}): {line}"));
            }
        }
    }
    for number in &secrets.exchange_numbers {
        for line in log.lines().filter(|l| contains_token(l, number)) {
            found.push(format!("引換番号 {number}: {line}"));
        }
    }
    for token in &secrets.tokens {
        let signature = token.rsplit('.').next().unwrap_or(token);
        for line in log.lines().filter(|l| l.contains(signature)) {
            found.push(format!("a bearer token: {line}"));
        }
    }
    found
}

/// The session, against a relay serving on `relay` with `env`; returns what must not be logged.
async fn working_day(relay: &Relay, env: &[(&str, &str)]) -> Secrets {
    let keys = relay.keys();
    let admin = mint(&keys, CLINIC, "admin", "admin-1");
    let doctor = mint(&keys, CLINIC, "doctor", "doctor-1");
    let doctor_2 = mint(&keys, CLINIC_2, "doctor", "doctor-2");
    let pharmacist = mint(&keys, PHARMACY, "pharmacist", "pharmacist-1");
    let clerk = mint(&keys, PHARMACY, "pharmacy_clerk", "pharmacy-clerk-1");
    let mut secrets = Secrets {
        exchange_numbers: Vec::new(),
        tokens: vec![
            admin.clone(),
            doctor.clone(),
            doctor_2.clone(),
            pharmacist.clone(),
            clerk.clone(),
        ],
    };
    // Mail goes to a port nothing listens on: the worker logs its failed attempts.
    let smtp = format!("smtp://127.0.0.1:{}", free_port());
    let mut environment = vec![
        ("RELAY_SMTP_URL", smtp.as_str()),
        ("RELAY_MAIL__POLL_INTERVAL_MS", "200"),
    ];
    environment.extend_from_slice(env);
    let server = relay.serve_with(&environment);
    let api = Api::new(&relay.base_url());
    let ok = |what: &str, (status, body): (u16, Value), expected: u16| {
        assert_eq!(status, expected, "{what}: {body}");
        body
    };

    // The registry learns the patient (with a card).
    ok(
        "registry",
        api.post(
            "/v1/admin/insured",
            &admin,
            &json!({
                "insurer_number": INSURER, "symbol": SYMBOL_TYPED, "number": NUMBER, "branch": "02",
                "name": "髙橋 𠮷子", "name_kana": "ﾀｶﾊｼ ﾖｼｺ", "sex": "female", "birth_date": BIRTH,
                "valid_from": "2024-04-01",
                "card": {"card_id": CARD, "certificate_expires_on": "2030-03-31"},
                "documents": ["eligibility_notice"], "address": "東京都港区芝公園4-2-8"
            }),
        )
        .await,
        201,
    );

    // Registrations: three drugs, then the same drug again through the check's override.
    let mut register = async |drug: (&str, &str)| {
        let body = ok(
            "registration",
            api.post("/v1/prescriptions", &doctor, &prescription(drug))
                .await,
            201,
        );
        secrets
            .exchange_numbers
            .push(body["exchange_number"].as_str().unwrap().to_string());
        (
            body["prescription_id"].as_str().unwrap().to_string(),
            body["exchange_number"].as_str().unwrap().to_string(),
        )
    };
    let (by_number, number_a) = register(FAMOTIDINE).await;
    let (by_card, _) = register(ESTAZOLAM).await;
    let (_, number_c) = register(AMLODIPINE).await;
    // Another clinic's check by identity and birth date, revealed by a verbal consent.
    let check = ok(
        "check",
        api.post("/v1/checks", &doctor_2, &json!({
            "patient": {"insured": identity(), "birth_date": BIRTH},
            "context": "prescribing",
            "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回", "times_per_day": 1},
                     "drugs": [{"code_system": "yj", "code": ESTAZOLAM.0, "name": ESTAZOLAM.1, "dose": 1, "unit": "錠"}]}]
        }))
        .await,
        201,
    );
    assert_eq!(check["outcome"], "hits", "{check}");
    let check_id = check["check_id"].as_str().unwrap();
    ok(
        "verbal consent",
        api.post(
            &format!("/v1/checks/{check_id}/verbal-consent"),
            &doctor_2,
            &json!({"note": "髙橋様 口頭同意"}),
        )
        .await,
        200,
    );

    // The number path, typed as read out (full-width, hyphen), with the birth date; dispensed.
    let typed: String = number_a
        .chars()
        .map(|c| char::from_u32(c as u32 - 0x30 + 0xFF10).unwrap())
        .collect();
    let typed = format!("{}－{}", &typed[..9], &typed[9..]);
    ok(
        "receive",
        api.post(
            "/v1/prescriptions/receive",
            &pharmacist,
            &json!({"exchange_number": typed, "insured": identity(), "birth_date": BIRTH}),
        )
        .await,
        200,
    );
    ok(
        "dispense",
        api.post(&format!("/v1/prescriptions/{by_number}/dispense"), &pharmacist, &json!({
            "dispensed_on": today(),
            "items": [{"code_system": "yj", "code": FAMOTIDINE.0, "name": FAMOTIDINE.1, "dose": 1, "unit": "錠", "days": 7}],
            "important_note": "眠気の訴えあり"
        }))
        .await,
        200,
    );

    // The same drug again: refused by the check, registered through the override.
    let refused = ok(
        "duplicate",
        api.post("/v1/prescriptions", &doctor, &prescription(FAMOTIDINE))
            .await,
        409,
    );
    let check_id = refused["check"]["check_id"].as_str().unwrap().to_string();
    ok(
        "override",
        api.post(
            &format!("/v1/checks/{check_id}/override"),
            &doctor,
            &json!({"reason": "髙橋様の前回分は中止済み"}),
        )
        .await,
        200,
    );
    let mut overridden = prescription(FAMOTIDINE);
    overridden["check_id"] = json!(check_id);
    let body = ok(
        "registration with override",
        api.post("/v1/prescriptions", &doctor, &overridden).await,
        201,
    );
    secrets
        .exchange_numbers
        .push(body["exchange_number"].as_str().unwrap().to_string());
    let duplicate = body["prescription_id"].as_str().unwrap().to_string();

    // The card path: the reader, the list, receive, release.
    let q = ok(
        "card",
        api.post(
            "/v1/qualifications/card",
            &clerk,
            &json!({"card_id": CARD, "auth": "face", "consent": {"medication": true}}),
        )
        .await,
        201,
    );
    let qid = q["qualification_id"].as_str().unwrap();
    ok(
        "card list",
        api.get(&format!("/v1/qualifications/{qid}/prescriptions"), &clerk)
            .await,
        200,
    );
    ok(
        "receive by card",
        api.post(
            &format!("/v1/prescriptions/{by_card}/receive"),
            &clerk,
            &json!({"qualification_id": qid}),
        )
        .await,
        200,
    );
    ok(
        "release",
        api.post(
            &format!("/v1/prescriptions/{by_card}/release"),
            &pharmacist,
            &json!({"reason": "患者が別の薬局を希望"}),
        )
        .await,
        200,
    );
    // The fallback ladder: a notice without the card is refused (and audited).
    ok(
        "ladder",
        api.post(
            "/v1/qualifications",
            &clerk,
            &json!({"method": "eligibility_notice", "card_presented": false,
                    "insured": {"insurer_number": INSURER, "symbol": SYMBOL_TYPED, "number": NUMBER,
                                "branch": "02", "birth_date": BIRTH}}),
        )
        .await,
        422,
    );

    // Documents, and the clinic's lost-控え search by identity (a query string).
    for doc in ["sj1", "copy.pdf", "paper.pdf"] {
        let (status, _) = api
            .get_bytes(&format!("/v1/prescriptions/{by_card}/{doc}"), &doctor)
            .await;
        assert_eq!(status, 200, "{doc}");
    }
    let search = format!(
        "/v1/prescriptions?insurer_number={INSURER}&symbol=%E6%B8%AF%E3%82%A273&number={NUMBER}&branch=02"
    );
    let found = ok("search", api.get(&search, &doctor).await, 200);
    assert!(!found["prescriptions"].as_array().unwrap().is_empty());

    // The FAX fallback, by number and identity; its mails fail at the closed port.
    let case = ok(
        "fallback",
        api.post(
            "/v1/fallbacks",
            &pharmacist,
            &json!({"exchange_number": number_c, "insured": identity(),
                    "reason": "薬局システム障害", "preferred": "fax", "note": "髙橋様 来局済み"}),
        )
        .await,
        201,
    );
    let fallback = case["fallback_id"].as_str().unwrap();
    ok(
        "resolve",
        api.post(
            &format!("/v1/fallbacks/{fallback}/resolve"),
            &doctor,
            &json!({"mode": "fax"}),
        )
        .await,
        200,
    );
    // A cancellation whose reason names the patient.
    ok(
        "cancel",
        api.post(
            &format!("/v1/prescriptions/{duplicate}/cancel"),
            &doctor,
            &json!({"reason": "髙橋 𠮷子さん本人の希望"}),
        )
        .await,
        200,
    );

    // Bad input that the answers echo back.
    let mut bad = prescription(ESTAZOLAM);
    bad["patient"]["sex"] = json!("髙橋 𠮷子");
    bad["patient"]["birth_date"] = json!("1958-11-23 髙橋");
    ok(
        "type errors",
        api.post("/v1/prescriptions", &doctor, &bad).await,
        422,
    );
    let mut bad = prescription(ESTAZOLAM);
    bad["patient"]["name"] = json!("髙橋 𠮷子".repeat(40));
    bad["insurance"]["insurer_number"] = json!("06139274");
    bad["patient"]["birth_date"] = json!("2199-11-23");
    ok(
        "field errors",
        api.post("/v1/prescriptions", &doctor, &bad).await,
        422,
    );
    let malformed = format!(r#"{{"patient": {{"name": "髙橋 𠮷子", "birth_date": "{BIRTH}""#);
    assert_eq!(
        api.post_raw("/v1/prescriptions", &doctor, "application/json", &malformed)
            .await,
        400
    );
    ok(
        "bad receive",
        api.post(
            "/v1/prescriptions/receive",
            &pharmacist,
            &json!({"exchange_number": "髙橋", "insured": {"insurer_number": "06139274",
                    "symbol": SYMBOL_TYPED, "number": NUMBER, "branch": "髙橋"}, "birth_date": "2199-11-23"}),
        )
        .await,
        422,
    );
    ok(
        "bad registry entry",
        api.post(
            "/v1/admin/insured",
            &admin,
            &json!({
                "insurer_number": INSURER, "symbol": SYMBOL_TYPED, "number": NUMBER, "branch": "0",
                "name": "髙橋 𠮷子", "sex": "髙橋", "birth_date": BIRTH, "valid_from": "2024-04-01"
            }),
        )
        .await,
        422,
    );
    ok(
        "bad card",
        api.post(
            "/v1/qualifications/card",
            &clerk,
            &json!({"card_id": "髙橋 𠮷子", "auth": "face"}),
        )
        .await,
        422,
    );
    for path in [
        "/v1/prescriptions/%E9%AB%99%E6%A9%8B%20%F0%A0%AE%B7%E5%AD%90",
        "/v1/patients/%E9%AB%99%E6%A9%8B/1958-11-23",
        "/v1/fallbacks?status=%E9%AB%99%E6%A9%8B",
        "/v1/prescriptions?insurer_number=06139274&number=7391846&issued_from=1958-11-23&issued_to=1958-11-22",
    ] {
        let (status, body) = api.get(path, &doctor).await;
        assert!(
            [404, 422].contains(&status) && body["code"].is_string(),
            "{path}: {status} {body}"
        );
    }
    assert_eq!(
        api.get("/v1/prescriptions", "eyJhbGciOiJub25lIn0.e30.")
            .await
            .0,
        401
    );

    // Guesses until throttled, by receive and by fallback request.
    let right: u32 = number_c.parse().unwrap();
    let guesses: Vec<String> = (1..)
        .map(|i| format!("{:06}", (right + i) % 1_000_000))
        .filter(|g| !secrets.exchange_numbers.contains(g))
        .take(6)
        .collect();
    let mut statuses = Vec::new();
    for (i, guess) in guesses.into_iter().enumerate() {
        secrets.exchange_numbers.push(guess.clone());
        let (status, _) = if i % 2 == 1 {
            api.post(
                "/v1/fallbacks",
                &pharmacist,
                &json!({"exchange_number": guess, "insured": identity(),
                        "reason": "薬局システム障害", "preferred": "fax"}),
            )
            .await
        } else {
            api.post(
                "/v1/prescriptions/receive",
                &pharmacist,
                &json!({"exchange_number": guess, "insured": identity(), "birth_date": BIRTH}),
            )
            .await
        };
        statuses.push(status);
    }
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429]);

    // The worker has failed the mails at least once before the relay stops.
    stop_after_mail_attempts(relay, server).await;
    secrets
}

fn assert_clean(relay: &Relay, secrets: &Secrets, must_show: &[&str]) {
    let log = relay.log();
    for evidence in must_show {
        assert!(
            log.contains(evidence),
            "the log should show {evidence:?}, or this test checks nothing:\n{log}"
        );
    }
    let found = findings(&log, secrets);
    println!(
        "{} log lines ({} bytes), {} 引換番号 and {} tokens searched: {} findings",
        log.lines().count(),
        log.len(),
        secrets.exchange_numbers.len(),
        secrets.tokens.len(),
        found.len()
    );
    assert!(
        found.is_empty(),
        "patient data in the log ({}):\n{}",
        relay.log_path().display(),
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_production_log_holds_no_patient_data() {
    let relay = Relay::new("log_privacy_production");
    relay.migrate_and_seed();
    // config/production.toml: JSON lines, the default filter (info).
    let secrets = working_day(&relay, &[("RELAY_ENV", "production")]).await;
    assert_clean(
        &relay,
        &secrets,
        &[
            r#""level":"INFO""#,
            "/v1/prescriptions/receive",
            "TOO_MANY_ATTEMPTS",
            "VALIDATION_FAILED",
            "MALFORMED_JSON",
            "qualification refused",
            "mail delivery failed",
            "relay stopped",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_debug_log_holds_no_patient_data() {
    let relay = Relay::new("log_privacy_debug");
    relay.migrate_and_seed();
    // tokio-postgres asked for by name too: the relay keeps its statement parameters out anyway.
    let secrets = working_day(
        &relay,
        &[("RELAY_LOG__FILTER", "debug,tokio_postgres=debug")],
    )
    .await;
    assert_clean(
        &relay,
        &secrets,
        &["DEBUG", "/v1/prescriptions/receive", "TOO_MANY_ATTEMPTS"],
    );
}

/// A statement error is logged without the values the server quotes in it (DETAIL of a unique or
/// check violation, the message of a data exception), but with what names the failure.
#[tokio::test(flavor = "multi_thread")]
async fn database_errors_are_logged_without_the_values() {
    let url = fresh_database("log_privacy_db_errors");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE patients (name text CONSTRAINT patients_name UNIQUE,
                                    birth date CONSTRAINT patients_born CHECK (birth > '1900-01-01'));
             INSERT INTO patients VALUES ('髙橋 𠮷子', '1958-11-23')",
        )
        .await
        .expect("table");
    for (sql, names) in [
        (
            "INSERT INTO patients VALUES ('髙橋 𠮷子', '1958-11-23')",
            "constraint=patients_name",
        ),
        (
            "INSERT INTO patients VALUES ('タカハシ', '1858-11-23')",
            "constraint=patients_born",
        ),
        ("SELECT '髙橋 𠮷子 1958-11-23'::date", "22007"),
    ] {
        let err = client.execute(sql, &[]).await.expect_err(sql);
        let raw = err
            .as_db_error()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            raw.contains("髙橋") || raw.contains("タカハシ"),
            "the server quotes the values: {raw}"
        );
        let logged = relay::db::DbError::from(err).to_string();
        assert!(logged.contains(names), "{logged}");
        for secret in ["髙橋", "𠮷子", "タカハシ", "1958", "1858"] {
            assert!(!logged.contains(secret), "{secret} in {logged:?}");
        }
        println!(
            "{sql}\n  server: {}\n  logged: {logged}",
            raw.replace('\n', " | ")
        );
    }
}
