use crate::helpers::*;
use jiff::ToSpan;
use serde_json::{Value, json};

/// A change to a valid prescription body.
type Change = Box<dyn FnOnce(&mut Value)>;

/// Applies `change` to a valid prescription and returns the (field, code) pairs of the 422.
async fn errors_for(app: &TestApp, change: impl FnOnce(&mut Value)) -> Vec<(String, String)> {
    let mut body = prescription();
    change(&mut body);
    let r = app.post("/v1/prescriptions", &app.doctor(), &body).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    r.field_errors()
}

#[tokio::test]
async fn registration_issues_a_six_digit_exchange_number() {
    let app = TestApp::spawn().await;
    let r = app.register(&prescription()).await;
    let number = r["exchange_number"].as_str().unwrap();
    assert_eq!(number.len(), 6);
    assert!(number.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(r["status"], "registered");
    assert_eq!(r["issue_type"], "electronic");
    // Default 使用期限: issued_on + 3 days.
    let expected = today().checked_add(3.days()).unwrap().to_string();
    assert_eq!(r["valid_until"], expected);
    // The check ran inside registration: nothing else is registered for the patient.
    assert_eq!(r["check"]["outcome"], "clear");
    assert!(r["check"]["check_id"].is_string());
    assert_eq!(
        r["warnings"],
        serde_json::json!([]),
        "every character fits Shift_JIS"
    );
    // Stored as text with its leading zeros, and the event is written.
    let id = r["prescription_id"].as_str().unwrap();
    let stored: String = app
        .sql_one(&format!(
            "SELECT exchange_number FROM prescriptions WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(stored, number);
    let events: i64 = app
        .sql_one(&format!(
            "SELECT count(*) FROM prescription_events WHERE prescription_id = '{id}' AND action = 'registered'"
        ))
        .await;
    assert_eq!(events, 1);
}

#[tokio::test]
async fn paper_with_exchange_number_and_names_outside_jis_are_kept() {
    let app = TestApp::spawn().await;
    let mut body = prescription();
    body["issue_type"] = "paper_with_exchange_number".into();
    body["patient"]["name"] = "髙橋 𠮷子".into();
    body["doctor"] = json!({"name": "山﨑 德"});
    body["public_expenses"] = json!([{"payer_number": "12130001", "recipient_number": "1234566"}]);
    body["refill_count"] = 3.into();
    body["remarks"] = "残薬調整のうえ".into();
    let r = app.register(&body).await;
    assert_eq!(r["issue_type"], "paper_with_exchange_number");
    let id = r["prescription_id"].as_str().unwrap();
    let got = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let p = &got.body["prescription"];
    assert_eq!(p["patient"]["name"], "髙橋 𠮷子");
    assert_eq!(p["doctor"]["name"], "山﨑 德");
    assert_eq!(p["refill_count"], 3);
    assert_eq!(p["public_expenses"][0]["payer_number"], "12130001");
    assert_eq!(p["rps"][1]["drugs"][0]["dose"], json!(0.5));
    assert_eq!(got.body["issuer"]["name"], "検証用病院");
    assert_eq!(got.body["refill_count"], 3);
}

#[tokio::test]
async fn the_doctor_defaults_to_the_staff_registry() {
    let app = TestApp::spawn().await;
    let r = app.register(&prescription()).await;
    let id = r["prescription_id"].as_str().unwrap();
    let got = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    assert_eq!(got.body["prescription"]["doctor"]["name"], "医者　三郎");
    assert_eq!(got.body["issued_by"], "doctor-1");
}

#[tokio::test]
async fn every_validation_rule_names_its_field() {
    let app = TestApp::spawn().await;
    let tomorrow = today().checked_add(1.day()).unwrap().to_string();
    let long_ago = today().checked_sub(30.days()).unwrap().to_string();
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        (
            "insurer check digit",
            Box::new(|b| b["insurance"]["insurer_number"] = "06123456".into()),
            "insurance.insurer_number",
            "CHECK_DIGIT",
        ),
        (
            "insurer length",
            Box::new(|b| b["insurance"]["insurer_number"] = "0113001".into()),
            "insurance.insurer_number",
            "FORMAT",
        ),
        (
            "insurer letters",
            Box::new(|b| b["insurance"]["insurer_number"] = "0113001A".into()),
            "insurance.insurer_number",
            "FORMAT",
        ),
        (
            "branch one digit",
            Box::new(|b| b["insurance"]["branch"] = "1".into()),
            "insurance.branch",
            "FORMAT",
        ),
        (
            "number empty",
            Box::new(|b| b["insurance"]["number"] = "".into()),
            "insurance.number",
            "REQUIRED",
        ),
        (
            "symbol too long",
            Box::new(|b| b["insurance"]["symbol"] = "x".repeat(21).into()),
            "insurance.symbol",
            "TOO_LONG",
        ),
        (
            "copay 35",
            Box::new(|b| b["insurance"]["copay_rate"] = 35.into()),
            "insurance.copay_rate",
            "OUT_OF_RANGE",
        ),
        (
            "patient name blank",
            Box::new(|b| b["patient"]["name"] = "  ".into()),
            "patient.name",
            "REQUIRED",
        ),
        (
            "birth in future",
            Box::new(move |b| b["patient"]["birth_date"] = tomorrow.clone().into()),
            "patient.birth_date",
            "IN_FUTURE",
        ),
        (
            "issued in future",
            Box::new(|b| b["issued_on"] = today().checked_add(1.day()).unwrap().to_string().into()),
            "issued_on",
            "IN_FUTURE",
        ),
        (
            "valid_until before issue",
            Box::new(|b| {
                b["valid_until"] = today().checked_sub(1.day()).unwrap().to_string().into()
            }),
            "valid_until",
            "BEFORE_ISSUE_DATE",
        ),
        (
            "already expired",
            Box::new(move |b| b["issued_on"] = long_ago.clone().into()),
            "valid_until",
            "IN_PAST",
        ),
        (
            "refill 1",
            Box::new(|b| b["refill_count"] = 1.into()),
            "refill_count",
            "OUT_OF_RANGE",
        ),
        (
            "refill 4",
            Box::new(|b| b["refill_count"] = 4.into()),
            "refill_count",
            "OUT_OF_RANGE",
        ),
        (
            "no rps",
            Box::new(|b| b["rps"] = json!([])),
            "rps",
            "REQUIRED",
        ),
        (
            "no drugs",
            Box::new(|b| b["rps"][0]["drugs"] = json!([])),
            "rps[0].drugs",
            "REQUIRED",
        ),
        (
            "quantity zero",
            Box::new(|b| b["rps"][0]["quantity"] = 0.into()),
            "rps[0].quantity",
            "OUT_OF_RANGE",
        ),
        (
            "quantity negative",
            Box::new(|b| b["rps"][1]["quantity"] = (-3).into()),
            "rps[1].quantity",
            "OUT_OF_RANGE",
        ),
        (
            "dose zero",
            Box::new(|b| b["rps"][0]["drugs"][0]["dose"] = 0.into()),
            "rps[0].drugs[0].dose",
            "OUT_OF_RANGE",
        ),
        (
            "dose negative",
            Box::new(|b| b["rps"][1]["drugs"][0]["dose"] = (-1.5).into()),
            "rps[1].drugs[0].dose",
            "OUT_OF_RANGE",
        ),
        (
            "usage text empty",
            Box::new(|b| b["rps"][0]["usage"]["text"] = "".into()),
            "rps[0].usage.text",
            "REQUIRED",
        ),
        (
            "times per day 0",
            Box::new(|b| b["rps"][0]["usage"]["times_per_day"] = 0.into()),
            "rps[0].usage.times_per_day",
            "OUT_OF_RANGE",
        ),
        (
            "usage code short",
            Box::new(|b| b["rps"][0]["usage"]["code"] = "123".into()),
            "rps[0].usage.code",
            "FORMAT",
        ),
        (
            "unit empty",
            Box::new(|b| b["rps"][0]["drugs"][0]["unit"] = "".into()),
            "rps[0].drugs[0].unit",
            "REQUIRED",
        ),
        (
            "drug name empty",
            Box::new(|b| b["rps"][0]["drugs"][0]["name"] = "".into()),
            "rps[0].drugs[0].name",
            "REQUIRED",
        ),
        (
            "yj malformed",
            Box::new(|b| b["rps"][0]["drugs"][0]["code"] = "12345".into()),
            "rps[0].drugs[0].code",
            "FORMAT",
        ),
        (
            "yj unknown",
            Box::new(|b| b["rps"][0]["drugs"][0]["code"] = "1124001F1099".into()),
            "rps[0].drugs[0].code",
            "UNKNOWN_DRUG_CODE",
        ),
        (
            "yj dummy",
            Box::new(|b| b["rps"][0]["drugs"][0]["code"] = "9999999Z9999".into()),
            "rps[0].drugs[0].code",
            "UNKNOWN_DRUG_CODE",
        ),
        (
            "generic unknown",
            Box::new(|b| b["rps"][1]["drugs"][0]["code"] = "9999999Z9ZZZ".into()),
            "rps[1].drugs[0].code",
            "UNKNOWN_DRUG_CODE",
        ),
        (
            "generic malformed",
            Box::new(|b| b["rps"][1]["drugs"][0]["code"] = "2325003B2029".into()),
            "rps[1].drugs[0].code",
            "FORMAT",
        ),
        (
            "public payer check digit",
            Box::new(|b| b["public_expenses"] = json!([{"payer_number": "12130002"}])),
            "public_expenses[0].payer_number",
            "CHECK_DIGIT",
        ),
        (
            "public recipient length",
            Box::new(|b| {
                b["public_expenses"] =
                    json!([{"payer_number": "12130001", "recipient_number": "123"}])
            }),
            "public_expenses[0].recipient_number",
            "FORMAT",
        ),
        (
            "four public expenses",
            Box::new(
                |b| b["public_expenses"] = json!([{"payer_number": "12130001"}, {"payer_number": "12130001"}, {"payer_number": "12130001"}, {"payer_number": "12130001"}]),
            ),
            "public_expenses",
            "TOO_MANY",
        ),
        // Type errors name the field too.
        (
            "sex unknown",
            Box::new(|b| b["patient"]["sex"] = "other".into()),
            "patient.sex",
            "INVALID_VALUE",
        ),
        (
            "dosage form unknown",
            Box::new(|b| b["rps"][0]["dosage_form"] = "spray".into()),
            "rps[0].dosage_form",
            "INVALID_VALUE",
        ),
        (
            "quantity as text",
            Box::new(|b| b["rps"][0]["quantity"] = "14".into()),
            "rps[0].quantity",
            "INVALID_TYPE",
        ),
        (
            "bad date",
            Box::new(|b| b["issued_on"] = "2026-02-30".into()),
            "issued_on",
            "INVALID_VALUE",
        ),
        (
            "missing insurance",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("insurance");
            }),
            "insurance",
            "REQUIRED",
        ),
        (
            "missing patient name",
            Box::new(|b| {
                b["patient"].as_object_mut().unwrap().remove("name");
            }),
            "patient.name",
            "REQUIRED",
        ),
        (
            "unknown field",
            Box::new(|b| b["valid_untill"] = "2026-01-01".into()),
            "valid_untill",
            "UNKNOWN_FIELD",
        ),
    ];
    for (what, change, field, code) in cases {
        let errors = errors_for(&app, change).await;
        assert!(
            errors.contains(&(field.to_string(), code.to_string())),
            "{what}: expected {field}/{code}, got {errors:?}"
        );
    }
    // Nothing was registered by any of them.
    let n: i64 = app.sql_one("SELECT count(*) FROM prescriptions").await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn all_bad_fields_are_listed_at_once() {
    let app = TestApp::spawn().await;
    let errors = errors_for(&app, |b| {
        b["insurance"]["insurer_number"] = "06123456".into();
        b["insurance"]["branch"] = "001".into();
        b["rps"][0]["quantity"] = 0.into();
        b["rps"][1]["drugs"][0]["code"] = "9999999Z9ZZZ".into();
    })
    .await;
    let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
    for f in [
        "insurance.insurer_number",
        "insurance.branch",
        "rps[0].quantity",
        "rps[1].drugs[0].code",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_or_422_never_500() {
    let app = TestApp::spawn().await;
    let doctor = app.doctor();
    for (body, status) in [
        ("{", 400),
        ("", 400),
        ("null", 422),
        ("[]", 422),
        ("\"text\"", 422),
        ("{\"issue_type\": 5}", 422),
        ("{\"rps\": {}}", 422),
        (
            "{\"issue_type\":\"electronic\",\"patient\":{\"name\":\"a\",\"sex\":\"male\",\"birth_date\":\"1990-01-01\"},\"insurance\":{\"insurer_number\":1,\"number\":\"1\",\"relationship\":\"insured\",\"branch\":\"01\"},\"issued_on\":\"2026-01-01\",\"rps\":[]}",
            422,
        ),
    ] {
        let r = app
            .post_raw("/v1/prescriptions", &doctor, "application/json", body)
            .await;
        assert_eq!(r.status, status, "{body:?} → {}", r.text);
        assert!(r.body["code"].is_string());
    }
    let r = app
        .post_raw("/v1/prescriptions", &doctor, "text/plain", "hello")
        .await;
    r.assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    // A huge body is refused, not crashed on.
    let big = format!("{{\"remarks\": \"{}\"}}", "x".repeat(1_000_000));
    let r = app
        .post_raw("/v1/prescriptions", &doctor, "application/json", &big)
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
}

#[tokio::test]
async fn receipt_codes_need_an_imported_receipt_master() {
    let app = TestApp::spawn().await;
    let mut body = prescription();
    body["rps"][0]["drugs"][0] = json!({"code_system": "receipt", "code": "610406079", "name": "ガスター散２％", "dose": 0.5, "unit": "g"});
    let r = app.post("/v1/prescriptions", &app.doctor(), &body).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(
        r.field_errors(),
        vec![(
            "rps[0].drugs[0].code".to_string(),
            "RECEIPT_MASTER_NOT_LOADED".to_string()
        )]
    );
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/y-sample.csv");
    let report = relay::seed::import_master(
        &app.pool,
        &relay::seed::MasterFiles {
            receipt: Some(fixture),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.receipt_drugs, 2);
    // ガスター散 and 【般】ファモチジン散 duplicate each other inside this prescription.
    app.register_overriding(&app.doctor(), &body).await;
    body["rps"][0]["drugs"][0]["code"] = "610406080".into();
    let r = app.post("/v1/prescriptions", &app.doctor(), &body).await;
    assert_eq!(
        r.field_errors(),
        vec![(
            "rps[0].drugs[0].code".to_string(),
            "UNKNOWN_DRUG_CODE".to_string()
        )]
    );
}

#[tokio::test]
async fn exchange_numbers_are_random_and_unique_per_patient() {
    let app = TestApp::spawn().await;
    let mut numbers = Vec::new();
    for _ in 0..30 {
        let r = app
            .register_overriding(&app.doctor(), &prescription())
            .await;
        numbers.push(
            r["exchange_number"]
                .as_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    let mut unique = numbers.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        numbers.len(),
        "unique among open prescriptions"
    );
    let sequential = numbers.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(sequential < 3, "numbers look sequential: {numbers:?}");
    // The database enforces it too: a second open prescription with the same number is refused.
    let err = app
        .pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO prescriptions (id, issuer_code, issued_by, issue_type, status, exchange_number,
               insurer_number, symbol, number, branch, birth_date, issued_on, valid_until, document)
             SELECT gen_random_uuid(), issuer_code, issued_by, issue_type, 'registered', exchange_number,
               insurer_number, symbol, number, branch, birth_date, issued_on, valid_until, document
             FROM prescriptions LIMIT 1",
        )
        .await;
    assert!(err.is_err(), "duplicate open exchange number accepted");
}

#[tokio::test]
async fn get_is_for_the_issuer_and_the_holder_only() {
    let app = TestApp::spawn().await;
    let r = app.register(&prescription()).await;
    let id = r["prescription_id"].as_str().unwrap();
    let path = format!("/v1/prescriptions/{id}");
    assert_eq!(app.get(&path, &app.doctor()).await.status, 200);
    let clerk = role_token(&app, CLINIC, relay::auth::Role::ClinicClerk);
    assert_eq!(app.get(&path, &clerk).await.status, 200);
    app.get(&path, &app.doctor_2())
        .await
        .assert_problem(403, "FORBIDDEN");
    app.get(&path, &app.pharmacist())
        .await
        .assert_problem(403, "FORBIDDEN");
    app.get(&path, &app.admin())
        .await
        .assert_problem(403, "FORBIDDEN");
    let number = r["exchange_number"].as_str().unwrap();
    assert_eq!(
        app.receive(&app.pharmacist(), number, &insured())
            .await
            .status,
        200
    );
    let held = app.get(&path, &app.pharmacist()).await;
    assert_eq!(held.status, 200);
    assert_eq!(held.body["status"], "dispensing");
    assert_eq!(held.body["holder"]["code"], PHARMACY);
    app.get(&path, &app.pharmacist_2())
        .await
        .assert_problem(403, "FORBIDDEN");
    let unknown = format!("/v1/prescriptions/{}", uuid::Uuid::now_v7());
    app.get(&unknown, &app.doctor())
        .await
        .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
}

#[tokio::test]
async fn the_clinic_finds_its_prescriptions_by_insurance_identity_and_dates() {
    let app = TestApp::spawn().await;
    let mine = app.register(&prescription()).await;
    let mut other_patient = prescription();
    other_patient["insurance"] = json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678", "relationship": "insured", "branch": "01"});
    app.register(&other_patient).await;
    // Another clinic's prescription for the same patient stays invisible.
    app.register_overriding(&app.doctor_2(), &prescription())
        .await;

    let clerk = role_token(&app, CLINIC, relay::auth::Role::ClinicClerk);
    let q = format!(
        "/v1/prescriptions?insurer_number=31130842&symbol=2022&number=010001&branch=01&issued_from={}&issued_to={}",
        today(),
        today()
    );
    let r = app.get(&q, &clerk).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.body["prescriptions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["exchange_number"], mine["exchange_number"]);
    assert_eq!(list[0]["patient_name"], "電処　有効五二");
    // Full-width input is folded like the stored identity.
    let r = app
        .get(
            "/v1/prescriptions?insurer_number=３１１３０８４２&number=０１０００１",
            &clerk,
        )
        .await;
    assert_eq!(r.body["prescriptions"].as_array().unwrap().len(), 1);
    // Without filters: all of this clinic's, none of the other's.
    let r = app.get("/v1/prescriptions", &app.doctor()).await;
    assert_eq!(r.body["prescriptions"].as_array().unwrap().len(), 2);
    // Out of range dates find nothing; bad filters are named.
    let r = app
        .get(
            "/v1/prescriptions?issued_from=2020-01-01&issued_to=2020-01-31",
            &clerk,
        )
        .await;
    assert_eq!(r.body["prescriptions"].as_array().unwrap().len(), 0);
    let r = app
        .get("/v1/prescriptions?insurer_number=06123456&branch=1", &clerk)
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(r.field_errors().len(), 2);
    let r = app
        .get("/v1/prescriptions?issued_from=2026-13-01", &clerk)
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = app
        .get(
            "/v1/prescriptions?issued_from=2026-02-01&issued_to=2026-01-01",
            &clerk,
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
}
