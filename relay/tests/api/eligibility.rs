//! 資格確認: the card path, the fallback ladder, claim basis and disaster mode — one case per rule
//! of the leaflets (seed 000 Points 2–4, 001, 004), with the boundaries.

use crate::helpers::*;
use jiff::ToSpan;
use jiff::civil::Date;
use relay::auth::Role;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Who {
    /// Pharmacy clerk of 検証用薬局: no 目視確認 passcode.
    Clerk,
    /// Pharmacist of 検証用薬局: has a 目視確認 passcode (demo seed).
    Pharmacist,
    /// Pharmacist of the second pharmacy.
    Pharmacist2,
    /// Clinic clerk of 検証用病院.
    ClinicClerk,
}

fn token(app: &TestApp, who: Who) -> String {
    match who {
        Who::Clerk => app.token(PHARMACY, Role::PharmacyClerk, "pharmacy-clerk-1"),
        Who::Pharmacist => app.pharmacist(),
        Who::Pharmacist2 => app.pharmacist_2(),
        Who::ClinicClerk => app.token(CLINIC, Role::ClinicClerk, "clerk-1"),
    }
}

fn days(n: i64) -> Date {
    today().checked_add(n.days()).unwrap()
}

fn months_ago(n: i64) -> Date {
    today().checked_sub(n.months()).unwrap()
}

/// A coverage for `POST /v1/admin/insured`.
fn coverage(insurer: &str, symbol: &str, number: &str, name: &str, birth: &str) -> Value {
    json!({
        "insurer_number": insurer, "symbol": symbol, "number": number, "branch": "01",
        "name": name, "sex": "female", "birth_date": birth, "valid_from": "2024-04-01",
        "address": "東京都千代田区霞が関1-2-2"
    })
}

fn with_card(mut c: Value, card: &str, expires: Date) -> Value {
    c["card"] = json!({"card_id": card, "certificate_expires_on": expires.to_string()});
    c
}

fn key(insurer: &str, symbol: &str, number: &str, birth: &str) -> Value {
    json!({"insurer_number": insurer, "symbol": symbol, "number": number, "branch": "01", "birth_date": birth})
}

/// The registry of these tests: one person per situation.
async fn registry(app: &TestApp) {
    let admin = app.admin();
    let people = [
        with_card(
            coverage("01130012", "E1", "1001", "資格　確認", "1980-01-01"),
            "CARD-E1",
            days(365),
        ),
        with_card(
            coverage("01130012", "E1", "1002", "猶予　丁度", "1981-02-02"),
            "CARD-E2",
            months_ago(3),
        ),
        with_card(
            coverage("01130012", "E1", "1003", "猶予　超過", "1981-03-03"),
            "CARD-E3",
            months_ago(3).checked_sub(1.day()).unwrap(),
        ),
        {
            let mut c = with_card(
                coverage("01130012", "E1", "1004", "資格　喪失", "1982-04-04"),
                "CARD-E4",
                days(365),
            );
            c["valid_from"] = "2020-04-01".into();
            c["valid_until"] = days(-1).to_string().into();
            c
        },
        {
            let mut c = with_card(
                coverage("01130012", "E1", "1005", "保険　変更", "1983-05-05"),
                "CARD-E5",
                days(365),
            );
            c["valid_from"] = "2020-04-01".into();
            c["valid_until"] = "2025-03-31".into();
            c["person_ref"] = "E5".into();
            c
        },
        {
            let mut c = coverage("01270016", "E5", "2005", "保険　変更", "1983-05-05");
            c["valid_from"] = "2025-04-01".into();
            c["person_ref"] = "E5".into();
            c
        },
        {
            let mut c = coverage("39131156", "", "55550001", "確認書　持参", "1945-05-05");
            c["documents"] = json!(["qualification_certificate"]);
            c
        },
        {
            let mut c = coverage("01130012", "E1", "1007", "災害　太郎", "1950-06-06");
            c["sex"] = "male".into();
            c["address"] = "テスト県テスト市1-1".into();
            c
        },
    ];
    for p in people {
        let r = app.post("/v1/admin/insured", &admin, &p).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

struct Case {
    name: &'static str,
    who: Who,
    path: &'static str,
    body: Value,
    /// `""` for a confirmed qualification (201).
    refusal: &'static str,
    check: fn(&Value),
}

fn ok(_: &Value) {}

fn card(card_id: &str, auth: &str) -> Value {
    json!({"card_id": card_id, "auth": auth, "consent": {"medication": true}})
}

fn cases() -> Vec<Case> {
    let valid = key("01130012", "E1", "1001", "1980-01-01");
    let mut c = vec![
        Case {
            name: "card with face: current coverage, sharing allowed",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E1", "face"),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "current");
                assert_eq!(b["claim"]["insurer_number"], "01130012");
                assert_eq!(b["info_sharing"], true);
                assert_eq!(b["consent"]["medication"], true);
                assert_eq!(b["insured"]["name"], "資格　確認");
            },
        },
        Case {
            name: "card with a PIN: fine while not locked",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E1", "pin"),
            refusal: "",
            check: ok,
        },
        Case {
            name: "locked PIN refuses PIN entry",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: json!({"card_id": "CARD-E1", "auth": "pin", "pin_locked": true}),
            refusal: "PIN_LOCKED",
            check: |b| assert!(b["next_steps"].as_array().unwrap().len() >= 2),
        },
        Case {
            name: "locked PIN still allows face, with a warning",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: json!({"card_id": "CARD-E1", "auth": "face", "pin_locked": true}),
            refusal: "",
            check: |b| assert_eq!(b["warnings"][0]["code"], "PIN_LOCKED"),
        },
        Case {
            name: "locked PIN still allows visual for staff with a passcode",
            who: Who::Pharmacist,
            path: "/v1/qualifications/card",
            body: json!({"card_id": "CARD-E1", "auth": "visual", "pin_locked": true}),
            refusal: "",
            check: |b| assert_eq!(b["auth"], "visual"),
        },
        Case {
            name: "visual needs the staff member's passcode",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E1", "visual"),
            refusal: "VISUAL_CHECK_NOT_ENABLED",
            check: ok,
        },
        Case {
            name: "certificate expired exactly 3 months ago: eligible, no sharing, renew warning",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E2", "face"),
            refusal: "",
            check: |b| {
                assert_eq!(b["info_sharing"], false);
                assert_eq!(b["warnings"][0]["code"], "CERTIFICATE_EXPIRED_GRACE");
                assert!(
                    b["warnings"][0]["message"]
                        .as_str()
                        .unwrap()
                        .contains("市区町村")
                );
            },
        },
        Case {
            name: "certificate expired 3 months and one day ago: refused with next steps",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E3", "face"),
            refusal: "CERTIFICATE_EXPIRED",
            check: |b| {
                assert_eq!(b["fallback_ladder"].as_array().unwrap().len(), 4);
                assert!(b["next_steps"].to_string().contains("資格確認書"));
            },
        },
        Case {
            name: "資格（無効）: no current coverage lists the ladder and the previous coverage",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E4", "face"),
            refusal: "COVERAGE_INVALID",
            check: |b| {
                assert_eq!(b["fallback_ladder"][0]["method"], "mynaportal_screen");
                assert_eq!(b["fallback_ladder"][3]["method"], "self_declaration");
                assert_eq!(b["previous_coverage"]["basis"], "previous");
                assert_eq!(b["previous_coverage"]["number"], "1004");
            },
        },
        Case {
            name: "資格情報なし: an unknown card lists the ladder",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-NOBODY", "face"),
            refusal: "NO_COVERAGE_INFO",
            check: |b| assert!(b["fallback_ladder"].is_array()),
        },
        Case {
            name: "insurance change: the card finds the new coverage",
            who: Who::Clerk,
            path: "/v1/qualifications/card",
            body: card("CARD-E5", "face"),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim"]["insurer_number"], "01270016");
                assert_eq!(b["claim_basis"], "current");
            },
        },
        Case {
            name: "portal screen without the card is refused",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "mynaportal_screen", "card_presented": false, "insured": valid}),
            refusal: "PORTAL_SCREEN_REQUIRES_CARD",
            check: ok,
        },
        Case {
            name: "portal screen with the card: current",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "mynaportal_screen", "card_presented": true, "insured": valid}),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "current");
                assert_eq!(b["info_sharing"], false);
            },
        },
        Case {
            name: "a notice presented without the card is refused",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "eligibility_notice", "card_presented": false, "insured": valid}),
            refusal: "NOTICE_REQUIRES_CARD",
            check: |b| assert!(b["fallback_ladder"].is_array()),
        },
        Case {
            name: "old notice with the card after an insurance change: claim the current coverage",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "eligibility_notice", "card_presented": true,
                         "insured": key("01130012", "E1", "1005", "1983-05-05")}),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "current");
                assert_eq!(b["claim"]["insurer_number"], "01270016");
                assert_eq!(b["warnings"][0]["code"], "INSURANCE_CHANGED");
            },
        },
        Case {
            name: "資格確認書 alone confirms, without sharing",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "qualification_certificate",
                         "insured": key("39131156", "", "55550001", "1945-05-05"),
                         "document_valid_until": days(300).to_string()}),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "current");
                assert_eq!(b["info_sharing"], false);
            },
        },
        Case {
            name: "an expired 資格確認書 is refused",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "qualification_certificate",
                         "insured": key("39131156", "", "55550001", "1945-05-05"),
                         "document_valid_until": days(-1).to_string()}),
            refusal: "QUALIFICATION_CERTIFICATE_EXPIRED",
            check: ok,
        },
        Case {
            name: "numbers registered with another birth date are refused",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "qualification_certificate",
                         "insured": key("01130012", "E1", "1001", "1999-09-09")}),
            refusal: "IDENTITY_MISMATCH",
            check: ok,
        },
        Case {
            name: "verbal confirmation needs a prior visit here (none yet at the second pharmacy)",
            who: Who::Pharmacist2,
            path: "/v1/qualifications",
            body: json!({"method": "verbal_revisit", "insured": valid}),
            refusal: "VERBAL_REQUIRES_PRIOR_VISIT",
            check: |b| assert!(b["next_steps"].to_string().contains("self_declaration")),
        },
        Case {
            name: "verbal confirmation of a returning patient (qualified here earlier in this table)",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "verbal_revisit", "insured": valid}),
            refusal: "",
            check: |b| assert_eq!(b["claim_basis"], "current"),
        },
        Case {
            name: "verbal confirmation at a clinic the patient never visited",
            who: Who::ClinicClerk,
            path: "/v1/qualifications",
            body: json!({"method": "verbal_revisit", "insured": key("01130012", "E1", "1004", "1982-04-04")}),
            refusal: "VERBAL_REQUIRES_PRIOR_VISIT",
            check: ok,
        },
        Case {
            name: "申立書 for a first visit without numbers: 不詳 with address and contact",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "self_declaration",
                         "insured": {"name": "初診　花子", "birth_date": "1990-09-09", "sex": "female"},
                         "declaration": {"address": "東京都港区1-1-1", "contact": "090-0000-0000"}}),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "unknown");
                assert_eq!(b["claim"]["insurer_number"], "77777779");
                assert_eq!(b["claim"]["number"], "77777777");
                let remarks = b["claim"]["remarks"].as_str().unwrap();
                assert!(remarks.contains("東京都港区1-1-1") && remarks.contains("090-0000-0000"));
            },
        },
        Case {
            name: "申立書 with numbers whose coverage ended: 旧資格 (previous)",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "self_declaration",
                         "insured": {"insurer_number": "01130012", "symbol": "E1", "number": "1004",
                                     "branch": "01", "name": "資格　喪失", "birth_date": "1982-04-04"},
                         "declaration": {"address": "東京都港区1-1-1", "contact": "090-0000-0000"}}),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "previous");
                assert_eq!(b["claim"]["number"], "1004");
                assert_eq!(b["warnings"][0]["code"], "COVERAGE_ENDED");
            },
        },
        Case {
            name: "申立書 with numbers the registry does not know: claimed as heard",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "self_declaration",
                         "insured": {"insurer_number": "06132013", "number": "42", "branch": "00",
                                     "name": "未登録　次郎", "birth_date": "1977-07-07"},
                         "declaration": {"address": "東京都港区2-2-2", "contact": "03-1111-1111"}}),
            refusal: "",
            check: |b| {
                assert_eq!(b["claim_basis"], "current");
                assert_eq!(b["warnings"][0]["code"], "NOT_IN_REGISTRY");
            },
        },
        Case {
            name: "legacy card after the policy date is refused",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "legacy_insurance_card", "legacy_document": "health_insurance_card",
                         "insured": valid}),
            refusal: "LEGACY_CARD_NOT_ACCEPTED",
            check: |b| assert!(b["detail"].as_str().unwrap().contains("2026-07-31")),
        },
        Case {
            name: "disaster mode without a declaration is refused",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "disaster", "verbal_consent": true,
                         "insured": {"name": "災害　太郎", "birth_date": "1950-06-06", "sex": "male"},
                         "declaration": {"address": "テスト県テスト市1-1"}}),
            refusal: "NO_DISASTER_DECLARED",
            check: ok,
        },
        Case {
            name: "the card path is not a fallback method",
            who: Who::Clerk,
            path: "/v1/qualifications",
            body: json!({"method": "card", "insured": valid}),
            refusal: "CARD_PATH_SEPARATE",
            check: ok,
        },
    ];
    // A returning patient at a clinic that issued them a prescription (registered in the test).
    c.push(Case {
        name: "verbal confirmation at the clinic that prescribed for the patient",
        who: Who::ClinicClerk,
        path: "/v1/qualifications",
        body: json!({"method": "verbal_revisit", "insured": key("31130842", "2022", "010001", "2011-01-01")}),
        refusal: "",
        check: |b| assert_eq!(b["claim_basis"], "current"),
    });
    c
}

#[tokio::test]
async fn every_rule_of_the_leaflets_has_its_answer() {
    let app = TestApp::spawn().await;
    registry(&app).await;
    let r = app.register(&prescription()).await;
    assert!(r["prescription_id"].is_string());
    let cases = cases();
    assert!(cases.len() >= 20, "one case per rule");
    let mut refusals = 0;
    for case in &cases {
        let r = app
            .post(case.path, &token(&app, case.who), &case.body)
            .await;
        if case.refusal.is_empty() {
            assert_eq!(r.status, 201, "{}: {}", case.name, r.text);
            assert!(r.body["qualification_id"].is_string(), "{}", case.name);
            assert!(r.body["expires_at"].is_string(), "{}", case.name);
        } else {
            refusals += 1;
            assert_eq!(r.status, 422, "{}: {}", case.name, r.text);
            assert_eq!(r.body["code"], case.refusal, "{}: {}", case.name, r.text);
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/problem+json")),
                "{}",
                case.name
            );
            // The message is for the receptionist: Japanese text.
            let detail = r.body["detail"].as_str().unwrap();
            assert!(
                detail
                    .chars()
                    .any(|c| ('\u{3040}'..='\u{30FF}').contains(&c)),
                "{}: {detail}",
                case.name
            );
            assert!(r.body["qualification_id"].is_string(), "{}", case.name);
        }
        (case.check)(&r.body);
    }
    // Every attempt that reached the rules is in the audit, refused ones included.
    let audited: i64 = app.sql_one("SELECT count(*) FROM qualifications").await;
    assert_eq!(audited as usize, cases.len());
    let refused: i64 = app
        .sql_one("SELECT count(*) FROM qualifications WHERE outcome = 'refused'")
        .await;
    assert_eq!(refused, refusals);
    // The audit cannot be rewritten.
    let client = app.pool.get().await.unwrap();
    let err = client
        .execute("UPDATE qualifications SET outcome = 'confirmed'", &[])
        .await
        .unwrap_err();
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("append-only")),
        "{err:?}"
    );
    assert!(
        client
            .execute("DELETE FROM qualifications", &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn malformed_requests_name_the_field_and_are_not_audited() {
    let app = TestApp::spawn().await;
    let clerk = token(&app, Who::Clerk);
    let r = app
        .post(
            "/v1/qualifications",
            &clerk,
            &json!({"method": "self_declaration", "insured": {"name": "初診　花子", "birth_date": "1990-09-09"},
                    "declaration": {"address": "東京都港区1-1-1"}}),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(
        r.field_errors(),
        [("declaration.contact".to_string(), "REQUIRED".to_string())]
    );
    let r = app
        .post(
            "/v1/qualifications",
            &clerk,
            &json!({"method": "eligibility_notice", "card_presented": true,
                    "insured": {"insurer_number": "01130013", "number": "1", "branch": "1"}}),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    for f in [
        "insured.insurer_number",
        "insured.branch",
        "insured.birth_date",
    ] {
        assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
    }
    let r = app
        .post(
            "/v1/qualifications",
            &clerk,
            &json!({"method": "telepathy", "insured": {}}),
        )
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.text);
    let r = app
        .post(
            "/v1/qualifications/card",
            &clerk,
            &json!({"card_id": "カード", "auth": "face"}),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(r.field_errors()[0].0, "card_id");
    let r = app
        .post(
            "/v1/qualifications/card",
            &clerk,
            &json!({"card_id": "CARD-0002", "auth": "retina"}),
        )
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.text);
    let n: i64 = app.sql_one("SELECT count(*) FROM qualifications").await;
    assert_eq!(n, 0);
    // Administrators do not confirm eligibility.
    app.post(
        "/v1/qualifications/card",
        &app.admin(),
        &card("CARD-0002", "face"),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
}

#[tokio::test]
async fn the_legacy_card_is_accepted_through_the_policy_date_and_refused_the_day_after() {
    let body = json!({"method": "legacy_insurance_card", "legacy_document": "eligibility_notice",
                      "insured": key("01130012", "1234", "5678", "1975-07-07")});
    let on_the_day = TestApp::spawn_with(|s| s.eligibility.legacy_card_until = today()).await;
    let r = on_the_day
        .post("/v1/qualifications", &token(&on_the_day, Who::Clerk), &body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["claim_basis"], "current");
    // Before the date, a notice alone is pointed at the legacy method.
    let r = on_the_day
        .post(
            "/v1/qualifications",
            &token(&on_the_day, Who::Clerk),
            &json!({"method": "eligibility_notice", "insured": key("01130012", "1234", "5678", "1975-07-07")}),
        )
        .await;
    r.assert_problem(422, "NOTICE_REQUIRES_CARD");
    assert!(
        r.body["next_steps"]
            .to_string()
            .contains("legacy_insurance_card")
    );

    let day_after = TestApp::spawn_with(|s| s.eligibility.legacy_card_until = days(-1)).await;
    let r = day_after
        .post("/v1/qualifications", &token(&day_after, Who::Clerk), &body)
        .await;
    r.assert_problem(422, "LEGACY_CARD_NOT_ACCEPTED");
}

#[tokio::test]
async fn disaster_mode_qualifies_by_statement_inside_the_declared_area_only() {
    let app = TestApp::spawn().await;
    registry(&app).await;
    let admin = app.admin();
    let statement = |consent: bool| {
        json!({"method": "disaster", "verbal_consent": consent,
               "insured": {"name": "災害太郎", "birth_date": "1950-06-06", "sex": "male"},
               "declaration": {"address": "テスト県テスト市1-1", "contact": "避難所A"}})
    };
    // Declared for another prefecture: not this facility's area.
    let r = app
        .post(
            "/v1/admin/disasters",
            &admin,
            &json!({"name": "令和8年豪雨", "prefectures": ["15"], "starts_on": days(-2).to_string()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let clerk = token(&app, Who::Clerk);
    app.post("/v1/qualifications", &clerk, &statement(true))
        .await
        .assert_problem(422, "NO_DISASTER_DECLARED");
    // Declared for the facility's municipality (991007, see the demo seed).
    let r = app
        .post(
            "/v1/admin/disasters",
            &admin,
            &json!({"name": "テスト地震", "municipalities": ["991007"],
                    "starts_on": days(-1).to_string(), "ends_on": days(7).to_string()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let disaster_id = r.body["disaster_id"].as_str().unwrap().to_string();
    app.post("/v1/qualifications", &clerk, &statement(false))
        .await
        .assert_problem(422, "VERBAL_CONSENT_REQUIRED");
    let r = app
        .post("/v1/qualifications", &clerk, &statement(true))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["method"], "disaster");
    assert_eq!(r.body["disaster"]["name"], "テスト地震");
    assert_eq!(r.body["claim"]["disaster"]["name"], "テスト地震");
    assert_eq!(r.body["claim_basis"], "current");
    assert_eq!(r.body["claim"]["number"], "1007");
    assert_eq!(r.body["info_sharing"], true);
    // Someone the registry does not know: 不詳, marked as disaster mode.
    let mut stranger = statement(true);
    stranger["insured"]["name"] = "不明　花子".into();
    let r = app.post("/v1/qualifications", &clerk, &stranger).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["claim_basis"], "unknown");
    assert!(
        r.body["claim"]["remarks"]
            .as_str()
            .unwrap()
            .starts_with("災害時")
    );
    // The second pharmacy has no municipality on file and prefecture 99 is not declared.
    app.post(
        "/v1/qualifications",
        &token(&app, Who::Pharmacist2),
        &statement(true),
    )
    .await
    .assert_problem(422, "NO_DISASTER_DECLARED");
    // Ended: no longer available.
    let r = app
        .post_keyed(
            &format!("/v1/admin/disasters/{disaster_id}/end"),
            &admin,
            None,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["ended_at"].is_string());
    app.post("/v1/qualifications", &clerk, &statement(true))
        .await
        .assert_problem(422, "NO_DISASTER_DECLARED");
    let list = app.get("/v1/admin/disasters", &admin).await;
    assert_eq!(list.body["disasters"].as_array().unwrap().len(), 2);
    // Bad declarations name the field.
    let r = app
        .post(
            "/v1/admin/disasters",
            &admin,
            &json!({"name": "x", "municipalities": ["131017"], "starts_on": "2026-01-02", "ends_on": "2026-01-01"}),
        )
        .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["municipalities[0]", "ends_on"]);
}

/// Registers the standard prescription for another patient identity.
fn prescription_for(insurer: &str, symbol: &str, number: &str, name: &str, birth: &str) -> Value {
    let mut p = prescription();
    p["insurance"]["insurer_number"] = insurer.into();
    p["insurance"]["symbol"] = symbol.into();
    p["insurance"]["number"] = number.into();
    p["insurance"]["relationship"] = "insured".into();
    p["patient"]["name"] = name.into();
    p["patient"]["birth_date"] = birth.into();
    p
}

#[tokio::test]
async fn the_card_path_lists_and_receives_and_the_holder_sees_the_claim_basis() {
    let app = TestApp::spawn().await;
    registry(&app).await;
    // Two prescriptions for the person who changed insurance: one under each coverage.
    let old = app
        .register(&prescription_for(
            "01130012",
            "E1",
            "1005",
            "保険　変更",
            "1983-05-05",
        ))
        .await;
    let mut newer = prescription_for("01270016", "E5", "2005", "保険　変更", "1983-05-05");
    newer["rps"].as_array_mut().unwrap().truncate(1);
    // The same person under the earlier insurance already has ユーロジン: the check follows the
    // insurance change through the registry and finds the duplicate.
    let r = app.post("/v1/prescriptions", &app.doctor_2(), &newer).await;
    r.assert_problem(409, "UNRESOLVED_CHECK_HITS");
    let r = app.register_overriding(&app.doctor_2(), &newer).await;
    let newer_id = r["prescription_id"].as_str().unwrap().to_string();
    // Someone else's prescription never shows up.
    app.register_overriding(&app.doctor(), &prescription())
        .await;

    let clerk = token(&app, Who::Clerk);
    let q = app
        .post("/v1/qualifications/card", &clerk, &card("CARD-E5", "face"))
        .await;
    assert_eq!(q.status, 201, "{}", q.text);
    let qid = q.body["qualification_id"].as_str().unwrap().to_string();
    let list = app
        .get(&format!("/v1/qualifications/{qid}/prescriptions"), &clerk)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let items = list.body["prescriptions"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", list.text);
    let issuers: Vec<&str> = items
        .iter()
        .map(|p| p["issuer"]["code"].as_str().unwrap())
        .collect();
    assert!(issuers.contains(&CLINIC) && issuers.contains(&CLINIC_2));
    assert!(items.iter().all(|p| p["receivable"] == true));
    let r = app
        .post(
            &format!("/v1/prescriptions/{newer_id}/receive"),
            &clerk,
            &json!({"qualification_id": qid}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "dispensing");
    assert_eq!(r.body["qualification"]["method"], "card");
    assert_eq!(r.body["qualification"]["claim_basis"], "current");
    // The prescription of the other patient cannot be taken with this qualification.
    let other = app
        .register_overriding(&app.doctor(), &prescription())
        .await;
    app.post(
        &format!(
            "/v1/prescriptions/{}/receive",
            other["prescription_id"].as_str().unwrap()
        ),
        &clerk,
        &json!({"qualification_id": qid}),
    )
    .await
    .assert_problem(404, "PRESCRIPTION_NOT_FOUND");

    // A second pharmacy with its own card qualification sees it held by the first.
    let p2 = app.pharmacist_2();
    let q2 = app
        .post("/v1/qualifications/card", &p2, &card("CARD-E5", "face"))
        .await;
    let q2id = q2.body["qualification_id"].as_str().unwrap().to_string();
    let list = app
        .get(&format!("/v1/qualifications/{q2id}/prescriptions"), &p2)
        .await;
    let held = list.body["prescriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prescription_id"] == newer_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(held["status"], "dispensing");
    assert_eq!(held["holder"]["name"], "検証用薬局");
    assert_eq!(held["receivable"], false);
    app.post(
        &format!("/v1/prescriptions/{newer_id}/receive"),
        &p2,
        &json!({"qualification_id": q2id}),
    )
    .await
    .assert_problem(409, "HELD_BY_ANOTHER_PHARMACY");
    // Qualifications are bound to the facility that made them.
    app.get(&format!("/v1/qualifications/{qid}/prescriptions"), &p2)
        .await
        .assert_problem(404, "QUALIFICATION_NOT_FOUND");
    app.get(&format!("/v1/qualifications/{qid}"), &p2)
        .await
        .assert_problem(404, "QUALIFICATION_NOT_FOUND");
    assert_eq!(
        app.get(&format!("/v1/qualifications/{qid}"), &clerk)
            .await
            .status,
        200
    );

    // Dispense: the record keeps the claim basis; the holder sees it, the issuer does not.
    let pharmacist = app.pharmacist();
    let dispense = json!({"dispensed_on": today().to_string(), "items": [
        {"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 1, "unit": "錠", "days": 14}
    ]});
    let r = app
        .post(
            &format!("/v1/prescriptions/{newer_id}/dispense"),
            &pharmacist,
            &dispense,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = app
        .get(&format!("/v1/prescriptions/{newer_id}"), &pharmacist)
        .await;
    assert_eq!(seen.body["dispensings"][0]["claim"]["basis"], "current");
    assert_eq!(
        seen.body["dispensings"][0]["claim"]["insurer_number"],
        "01270016"
    );
    let issuer = app
        .get(&format!("/v1/prescriptions/{newer_id}"), &app.doctor_2())
        .await;
    assert_eq!(issuer.status, 200);
    assert!(issuer.body["dispensings"][0].get("claim").is_none());
    assert!(issuer.body["qualification"].is_null());
    let _ = old;
}

#[tokio::test]
async fn the_number_path_keeps_the_fallback_claim_and_refuses_another_patients_qualification() {
    let app = TestApp::spawn().await;
    let r = app.register(&prescription()).await;
    let id = r["prescription_id"].as_str().unwrap().to_string();
    let number = r["exchange_number"].as_str().unwrap().to_string();
    let pharmacist = app.pharmacist();
    // A qualification for someone else.
    let other = app
        .post(
            "/v1/qualifications",
            &pharmacist,
            &json!({"method": "qualification_certificate", "insured": key("01130012", "1234", "5678", "1975-07-07")}),
        )
        .await;
    assert_eq!(other.status, 201, "{}", other.text);
    let r = app
        .post(
            "/v1/prescriptions/receive",
            &pharmacist,
            &json!({"exchange_number": number, "insured": insured(),
                    "qualification_id": other.body["qualification_id"]}),
        )
        .await;
    r.assert_problem(422, "QUALIFICATION_MISMATCH");
    // The card path cannot use a fallback qualification.
    app.get(
        &format!(
            "/v1/qualifications/{}/prescriptions",
            other.body["qualification_id"].as_str().unwrap()
        ),
        &pharmacist,
    )
    .await
    .assert_problem(422, "CARD_PATH_REQUIRED");
    // 申立書 with the numbers: the receive keeps it, the dispensing records the basis.
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
    let r = app
        .post(
            "/v1/prescriptions/receive",
            &pharmacist,
            &json!({"exchange_number": number, "insured": insured(), "birth_date": "2011-01-01",
                    "qualification_id": q.body["qualification_id"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["qualification"]["method"], "self_declaration");
    let events = app
        .get(&format!("/v1/prescriptions/{id}/events"), &pharmacist)
        .await;
    let received = &events.body["events"][1];
    assert_eq!(received["detail"]["method"], "self_declaration");
    assert_eq!(received["detail"]["claim_basis"], "current");
}

#[tokio::test]
async fn expired_and_grace_period_qualifications_cannot_hand_over_prescriptions() {
    let app = TestApp::spawn().await;
    registry(&app).await;
    let clerk = token(&app, Who::Clerk);
    let grace = app
        .post("/v1/qualifications/card", &clerk, &card("CARD-E2", "face"))
        .await;
    assert_eq!(grace.status, 201, "{}", grace.text);
    app.get(
        &format!(
            "/v1/qualifications/{}/prescriptions",
            grace.body["qualification_id"].as_str().unwrap()
        ),
        &clerk,
    )
    .await
    .assert_problem(422, "INFO_SHARING_UNAVAILABLE");
    // A qualification older than its lifetime (24 hours by default).
    let q = app
        .post("/v1/qualifications/card", &clerk, &card("CARD-E1", "face"))
        .await;
    let qid = q.body["qualification_id"].as_str().unwrap().to_string();
    let stale = uuid::Uuid::now_v7();
    app.sql(&format!(
        "INSERT INTO qualifications (id, at, facility_code, staff_id, role, method, outcome, person_id,
             claim_basis, info_sharing, expires_at, detail)
         SELECT '{stale}', at - interval '25 hours', facility_code, staff_id, role, method, outcome,
                person_id, claim_basis, info_sharing, now() - interval '1 hour',
                jsonb_set(detail, '{{qualification_id}}', '\"{stale}\"')
           FROM qualifications WHERE id = '{qid}'"
    ))
    .await;
    app.get(&format!("/v1/qualifications/{stale}/prescriptions"), &clerk)
        .await
        .assert_problem(410, "QUALIFICATION_EXPIRED");
    app.get("/v1/qualifications/not-a-uuid/prescriptions", &clerk)
        .await
        .assert_problem(404, "QUALIFICATION_NOT_FOUND");
}

#[tokio::test]
async fn coverages_of_one_person_are_linked_and_cards_are_not_shared() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    let first = with_card(
        coverage("01130012", "L1", "1", "連結　一郎", "1970-01-01"),
        "CARD-L1",
        days(100),
    );
    let a = app.post("/v1/admin/insured", &admin, &first).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // A new insurer, the same card: the same person.
    let mut second = with_card(
        coverage("01270016", "L2", "2", "連結　一郎", "1970-01-01"),
        "CARD-L1",
        days(100),
    );
    second["valid_from"] = "2026-04-01".into();
    let b = app.post("/v1/admin/insured", &admin, &second).await;
    assert_eq!(b.status, 201, "{}", b.text);
    assert_eq!(a.body["person_id"], b.body["person_id"]);
    // The card of someone with another birth date is refused.
    let thief = with_card(
        coverage("01270016", "L3", "3", "別人　二郎", "1999-01-01"),
        "CARD-L1",
        days(100),
    );
    app.post("/v1/admin/insured", &admin, &thief)
        .await
        .assert_problem(409, "PERSON_MISMATCH");
    let persons: i64 = app
        .sql_one("SELECT count(DISTINCT person_id) FROM insured_persons WHERE symbol IN ('L1', 'L2', 'L3')")
        .await;
    assert_eq!(persons, 1);
}
