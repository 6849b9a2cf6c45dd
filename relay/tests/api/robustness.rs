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
