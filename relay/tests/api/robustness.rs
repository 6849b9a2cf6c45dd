//! No input may produce a 500: every endpoint is fed malformed bodies, paths and queries.

use crate::helpers::*;
use serde_json::json;

const BODIES: &[&str] = &[
    "",
    "{",
    "null",
    "[]",
    "0",
    "\"x\"",
    "{}",
    "{\"a\": 1}",
    "{\"reason\": null}",
    "{\"reason\": 5}",
    "{\"reason\": \"\\u0000\"}",
    "{\"exchange_number\": 123456, \"insured\": []}",
    "{\"exchange_number\": \"１２３４５６\", \"insured\": {\"insurer_number\": \"\", \"number\": \"\", \"branch\": \"\"}}",
    "{\"dispensed_on\": \"9999-12-31\", \"items\": [{}]}",
    "{\"issue_type\": \"electronic\", \"issued_on\": \"-009999-01-01\"}",
    "{\"quantity\": 1e400}",
    "{\"rps\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
];

#[tokio::test]
async fn malformed_bodies_never_cause_a_500() {
    let app = TestApp::spawn().await;
    let reg = app.register(&prescription()).await;
    let id = reg["prescription_id"].as_str().unwrap().to_string();
    let posts = [
        ("/v1/prescriptions".to_string(), app.doctor()),
        (format!("/v1/prescriptions/{id}/cancel"), app.doctor()),
        ("/v1/prescriptions/receive".to_string(), app.pharmacist()),
        (format!("/v1/prescriptions/{id}/release"), app.pharmacist()),
        (format!("/v1/prescriptions/{id}/dispense"), app.pharmacist()),
        ("/v1/admin/facilities".to_string(), app.admin()),
        ("/v1/admin/insured".to_string(), app.admin()),
    ];
    for (path, token) in &posts {
        for body in BODIES {
            let r = app.post_raw(path, token, "application/json", body).await;
            assert!(
                (400..500).contains(&r.status),
                "POST {path} {body:?} → {} {}",
                r.status,
                r.text
            );
            assert!(
                r.body["code"].is_string(),
                "POST {path} {body:?}: {}",
                r.text
            );
        }
    }
    // A 20-deep value of every JSON type in every field of a valid prescription.
    let base = prescription();
    let mut paths = Vec::new();
    collect_paths(&base, String::new(), &mut paths);
    for p in &paths {
        for replacement in [
            json!(null),
            json!(true),
            json!(-1),
            json!(1.5e300),
            json!("x"),
            json!([]),
            json!({}),
        ] {
            let mut body = base.clone();
            *body.pointer_mut(p).unwrap() = replacement.clone();
            let r = app.post("/v1/prescriptions", &app.doctor(), &body).await;
            assert!(
                r.status == 201 || (400..500).contains(&r.status),
                "{p} = {replacement} → {} {}",
                r.status,
                r.text
            );
        }
    }
}

fn collect_paths(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                collect_paths(v, format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                collect_paths(v, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

#[tokio::test]
async fn malformed_paths_and_queries_never_cause_a_500() {
    let app = TestApp::spawn().await;
    let doctor = app.doctor();
    for path in [
        "/v1/prescriptions/%00",
        "/v1/prescriptions/..%2f..%2fetc",
        "/v1/prescriptions/00000000-0000-0000-0000-000000000000",
        "/v1/prescriptions/%E3%81%82/events",
        "/v1/prescriptions?issued_from=abc",
        "/v1/prescriptions?insurer_number=%FF%FE",
        "/v1/prescriptions?issued_to=99999-01-01",
        "/v1/prescriptions?unknown=1",
        "/v1/prescriptions?number=x&number=y",
    ] {
        let r = app.get(path, &doctor).await;
        assert!(
            (400..500).contains(&r.status) || r.status == 200,
            "GET {path} → {} {}",
            r.status,
            r.text
        );
        assert!(
            r.status != 200 || r.body["prescriptions"].is_array(),
            "GET {path}: {}",
            r.text
        );
    }
    let long = "a".repeat(5000);
    let r = app.get(&format!("/v1/prescriptions/{long}"), &doctor).await;
    assert!((400..500).contains(&r.status), "{}", r.status);
    for path in [
        "/v1/prescriptions/%00/cancel",
        "/v1/prescriptions/x/dispense",
    ] {
        let r = app.post(path, &doctor, &json!({"reason": "x"})).await;
        assert!(
            (400..500).contains(&r.status),
            "POST {path} → {} {}",
            r.status,
            r.text
        );
    }
}

/// A yj code of 12 bytes whose 9th byte falls inside a character once panicked the handler (the
/// client saw the connection drop, no answer): registration, checks and dispensing all read it.
#[tokio::test]
async fn a_drug_code_cut_inside_a_character_is_a_field_error() {
    let app = TestApp::spawn().await;
    // 8 ASCII bytes and one 4-byte character: 12 bytes, no char boundary at byte 9.
    let code = "12345678𨄤";
    let mut body = prescription();
    body["rps"][0]["drugs"][0]["code"] = json!(code);
    let r = app.post("/v1/prescriptions", &app.doctor(), &body).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.text.contains("rps[0].drugs[0].code"),
        "the error names the field: {}",
        r.text
    );

    let check = json!({"patient": {"insured": insured(), "birth_date": "2011-01-01"},
                       "context": "prescribing", "rps": body["rps"]});
    let r = app.post("/v1/checks", &app.doctor(), &check).await;
    assert_eq!(r.status, 422, "{}", r.text);

    let reg = app.register(&prescription()).await;
    let number = reg["exchange_number"].as_str().unwrap();
    let id = reg["prescription_id"].as_str().unwrap();
    let pharmacist = app.pharmacist();
    assert_eq!(
        app.receive(&pharmacist, number, &insured()).await.status,
        200
    );
    let dispense = json!({"dispensed_on": prescription()["issued_on"],
                          "items": [{"code_system": "yj", "code": code, "name": "x", "dose": 1, "unit": "錠"}]});
    let r = app
        .post(
            &format!("/v1/prescriptions/{id}/dispense"),
            &pharmacist,
            &dispense,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("items[0].code"), "{}", r.text);
}

/// A documented path with a method it does not take is 405 with `Allow` (it was 404), also where
/// an `{id}` pattern matches the literal path too (GET /v1/prescriptions/receive).
#[tokio::test]
async fn a_method_a_documented_path_does_not_take_is_405_with_allow() {
    let app = TestApp::spawn().await;
    let token = app.doctor();
    let id = "01a20d54-0437-72d3-b4b7-479fae04948c";
    for (method, path, allow) in [
        ("TRACE", "/healthz".to_string(), "GET"),
        ("GET", "/v1/prescriptions/receive".to_string(), "POST"),
        ("DELETE", "/v1/prescriptions/receive".to_string(), "POST"),
        ("GET", "/v1/qualifications/card".to_string(), "POST"),
        ("DELETE", format!("/v1/prescriptions/{id}"), "GET"),
        ("PUT", "/v1/prescriptions".to_string(), "GET, POST"),
        ("POST", "/v1/fallbacks/originals".to_string(), "GET"),
    ] {
        let r = app
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.address),
            )
            .bearer_auth(&token)
            .send()
            .await
            .expect("request sent");
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let allowed = r
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(allowed.as_deref(), Some(allow), "{method} {path}");
        let body: serde_json::Value = r.json().await.expect("problem+json");
        assert_eq!(body["code"], "METHOD_NOT_ALLOWED", "{method} {path}");
    }
    // The documented methods still reach their handlers; an unknown path stays 404.
    let r = app.get("/v1/prescriptions/receive", &token).await;
    assert_eq!(r.status, 405, "{}", r.text);
    let r = app
        .post("/v1/prescriptions/receive", &app.pharmacist(), &json!({}))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = app.get("/v1/no-such-thing", &token).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

/// The OpenAPI document: one schema name per Rust type (`Status`, `Consent` and `FacilityRef`
/// each named two types, so one of each pair was documented with the other's shape), errors as
/// problem+json, and 401 on every operation that needs a token.
#[tokio::test]
async fn the_openapi_document_describes_what_the_relay_answers() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("json");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["OutboxStatus"]["enum"],
        json!(["pending", "sent", "dead"])
    );
    assert_eq!(
        schemas["Status"]["enum"],
        json!([
            "registered",
            "dispensing",
            "dispensed",
            "cancelled",
            "expired"
        ])
    );
    assert!(
        schemas["VerbalConsent"]["properties"]["hit_ids"].is_object(),
        "{}",
        schemas["VerbalConsent"]
    );
    assert!(
        schemas["Consent"]["properties"]["medication"].is_object(),
        "{}",
        schemas["Consent"]
    );
    assert!(schemas["PresendFacility"].is_object());
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            if op["security"].is_array() {
                assert!(responses.contains_key("401"), "{method} {path}");
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object().unwrap();
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        ["application/problem+json"],
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    assert!(operations > 40, "{operations}");
}

/// A bad query parameter is a field error naming that parameter (it was `query`, whatever the
/// parameter, with only the parser's message).
#[tokio::test]
async fn a_bad_query_parameter_is_named() {
    let app = TestApp::spawn().await;
    let doctor = app.doctor();
    for (path, token, field, code) in [
        (
            "/v1/prescriptions?issued_to=abc",
            &doctor,
            "issued_to",
            "INVALID_VALUE",
        ),
        (
            "/v1/prescriptions?insurer_number=31130842&issued_from=2026-01-01&bogus=1",
            &doctor,
            "bogus",
            "UNKNOWN_FIELD",
        ),
        (
            "/v1/admin/outbox?status=expired",
            &app.admin(),
            "status",
            "INVALID_VALUE",
        ),
        (
            "/v1/held-prescriptions?older_than_hours=x",
            &app.pharmacist(),
            "older_than_hours",
            "INVALID_VALUE",
        ),
        (
            "/v1/fallbacks?status=faxed&status=closed",
            &doctor,
            "status",
            "DUPLICATE",
        ),
    ] {
        let r = app.get(path, token).await;
        assert_eq!(r.status, 422, "{path}: {}", r.text);
        assert_eq!(r.body["errors"][0]["field"], field, "{path}: {}", r.text);
        assert_eq!(r.body["errors"][0]["code"], code, "{path}: {}", r.text);
    }
    let r = app
        .post("/v1/prescriptions?check_id=0", &doctor, &prescription())
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["errors"][0]["field"], "check_id", "{}", r.text);
}
