//! `/v1/checks`: hits masked without consent, revealed by card consent or a recorded verbal
//! consent (drug only, never the other institution), the override, and a cancelled prescription
//! left out.

use crate::helpers::*;
use relay::auth::Role;
use serde_json::{Value, json};

/// A draft of one oral RP with `drug` (code, name) for 7 days.
fn rps(drug: (&str, &str)) -> Value {
    json!([{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回", "times_per_day": 1},
            "drugs": [{"code_system": "yj", "code": drug.0, "name": drug.1, "dose": 1, "unit": "錠"}]}])
}

fn by_identity(drug: (&str, &str)) -> Value {
    json!({"patient": {"insured": insured(), "birth_date": "2011-01-01"},
           "context": "prescribing", "rps": rps(drug)})
}

const ESTAZOLAM: (&str, &str) = ("1124001F1022", "ユーロジン１ｍｇ錠");
const SILDENAFIL: (&str, &str) = ("2190028F1021", "レバチオ錠２０ｍｇ");
const NITRO: (&str, &str) = ("2171018K1039", "ニトロペン舌下錠０．３ｍｇ");

#[tokio::test]
async fn without_consent_a_hit_names_only_the_new_drug_and_verbal_consent_reveals_the_drug() {
    let app = TestApp::spawn().await;
    // The history: the standard prescription (ユーロジン, エスタゾラム) from 検証用病院.
    app.register(&prescription()).await;
    let doctor_2 = app.doctor_2();
    let r = app
        .post("/v1/checks", &doctor_2, &by_identity(ESTAZOLAM))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["outcome"], "hits");
    assert_eq!(r.body["details_visible"], false);
    let hit = &r.body["hits"][0];
    assert_eq!(hit["kind"], "duplicate");
    assert_eq!(hit["new_drug"]["code"], ESTAZOLAM.0);
    assert!(hit["other"].is_null(), "{}", r.text);
    assert!(!r.text.contains("9918000010") && !r.text.contains("検証用病院"));
    let check_id = r.body["check_id"].as_str().unwrap().to_string();

    // 口頭同意: the causing drug is revealed, the institution never.
    let r = app
        .post(
            &format!("/v1/checks/{check_id}/verbal-consent"),
            &doctor_2,
            &json!({"note": "診察室で口頭同意"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let other = &r.body["hits"][0]["other"];
    assert_eq!(other["revealed_by"], "verbal_consent");
    assert_eq!(other["drugs"][0]["drug_name"], "ユーロジン１ｍｇ錠");
    assert_eq!(other["drugs"][0]["ingredient"], "エスタゾラム");
    assert_eq!(other["drugs"][0]["days"], 14);
    assert_eq!(other["drugs"][0]["started_on"], today().to_string());
    assert!(
        !r.text.contains("9918000010") && !r.text.contains("検証用病院"),
        "{}",
        r.text
    );
    assert_eq!(r.body["verbal_consents"][0]["staff_id"], "doctor-2");
    assert_eq!(r.body["verbal_consents"][0]["hit_ids"][0], "h1");
    let recorded: i64 = app.sql_one("SELECT count(*) FROM check_consents").await;
    assert_eq!(recorded, 1);
    // Unknown hits are named; another facility cannot see or reveal the check.
    let r = app
        .post(
            &format!("/v1/checks/{check_id}/verbal-consent"),
            &doctor_2,
            &json!({"hit_ids": ["h9"]}),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(r.field_errors()[0].0, "hit_ids[0]");
    app.get(&format!("/v1/checks/{check_id}"), &app.doctor())
        .await
        .assert_problem(404, "CHECK_NOT_FOUND");
    app.post(
        &format!("/v1/checks/{check_id}/verbal-consent"),
        &app.doctor(),
        &json!({}),
    )
    .await
    .assert_problem(404, "CHECK_NOT_FOUND");

    // The override: doctors only, a reason required, recorded.
    app.post(
        &format!("/v1/checks/{check_id}/override"),
        &doctor_2,
        &json!({"reason": " "}),
    )
    .await
    .assert_problem(422, "VALIDATION_FAILED");
    let r = app
        .post(
            &format!("/v1/checks/{check_id}/override"),
            &doctor_2,
            &json!({"reason": "前医の処方終了を確認済み"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["override"]["reason"], "前医の処方終了を確認済み");
    let pharmacist = app.token(CLINIC_2, Role::Pharmacist, "x");
    app.post(
        &format!("/v1/checks/{check_id}/override"),
        &pharmacist,
        &json!({"reason": "x"}),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
    // The record cannot be rewritten.
    let client = app.pool.get().await.unwrap();
    assert!(
        client
            .execute("DELETE FROM check_consents", &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn card_consent_shows_details_and_contraindications_are_found_in_both_orders() {
    let app = TestApp::spawn().await;
    let mut history = prescription();
    history["rps"] = rps(NITRO);
    app.register(&history).await;
    // CARD-0001 is the standard patient; consent to share medication on the reader.
    let pharmacist = app.pharmacist();
    let q = app
        .post(
            "/v1/qualifications/card",
            &pharmacist,
            &json!({"card_id": "CARD-0001", "auth": "face", "consent": {"medication": true}}),
        )
        .await;
    assert_eq!(q.status, 201, "{}", q.text);
    let r = app
        .post(
            "/v1/checks",
            &pharmacist,
            &json!({"patient": {"qualification_id": q.body["qualification_id"]},
                    "context": "dispensing", "rps": rps(SILDENAFIL)}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["details_visible"], true);
    let hit = &r.body["hits"][0];
    assert_eq!(hit["kind"], "contraindication");
    assert_eq!(hit["other"]["revealed_by"], "card_consent");
    assert_eq!(hit["other"]["drugs"][0]["ingredient"], "ニトログリセリン");
    assert!(!r.text.contains("9918000010") && !r.text.contains("検証用病院"));

    // The other order: the history holds the PDE5 inhibitor, the new drug is the nitrate.
    let app = TestApp::spawn().await;
    let mut history = prescription();
    history["rps"] = rps(SILDENAFIL);
    app.register(&history).await;
    let r = app
        .post("/v1/checks", &app.doctor_2(), &by_identity(NITRO))
        .await;
    assert_eq!(r.body["hits"][0]["kind"], "contraindication", "{}", r.text);
    assert!(r.body["hits"][0]["other"].is_null());
}

#[tokio::test]
async fn cancelled_prescriptions_do_not_count_and_a_clear_check_cannot_be_overridden() {
    let app = TestApp::spawn().await;
    let reg = app.register(&prescription()).await;
    let id = reg["prescription_id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/prescriptions/{id}/cancel"),
            &app.doctor(),
            &json!({"reason": "処方変更"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .post("/v1/checks", &app.doctor_2(), &by_identity(ESTAZOLAM))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["outcome"], "clear");
    let check_id = r.body["check_id"].as_str().unwrap();
    app.post(
        &format!("/v1/checks/{check_id}/override"),
        &app.doctor_2(),
        &json!({"reason": "x"}),
    )
    .await
    .assert_problem(409, "NO_HITS");
    // Bad requests name the field.
    let r = app
        .post(
            "/v1/checks",
            &app.doctor_2(),
            &json!({"patient": {}, "context": "prescribing", "rps": []}),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    assert!(fields.contains(&"rps".to_string()) && fields.contains(&"patient".to_string()));
    let mut unknown = by_identity(ESTAZOLAM);
    unknown["rps"][0]["drugs"][0]["code"] = "1124001F9999".into();
    app.post("/v1/checks", &app.doctor_2(), &unknown)
        .await
        .assert_problem(422, "VALIDATION_FAILED");
}

/// POSTs a registration as `token`.
async fn register_as(app: &TestApp, token: &str, body: &Value) -> Resp {
    app.post("/v1/prescriptions", token, body).await
}

fn dispense_items(drug: (&str, &str), days: i64) -> Value {
    json!({"dispensed_on": today().to_string(),
           "items": [{"code_system": "yj", "code": drug.0, "name": drug.1, "dose": 1, "unit": "錠", "days": days}]})
}

#[tokio::test]
async fn registration_refuses_unresolved_hits_until_the_doctor_overrides_and_the_pharmacy_sees_the_reason()
 {
    let app = TestApp::spawn().await;
    // The first prescription has no history: clear, and the summary says so.
    let first = app.register(&prescription()).await;
    assert_eq!(first["check"]["outcome"], "clear", "{first}");
    assert!(first["check"]["override"].is_null());

    // Another clinic prescribes the same ingredient: refused, with the check carried (masked).
    let doctor_2 = app.doctor_2();
    let mut second = prescription();
    second["rps"] = rps(ESTAZOLAM);
    let r = register_as(&app, &doctor_2, &second).await;
    r.assert_problem(409, "UNRESOLVED_CHECK_HITS");
    assert_eq!(r.body["check"]["outcome"], "hits");
    assert_eq!(r.body["check"]["hits"][0]["kind"], "duplicate");
    assert_eq!(r.body["check"]["hits"][0]["new_drug"]["code"], ESTAZOLAM.0);
    assert!(r.body["check"]["hits"][0]["other"].is_null(), "{}", r.text);
    assert_eq!(r.body["unresolved_hit_ids"], json!(["h1"]));
    assert!(!r.text.contains("9918000010") && !r.text.contains("検証用病院"));
    let check_id = r.body["check"]["check_id"].as_str().unwrap().to_string();
    // The refusal was committed with its check (the doctor reveals and overrides it by id), and
    // nothing was registered.
    assert_eq!(
        app.get(&format!("/v1/checks/{check_id}"), &doctor_2)
            .await
            .status,
        200
    );
    let count: i64 = app.sql_one("SELECT count(*) FROM prescriptions").await;
    assert_eq!(count, 1);

    // Naming the check without an override is still refused, and says why.
    second["check_id"] = json!(check_id);
    let r = register_as(&app, &doctor_2, &second).await;
    r.assert_problem(409, "UNRESOLVED_CHECK_HITS");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("has no override")
    );
    // Another facility's check, or a check of another patient, is a bad request.
    let r = register_as(&app, &app.doctor(), &second).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(
        r.field_errors()[0],
        ("check_id".into(), "UNKNOWN_CHECK".into())
    );
    let other_patient = app
        .post(
            "/v1/checks",
            &doctor_2,
            &json!({"patient": {"insured": insured(), "birth_date": "1999-09-09"},
                    "context": "prescribing", "rps": rps(ESTAZOLAM)}),
        )
        .await;
    let mut wrong = second.clone();
    wrong["check_id"] = other_patient.body["check_id"].clone();
    let r = register_as(&app, &doctor_2, &wrong).await;
    assert_eq!(
        r.field_errors()[0],
        ("check_id".into(), "OTHER_PATIENT".into())
    );

    // 口頭同意, then the override (「重複等あり・医師許可」), then the registration goes through.
    let reason = "前医の睡眠薬は本日で中止と確認済み";
    let r = app
        .post(
            &format!("/v1/checks/{check_id}/verbal-consent"),
            &doctor_2,
            &json!({}),
        )
        .await;
    assert_eq!(
        r.body["hits"][0]["other"]["drugs"][0]["drug_name"],
        "ユーロジン１ｍｇ錠"
    );
    let r = app
        .post(
            &format!("/v1/checks/{check_id}/override"),
            &doctor_2,
            &json!({"reason": reason}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = register_as(&app, &doctor_2, &second).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let summary = &r.body["check"];
    assert_eq!(summary["outcome"], "hits");
    assert_eq!(summary["override"]["check_id"], check_id.as_str());
    assert_eq!(summary["override"]["label"], "重複等あり・医師許可");
    assert_eq!(summary["override"]["reason"], reason);
    assert_ne!(
        summary["check_id"],
        check_id.as_str(),
        "the registration ran its own check"
    );
    let id = r.body["prescription_id"].as_str().unwrap().to_string();
    let number = r.body["exchange_number"].as_str().unwrap().to_string();

    // The pharmacy sees the reason on receive and on GET, without the other side's name.
    let r = app.receive(&app.pharmacist(), &number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["check"]["override"]["reason"], reason, "{}", r.text);
    assert_eq!(
        r.body["check"]["override"]["hits"][0]["ingredient"],
        "エスタゾラム"
    );
    assert!(!r.text.contains("検証用病院"), "{}", r.text);
    let r = app
        .get(&format!("/v1/prescriptions/{id}"), &app.pharmacist())
        .await;
    assert_eq!(r.body["check"]["override"]["label"], "重複等あり・医師許可");
}

#[tokio::test]
async fn dispensing_runs_the_check_again_and_refuses_hits_the_prescriber_did_not_weigh() {
    let app = TestApp::spawn().await;
    // A: 検証用病院 prescribes ユーロジン (clear). B: 検証用診療所二 prescribes it too, with an
    // override. When A is dispensed, B is history it has not weighed: refused at dispensing.
    let mut a = prescription();
    a["rps"] = rps(ESTAZOLAM);
    let a = app.register(&a).await;
    let doctor_2 = app.doctor_2();
    let mut b = prescription();
    b["rps"] = rps(ESTAZOLAM);
    let refused = register_as(&app, &doctor_2, &b).await;
    let b_check = refused.body["check"]["check_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.post(
        &format!("/v1/checks/{b_check}/override"),
        &doctor_2,
        &json!({"reason": "前医処方の終了を確認"}),
    )
    .await;
    b["check_id"] = json!(b_check);
    let b = register_as(&app, &doctor_2, &b).await;
    assert_eq!(b.status, 201, "{}", b.text);

    let pharmacist = app.pharmacist();
    let a_id = a["prescription_id"].as_str().unwrap().to_string();
    let r = app
        .receive(
            &pharmacist,
            a["exchange_number"].as_str().unwrap(),
            &insured(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let dispense = format!("/v1/prescriptions/{a_id}/dispense");
    let r = app
        .post(&dispense, &pharmacist, &dispense_items(ESTAZOLAM, 7))
        .await;
    r.assert_problem(409, "UNRESOLVED_CHECK_HITS");
    assert_eq!(r.body["check"]["context"], "dispensing");
    assert!(r.body["check"]["hits"][0]["other"].is_null());
    assert!(!r.text.contains("9918000028") && !r.text.contains("検証用診療所二"));
    let status: String = app
        .sql_one(&format!(
            "SELECT status FROM prescriptions WHERE id = '{a_id}'"
        ))
        .await;
    assert_eq!(status, "dispensing", "nothing was dispensed");
    let check = r.body["check"]["check_id"].as_str().unwrap().to_string();

    // Only the pharmacist overrides a dispensing check (after a 疑義照会), and the doctor's
    // tokens cannot; then the dispensing names it and goes through.
    app.post(
        &format!("/v1/checks/{check}/override"),
        &app.token(PHARMACY, Role::Doctor, "x"),
        &json!({"reason": "x"}),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
    let r = app
        .post(
            &format!("/v1/checks/{check}/override"),
            &pharmacist,
            &json!({"reason": "疑義照会：処方医より継続の指示"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut body = dispense_items(ESTAZOLAM, 7);
    body["check_id"] = json!(check);
    let r = app.post(&dispense, &pharmacist, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let view = app
        .get(&format!("/v1/prescriptions/{a_id}"), &pharmacist)
        .await;
    assert_eq!(
        view.body["dispensings"][0]["override_check_id"],
        check.as_str()
    );

    // B at another pharmacy: A is now dispensed (a duplicate), but the prescriber weighed it, so
    // a generic of the same ingredient is dispensed without a 疑義照会.
    let pharmacist_2 = app.pharmacist_2();
    let b_id = b.body["prescription_id"].as_str().unwrap().to_string();
    let r = app
        .receive(
            &pharmacist_2,
            b.body["exchange_number"].as_str().unwrap(),
            &insured(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/prescriptions/{b_id}/dispense"),
            &pharmacist_2,
            &dispense_items(("1124001F1030", "エスタゾラム錠１ｍｇ「アメル」"), 7),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let overridden: Option<uuid::Uuid> = app
        .sql_one(&format!(
            "SELECT override_check_id FROM dispensings WHERE prescription_id = '{b_id}'"
        ))
        .await;
    assert_eq!(overridden.map(|u| u.to_string()), Some(b_check));
}

#[tokio::test]
async fn an_unavailable_check_needs_an_explicit_acknowledgement_and_reveals_last_as_configured() {
    let app = TestApp::spawn_with(|s| s.checks.reveal_minutes = 5).await;
    // ユーロジン loses its ingredient rows: the check cannot run for it, and never says clear.
    app.sql("DELETE FROM drug_ingredients WHERE yj_code = '1124001F1022'")
        .await;
    let r = register_as(&app, &app.doctor(), &prescription()).await;
    r.assert_problem(409, "CHECK_UNAVAILABLE");
    assert_eq!(r.body["check"]["outcome"], "unavailable");
    assert!(
        r.body["check"]["unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("rps[0].drugs[0]"),
        "{}",
        r.text
    );
    let mut body = prescription();
    body["acknowledge_check_unavailable"] = json!(true);
    let r = register_as(&app, &app.doctor(), &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["check"]["outcome"], "unavailable");
    assert_eq!(r.body["check"]["unavailable_acknowledged"], true);

    // A verbal consent reveals for the configured time.
    let app = TestApp::spawn_with(|s| s.checks.reveal_minutes = 5).await;
    app.register(&prescription()).await;
    let r = app
        .post("/v1/checks", &app.doctor_2(), &by_identity(ESTAZOLAM))
        .await;
    let check_id = r.body["check_id"].as_str().unwrap();
    app.post(
        &format!("/v1/checks/{check_id}/verbal-consent"),
        &app.doctor_2(),
        &json!({}),
    )
    .await;
    let minutes: f64 = app
        .sql_one("SELECT extract(epoch FROM expires_at - at)::float8 / 60 FROM check_consents")
        .await;
    assert!((minutes - 5.0).abs() < 0.1, "{minutes}");
    // A pharmacist's check is a dispensing check; a doctor's a prescribing one.
    let mut wrong = by_identity(ESTAZOLAM);
    wrong["context"] = json!("dispensing");
    let r = app.post("/v1/checks", &app.doctor_2(), &wrong).await;
    assert_eq!(
        r.field_errors()[0],
        ("context".into(), "ROLE_CONTEXT".into())
    );
}

#[tokio::test]
async fn the_history_query_is_an_index_lookup_among_many_patients() {
    // The bulk set-up below may outlast the relay's statement_timeout on a loaded machine.
    let app = TestApp::spawn_with(|s| s.database.statement_timeout_ms = 0).await;
    app.register(&prescription()).await;
    // 50,000 prescriptions of other patients (copies with other 被保険者番号).
    app.sql(
        "INSERT INTO prescriptions (id, issuer_code, issued_by, issue_type, status, exchange_number,
             insurer_number, symbol, number, branch, birth_date, issued_on, valid_until, document)
         SELECT gen_random_uuid(), issuer_code, issued_by, issue_type, 'dispensed', exchange_number,
                insurer_number, symbol, lpad(n::text, 8, '0'), branch, birth_date - (n % 9000),
                issued_on - (n % 150), valid_until, document
           FROM prescriptions, generate_series(1, 50000) AS n",
    )
    .await;
    app.sql("ANALYZE prescriptions").await;
    let client = app.pool.get().await.unwrap();
    let identity =
        relay::domain::identifiers::InsuranceIdentity::parse("31130842", "2022", "010001", "01")
            .unwrap();
    let birth: jiff::civil::Date = "2011-01-01".parse().unwrap();
    let since = today().checked_sub(jiff::ToSpan::days(200)).unwrap();
    let plan = relay::db::prescriptions::explain_history(&client, &[identity], birth, since)
        .await
        .unwrap();
    println!("history plan among 50,001 prescriptions:\n{plan}");
    assert!(plan.contains("prescriptions_history"), "{plan}");
    assert!(!plan.contains("Seq Scan on prescriptions"), "{plan}");
    // And the check over it still finds the one real prescription.
    let r = app
        .post("/v1/checks", &app.doctor_2(), &by_identity(ESTAZOLAM))
        .await;
    assert_eq!(r.body["hits"].as_array().unwrap().len(), 1, "{}", r.text);
}
