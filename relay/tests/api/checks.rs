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
