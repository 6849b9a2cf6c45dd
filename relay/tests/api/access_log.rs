//! The patient's 閲覧記録 (`GET /v1/qualifications/{id}/access-log`): every look at their
//! prescriptions — writes, reads, eligibility confirmations, checks — and nobody else's; only
//! through the patient's own card at the asking facility. (That `access_log` refuses changes is in
//! audit.rs with the other append-only tables.)

use crate::helpers::*;
use relay::auth::Role;
use serde_json::{Value, json};

fn card_qualification() -> Value {
    json!({"card_id": "CARD-0001", "auth": "face", "consent": {"medication": true}})
}

async fn qualify(app: &TestApp, token: &str) -> String {
    let q = app
        .post("/v1/qualifications/card", token, &card_qualification())
        .await;
    assert_eq!(q.status, 201, "{}", q.text);
    q.body["qualification_id"].as_str().unwrap().to_string()
}

/// `(facility code, role, action)` of every entry, newest first.
fn lines(log: &Value) -> Vec<(String, String, String)> {
    log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["facility"]["code"].as_str().unwrap().to_string(),
                e["role"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_patient_sees_every_look_at_their_prescriptions_and_nobody_elses() {
    let app = TestApp::spawn().await;
    let doctor = app.doctor();
    // The patient's prescription, and another patient's at the same clinic.
    let mine = app.register(&prescription()).await;
    let id = mine["prescription_id"].as_str().unwrap().to_string();
    let mut other = prescription();
    other["insurance"]["number"] = "010002".into();
    other["patient"]["name"] = "別人　花子".into();
    let theirs = app.register_overriding(&doctor, &other).await;
    let their_id = theirs["prescription_id"].as_str().unwrap().to_string();

    // The clinic opens it, searches by the patient's numbers and prints the 控え.
    assert_eq!(
        app.get(&format!("/v1/prescriptions/{id}"), &doctor)
            .await
            .status,
        200
    );
    let clerk = role_token(&app, CLINIC, Role::ClinicClerk);
    let r = app
        .get(
            "/v1/prescriptions?insurer_number=31130842&symbol=2022&number=010001&branch=01",
            &clerk,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .get(&format!("/v1/prescriptions/{id}/copy.pdf"), &doctor)
        .await;
    assert_eq!(r.status, 200);
    // The other patient's prescription is looked at too; it must not appear.
    app.get(&format!("/v1/prescriptions/{their_id}"), &doctor)
        .await;

    // The pharmacy confirms eligibility with the card, lists, receives and runs a check.
    let pharmacist = app.pharmacist();
    let qid = qualify(&app, &pharmacist).await;
    let r = app
        .get(
            &format!("/v1/qualifications/{qid}/prescriptions"),
            &pharmacist,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/prescriptions/{id}/receive"),
            &pharmacist,
            &json!({"qualification_id": qid}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // At a second pharmacy the patient asks who looked at their prescriptions.
    let p2 = app.pharmacist_2();
    let qid2 = qualify(&app, &p2).await;
    let r = app
        .get(&format!("/v1/qualifications/{qid2}/access-log"), &p2)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got = lines(&r.body);
    let has = |facility: &str, role: &str, action: &str| {
        got.iter()
            .any(|(f, r, a)| f == facility && r == role && a == action)
    };
    for (facility, role, action) in [
        (CLINIC, "doctor", "registered"),
        (CLINIC, "doctor", "viewed"),
        (CLINIC, "clinic_clerk", "searched"),
        (CLINIC, "doctor", "document"),
        (PHARMACY, "pharmacist", "card"),
        (PHARMACY, "pharmacist", "listed"),
        (PHARMACY, "pharmacist", "received"),
        (PHARMACY_2, "pharmacist", "card"),
        (PHARMACY_2, "pharmacist", "access_log_viewed"),
    ] {
        assert!(
            has(facility, role, action),
            "{facility} {role} {action} missing: {got:?}"
        );
    }
    // The look at the log is itself the newest entry; the list is newest first.
    assert_eq!(got[0].2, "access_log_viewed", "{got:?}");
    let times: Vec<&str> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["at"].as_str().unwrap())
        .collect();
    let parsed: Vec<jiff::Timestamp> = times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    // Entries of the patient's prescription name it and its 交付年月日; nothing of the other patient.
    assert!(
        !r.text.contains(&their_id),
        "another patient's prescription leaked"
    );
    assert!(!r.text.contains("別人"));
    let viewed = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "viewed")
        .unwrap();
    assert_eq!(viewed["prescription_id"], id.as_str());
    assert_eq!(viewed["issued_on"], today().to_string());
    assert_eq!(viewed["facility"]["name"], "検証用病院");
    assert_eq!(viewed["facility"]["kind"], "clinic");
    assert_eq!(viewed["description"], "電子処方箋を閲覧しました");
    // Staff account ids are for operators, not in the patient's view.
    assert!(!r.text.contains("staff"), "{}", r.text);
    assert_eq!(r.body["truncated"], false);

    // A check run by the second pharmacy, its details revealed with verbal consent, shows up
    // as both a check and a reveal.
    let check = app
        .post(
            "/v1/checks",
            &p2,
            &json!({"patient": {"qualification_id": qid2}, "context": "dispensing",
                    "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回", "times_per_day": 1},
                             "drugs": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 1, "unit": "錠"}]}]}),
        )
        .await;
    assert_eq!(check.status, 201, "{}", check.text);
    let check_id = check.body["check_id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/checks/{check_id}/verbal-consent"),
            &p2,
            &json!({"note": "口頭同意"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .get(&format!("/v1/qualifications/{qid2}/access-log"), &p2)
        .await;
    let got = lines(&r.body);
    assert!(
        got.contains(&(PHARMACY_2.into(), "pharmacist".into(), "checked".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&(PHARMACY_2.into(), "pharmacist".into(), "revealed".into())),
        "{got:?}"
    );
    let looks = got.iter().filter(|l| l.2 == "access_log_viewed").count();
    assert_eq!(looks, 2, "every look at the log is recorded");
}

#[tokio::test]
async fn only_the_patients_own_card_at_the_asking_facility_opens_the_log() {
    let app = TestApp::spawn().await;
    app.register(&prescription()).await;
    let pharmacist = app.pharmacist();
    let qid = qualify(&app, &pharmacist).await;
    let path = format!("/v1/qualifications/{qid}/access-log");
    // Another facility cannot use this qualification; neither can an admin; nor without a token.
    app.get(&path, &app.pharmacist_2())
        .await
        .assert_problem(404, "QUALIFICATION_NOT_FOUND");
    app.get(&path, &app.admin())
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(app.get_anon(&path).await.status, 401);
    app.get("/v1/qualifications/not-a-uuid/access-log", &pharmacist)
        .await
        .assert_problem(404, "QUALIFICATION_NOT_FOUND");
    // What a visitor says (申立書) must not be enough to learn where somebody was treated.
    let q = app
        .post(
            "/v1/qualifications",
            &pharmacist,
            &json!({"method": "self_declaration",
                    "insured": {"insurer_number": "31130842", "symbol": "2022", "number": "010001", "branch": "01",
                                "name": "電処　有効五二", "birth_date": "2011-01-01"},
                    "declaration": {"address": "東京都港区1-1-1", "contact": "03-0000-0000"}}),
        )
        .await;
    assert_eq!(q.status, 201, "{}", q.text);
    let declared = q.body["qualification_id"].as_str().unwrap();
    app.get(
        &format!("/v1/qualifications/{declared}/access-log"),
        &pharmacist,
    )
    .await
    .assert_problem(422, "CARD_PATH_REQUIRED");
    // None of the refusals was recorded as a look at the log.
    let looks: i64 = app
        .sql_one("SELECT count(*) FROM access_log WHERE action = 'access_log_viewed'")
        .await;
    assert_eq!(looks, 0);
    assert_eq!(app.get(&path, &pharmacist).await.status, 200);
    let looks: i64 = app
        .sql_one("SELECT count(*) FROM access_log WHERE action = 'access_log_viewed'")
        .await;
    assert_eq!(looks, 1);
}
