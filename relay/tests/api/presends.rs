//! 事前送付 (pre-sending) and the facility directory: a clinic forwards a prescription to the
//! pharmacy the patient names; the pharmacy lists it (never with the insurance identity), prepares,
//! and receives it as usual — exclusively, with the identity — unless another pharmacy does first.

use crate::helpers::*;
use relay::auth::Role;
use serde_json::{Value, json};

/// Registers the standard prescription and returns (id, exchange number).
async fn registered(app: &TestApp) -> (String, String) {
    let r = app
        .register_overriding(&app.doctor(), &prescription())
        .await;
    (
        r["prescription_id"].as_str().unwrap().to_string(),
        r["exchange_number"].as_str().unwrap().to_string(),
    )
}

async fn presend(app: &TestApp, id: &str, pharmacy: &str) -> Resp {
    app.post(
        &format!("/v1/prescriptions/{id}/presend"),
        &app.doctor(),
        &json!({"pharmacy": pharmacy}),
    )
    .await
}

/// The presends listed for `token`'s pharmacy.
async fn incoming(app: &TestApp, token: &str) -> (Vec<Value>, String) {
    let r = app.get("/v1/presends", token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    (r.body["presends"].as_array().unwrap().clone(), r.text)
}

async fn actions(app: &TestApp, id: &str) -> Vec<Value> {
    app.get(&format!("/v1/prescriptions/{id}/events"), &app.doctor())
        .await
        .body["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn presend_is_listed_at_that_pharmacy_with_the_rps_and_without_the_identity() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;

    let r = presend(&app, &id, PHARMACY).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["pharmacy"]["code"], PHARMACY);
    assert_eq!(r.body["pharmacy"]["name"], "検証用薬局");
    assert!(r.body["replaced_pharmacy"].is_null());
    let presend_id = r.body["id"].as_str().unwrap().to_string();
    // The same pharmacy again is the same presend.
    let again = presend(&app, &id, PHARMACY).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["id"], presend_id.as_str());

    let (list, text) = incoming(&app, &app.pharmacist()).await;
    assert_eq!(list.len(), 1, "{text}");
    let p = &list[0];
    assert_eq!(p["id"], presend_id.as_str());
    assert_eq!(p["prescription_id"], id.as_str());
    assert_eq!(p["status"], "sent");
    assert_eq!(p["exchange_number"], number.as_str());
    assert_eq!(p["issued_on"], today().to_string());
    assert_eq!(p["clinic"]["code"], CLINIC);
    assert_eq!(p["clinic"]["name"], "検証用病院");
    assert_eq!(p["patient"]["name"], "電処　有効五二");
    assert_eq!(p["patient"]["birth_date"], "2011-01-01");
    let rps = p["rps"].as_array().unwrap();
    assert_eq!(rps.len(), 2);
    assert_eq!(rps[0]["drugs"][0]["name"], "ユーロジン１ｍｇ錠");
    assert_eq!(rps[0]["usage"]["text"], "1日1回就寝前");
    assert_eq!(rps[1]["drugs"][0]["dose"], 0.5);
    assert!(p["presented_at"].is_string());
    assert!(p["prepared_at"].is_null());
    assert!(!text.contains("31130842"), "insurer number leaked: {text}");
    assert!(!text.contains("010001"), "insured number leaked: {text}");
    assert!(!text.contains("insurance"), "{text}");

    // Not listed at another pharmacy.
    let (other, _) = incoming(&app, &app.pharmacist_2()).await;
    assert!(other.is_empty());

    // One presend event, with the pharmacy.
    let events = actions(&app, &id).await;
    let presends: Vec<&Value> = events.iter().filter(|e| e["action"] == "presend").collect();
    assert_eq!(presends.len(), 1);
    assert_eq!(presends[0]["detail"]["pharmacy"], PHARMACY);
    assert_eq!(presends[0]["facility_code"], CLINIC);
}

#[tokio::test]
async fn pharmacy_marks_prepared_idempotently() {
    let app = TestApp::spawn().await;
    let (id, _) = registered(&app).await;
    let presend_id = presend(&app, &id, PHARMACY).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/presends/{presend_id}/prepared");

    // Only the pharmacy it was sent to.
    app.post(&path, &app.pharmacist_2(), &json!({}))
        .await
        .assert_problem(403, "FORBIDDEN");
    app.post(&path, &app.doctor(), &json!({}))
        .await
        .assert_problem(403, "FORBIDDEN");
    app.post(
        "/v1/presends/00000000-0000-0000-0000-000000000000/prepared",
        &app.pharmacist(),
        &json!({}),
    )
    .await
    .assert_problem(404, "PRESEND_NOT_FOUND");

    let r = app.post(&path, &app.pharmacist(), &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "prepared");
    let at = r.body["prepared_at"].as_str().unwrap().to_string();
    let again = app.post(&path, &app.pharmacist(), &json!({})).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["prepared_at"], at.as_str());

    let (list, _) = incoming(&app, &app.pharmacist()).await;
    assert_eq!(list[0]["status"], "prepared");
    assert_eq!(list[0]["prepared_at"], at.as_str());
    let r = app.get("/v1/presends?status=sent", &app.pharmacist()).await;
    assert_eq!(r.body["presends"].as_array().unwrap().len(), 0);
    let r = app
        .get("/v1/presends?status=prepared", &app.pharmacist())
        .await;
    assert_eq!(r.body["presends"].as_array().unwrap().len(), 1);
    let prepared = actions(&app, &id)
        .await
        .iter()
        .filter(|e| e["action"] == "presend_prepared")
        .count();
    assert_eq!(prepared, 1);
}

#[tokio::test]
async fn presending_elsewhere_moves_it() {
    let app = TestApp::spawn().await;
    let (id, _) = registered(&app).await;
    let first = presend(&app, &id, PHARMACY).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = presend(&app, &id, PHARMACY_2).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["replaced_pharmacy"], PHARMACY);
    assert_ne!(r.body["id"], first.as_str());

    assert!(incoming(&app, &app.pharmacist()).await.0.is_empty());
    let (list, _) = incoming(&app, &app.pharmacist_2()).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["prescription_id"], id.as_str());
    // The replaced presend can no longer be prepared.
    app.post(
        &format!("/v1/presends/{first}/prepared"),
        &app.pharmacist(),
        &json!({}),
    )
    .await
    .assert_problem(409, "PRESEND_NOT_CURRENT");
    // Both presends are on record.
    let rows: i64 = app
        .sql_one(&format!(
            "SELECT count(*) FROM presends WHERE prescription_id = '{id}'"
        ))
        .await;
    assert_eq!(rows, 2);
    let events: Vec<Value> = actions(&app, &id)
        .await
        .into_iter()
        .filter(|e| e["action"] == "presend")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["detail"]["pharmacy"], PHARMACY_2);
    assert_eq!(events[1]["detail"]["replaces"], PHARMACY);
}

#[tokio::test]
async fn presend_is_refused_for_pharmacies_that_cannot_take_it_and_closed_prescriptions() {
    let app = TestApp::spawn().await;
    let (id, _) = registered(&app).await;

    app.sql(&format!(
        "UPDATE facilities SET accepts_e_prescriptions = false WHERE code = '{PHARMACY_2}'"
    ))
    .await;
    let r = presend(&app, &id, PHARMACY_2).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(
        r.field_errors(),
        [(
            "pharmacy".to_string(),
            "NOT_ACCEPTING_E_PRESCRIPTIONS".to_string()
        )]
    );
    // A clinic, and a well-formed code nobody registered.
    for code in [CLINIC_2.to_string(), pharmacy_code(77)] {
        let r = presend(&app, &id, &code).await;
        r.assert_problem(422, "VALIDATION_FAILED");
        assert_eq!(
            r.field_errors(),
            [("pharmacy".to_string(), "UNKNOWN_PHARMACY".to_string())],
            "{code}"
        );
    }
    // A malformed code.
    let r = presend(&app, &id, "12345").await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(r.field_errors()[0].0, "pharmacy");
    // Unknown prescription.
    presend(&app, "00000000-0000-0000-0000-000000000000", PHARMACY)
        .await
        .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    presend(&app, "not-a-uuid", PHARMACY)
        .await
        .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    // Nothing was recorded.
    assert!(
        !actions(&app, &id)
            .await
            .iter()
            .any(|e| e["action"] == "presend")
    );

    // Cancelled: 409 naming the status.
    let c = app
        .post(
            &format!("/v1/prescriptions/{id}/cancel"),
            &app.doctor(),
            &json!({"reason": "処方変更"}),
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    let r = presend(&app, &id, PHARMACY).await;
    r.assert_problem(409, "PRESCRIPTION_NOT_PRESENDABLE");
    assert_eq!(r.body["current_status"], "cancelled");
}

#[tokio::test]
async fn presend_of_a_held_prescription_is_refused_and_a_cancel_removes_it_from_the_list() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;
    assert_eq!(presend(&app, &id, PHARMACY).await.status, 201);
    app.post(
        &format!("/v1/prescriptions/{id}/cancel"),
        &app.doctor(),
        &json!({"reason": "処方変更"}),
    )
    .await;
    assert!(incoming(&app, &app.pharmacist()).await.0.is_empty());

    let (id, number2) = registered(&app).await;
    assert_ne!(number, number2);
    let r = app.receive(&app.pharmacist(), &number2, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = presend(&app, &id, PHARMACY_2).await;
    r.assert_problem(409, "PRESCRIPTION_NOT_PRESENDABLE");
    assert_eq!(r.body["current_status"], "dispensing");
}

#[tokio::test]
async fn receive_still_needs_the_identity_and_the_presend_shows_it_received() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;
    let presend_id = presend(&app, &id, PHARMACY).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A presend does not hold the prescription: wrong identity is still not found.
    let mut wrong = insured();
    wrong["number"] = json!("010002");
    app.receive(&app.pharmacist(), &number, &wrong)
        .await
        .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    let r = app.receive(&app.pharmacist(), &number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["holder"]["code"], PHARMACY);

    let (list, _) = incoming(&app, &app.pharmacist()).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], presend_id.as_str());
    assert_eq!(list[0]["status"], "received");
    // Preparing while holding it is still allowed.
    let r = app
        .post(
            &format!("/v1/presends/{presend_id}/prepared"),
            &app.pharmacist(),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn received_by_another_pharmacy_it_disappears_from_the_list() {
    let app = TestApp::spawn().await;
    let (id, number) = registered(&app).await;
    let presend_id = presend(&app, &id, PHARMACY).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(incoming(&app, &app.pharmacist()).await.0.len(), 1);

    // The patient changed their mind: the other pharmacy receives it as usual.
    let r = app.receive(&app.pharmacist_2(), &number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["holder"]["code"], PHARMACY_2);
    assert!(incoming(&app, &app.pharmacist()).await.0.is_empty());
    // And the first pharmacy cannot receive it any more.
    app.receive(&app.pharmacist(), &number, &insured())
        .await
        .assert_problem(409, "HELD_BY_ANOTHER_PHARMACY");
    let r = app
        .post(
            &format!("/v1/presends/{presend_id}/prepared"),
            &app.pharmacist(),
            &json!({}),
        )
        .await;
    r.assert_problem(409, "PRESEND_NOT_CURRENT");
    assert_eq!(r.body["current_status"], "held_by_another_pharmacy");

    // Released: it is open again and back on the first pharmacy's list.
    let r = app
        .post(
            &format!("/v1/prescriptions/{id}/release"),
            &app.pharmacist_2(),
            &json!({"reason": "患者都合"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(incoming(&app, &app.pharmacist()).await.0.len(), 1);
}

#[tokio::test]
async fn presend_roles_and_facilities() {
    let app = TestApp::spawn().await;
    let (id, _) = registered(&app).await;
    let body = json!({"pharmacy": PHARMACY});
    let path = format!("/v1/prescriptions/{id}/presend");
    // Pharmacy staff and admins may not presend; another clinic's doctor may not either.
    for token in [
        app.pharmacist(),
        role_token(&app, PHARMACY, Role::PharmacyClerk),
        app.admin(),
        app.doctor_2(),
        role_token(&app, CLINIC_2, Role::ClinicClerk),
    ] {
        app.post(&path, &token, &body)
            .await
            .assert_problem(403, "FORBIDDEN");
    }
    // The issuing clinic's clerk may.
    let r = app
        .post(&path, &role_token(&app, CLINIC, Role::ClinicClerk), &body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // The list is for pharmacy staff of a registered pharmacy.
    for token in [app.doctor(), app.admin()] {
        app.get("/v1/presends", &token)
            .await
            .assert_problem(403, "FORBIDDEN");
    }
    app.get(
        "/v1/presends",
        &app.token(CLINIC, Role::Pharmacist, "odd-token"),
    )
    .await
    .assert_problem(403, "FORBIDDEN");
    let (list, _) = incoming(&app, &role_token(&app, PHARMACY, Role::PharmacyClerk)).await;
    assert_eq!(list.len(), 1);
    app.get("/v1/presends?status=bogus", &app.pharmacist())
        .await
        .assert_problem(422, "VALIDATION_FAILED");
}

#[tokio::test]
async fn directory_lists_every_facility_with_mail_and_fax() {
    let app = TestApp::spawn().await;
    let r = app.get("/v1/directory", &app.pharmacist()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let facilities = r.body["facilities"].as_array().unwrap();
    let codes: Vec<&str> = facilities
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    for code in [CLINIC, CLINIC_2, PHARMACY, PHARMACY_2] {
        assert!(codes.contains(&code), "{code} missing: {}", r.text);
    }
    let pharmacy = facilities.iter().find(|f| f["code"] == PHARMACY).unwrap();
    assert_eq!(pharmacy["kind"], "pharmacy");
    assert_eq!(pharmacy["fax_email"], "fax-9948000014@demo.invalid");
    assert_eq!(pharmacy["email"], "pharmacy-1@demo.invalid");
    assert_eq!(pharmacy["accepts_e_prescriptions"], true);
    let clinic = facilities.iter().find(|f| f["code"] == CLINIC).unwrap();
    assert_eq!(clinic["kind"], "clinic");
    assert_eq!(clinic["email"], "clinic-1@demo.invalid");
    assert!(clinic.as_object().unwrap().contains_key("fax_email"));
    for key in ["name", "address", "phone"] {
        assert!(clinic.as_object().unwrap().contains_key(key), "{key}");
    }
    assert!(r.body["generated_at"].is_string());
    let version = r.body["version"].as_str().unwrap().to_string();
    assert_eq!(r.header("etag"), Some(format!("\"{version}\"").as_str()));

    // Unchanged: 304 with If-None-Match; a change gives a new version.
    let not_modified = app
        .http
        .get(format!("{}/v1/directory", app.address))
        .bearer_auth(app.doctor())
        .header("If-None-Match", format!("\"{version}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status().as_u16(), 304);
    app.sql(&format!(
        "UPDATE facilities SET fax_email = 'fax-new@demo.invalid', updated_at = now() WHERE code = '{CLINIC}'"
    ))
    .await;
    let r2 = app.get("/v1/directory", &app.doctor()).await;
    assert_eq!(r2.status, 200);
    assert_ne!(r2.body["version"], version.as_str());

    // Any clinic or pharmacy role; not anonymous, not admin.
    for token in [
        role_token(&app, CLINIC, Role::ClinicClerk),
        role_token(&app, PHARMACY, Role::PharmacyClerk),
    ] {
        assert_eq!(app.get("/v1/directory", &token).await.status, 200);
    }
    app.get("/v1/directory", &app.admin())
        .await
        .assert_problem(403, "FORBIDDEN");
    assert_eq!(app.get_anon("/v1/directory").await.status, 401);
}
