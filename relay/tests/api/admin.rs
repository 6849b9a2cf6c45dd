use crate::helpers::*;
use relay::auth::Role;
use serde_json::json;

#[tokio::test]
async fn facilities_are_registered_with_valid_codes() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    let body = json!({"code": "0110113719", "kind": "clinic", "name": "札幌テスト医院",
                      "address": "札幌市", "phone": "011-000-0000", "email": "clinic@example.jp"});
    let r = app.post("/v1/admin/facilities", &admin, &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["code"], "0110113719");
    assert_eq!(r.body["accepts_e_prescriptions"], true);
    // The new clinic can now register prescriptions.
    let doctor = app.token("0110113719", Role::Doctor, "d-1");
    let reg = app
        .post("/v1/prescriptions", &doctor, &prescription())
        .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    // Twice → 409; nothing changes.
    let r = app.post("/v1/admin/facilities", &admin, &body).await;
    r.assert_problem(409, "FACILITY_EXISTS");

    let pharmacy = json!({"code": pharmacy_code(42), "kind": "pharmacy", "name": "テスト薬局",
                          "email": "rx@example.jp", "fax_email": "fax@example.jp"});
    let r = app.post("/v1/admin/facilities", &admin, &pharmacy).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["fax_email"], "fax@example.jp");
}

#[tokio::test]
async fn facility_validation_names_every_field() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    for (body, expected) in [
        (
            json!({"code": "0110113710", "kind": "clinic", "name": "x", "email": "a@b.jp"}),
            vec![("code", "CHECK_DIGIT")],
        ),
        (
            json!({"code": "011011371", "kind": "clinic", "name": "x", "email": "a@b.jp"}),
            vec![("code", "FORMAT")],
        ),
        (
            json!({"code": "9948000014", "kind": "clinic", "name": "x", "email": "a@b.jp"}),
            vec![("kind", "KIND_MISMATCH")],
        ),
        (
            json!({"code": "0110113719", "kind": "clinic", "name": " ", "email": "nope", "fax_email": "x"}),
            vec![
                ("name", "REQUIRED"),
                ("email", "FORMAT"),
                ("fax_email", "FORMAT"),
            ],
        ),
        (
            json!({"code": "0110113719", "kind": "hospital", "name": "x", "email": "a@b.jp"}),
            vec![("kind", "INVALID_VALUE")],
        ),
        (
            json!({"code": "0110113719", "kind": "clinic", "name": "x"}),
            vec![("email", "REQUIRED")],
        ),
    ] {
        let r = app.post("/v1/admin/facilities", &admin, &body).await;
        r.assert_problem(422, "VALIDATION_FAILED");
        let got = r.field_errors();
        for (field, code) in expected {
            assert!(
                got.contains(&(field.to_string(), code.to_string())),
                "{body}: {got:?}"
            );
        }
    }
    let n: i64 = app.sql_one("SELECT count(*) FROM facilities").await;
    assert_eq!(n, 4, "only the demo facilities");
}

#[tokio::test]
async fn insured_persons_enter_the_registry() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    let body = json!({
        "insurer_number": "39131156", "number": "87654321", "branch": "00",
        "name": "吉田 𠮷男", "name_kana": "ﾖｼﾀﾞ ﾖｼｵ", "sex": "male", "birth_date": "1944-05-05",
        "valid_from": "2025-04-01", "card": {"card_id": "CARD-9", "certificate_expires_on": "2027-05-05"},
        "documents": ["eligibility_notice"]
    });
    let r = app.post("/v1/admin/insured", &admin, &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.body["insured_id"].is_string());
    assert_eq!(r.body["insured"]["name"], "吉田 𠮷男");
    assert_eq!(r.body["insured"]["symbol"], "");
    let stored: String = app
        .sql_one("SELECT name FROM insured_persons WHERE number = '87654321'")
        .await;
    assert_eq!(stored, "吉田 𠮷男");
    app.post("/v1/admin/insured", &admin, &body)
        .await
        .assert_problem(409, "COVERAGE_EXISTS");
    // A later coverage of the same person is kept beside the first.
    let mut later = body.clone();
    later["valid_from"] = "2026-04-01".into();
    assert_eq!(
        app.post("/v1/admin/insured", &admin, &later).await.status,
        201
    );

    let mut bad = body.clone();
    bad["insurer_number"] = "39131157".into();
    bad["branch"] = "0".into();
    bad["valid_until"] = "2020-01-01".into();
    bad["card"]["card_id"] = "".into();
    let r = app.post("/v1/admin/insured", &admin, &bad).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    for f in ["insurer_number", "branch", "valid_until", "card.card_id"] {
        assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
    }
    let mut bad = body.clone();
    bad["documents"] = json!(["passport"]);
    app.post("/v1/admin/insured", &admin, &bad)
        .await
        .assert_problem(422, "VALIDATION_FAILED");
    // Only admins.
    app.post("/v1/admin/insured", &app.doctor(), &body)
        .await
        .assert_problem(403, "FORBIDDEN");
    app.post("/v1/admin/insured", &app.pharmacist(), &body)
        .await
        .assert_problem(403, "FORBIDDEN");
}
