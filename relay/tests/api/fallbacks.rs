//! The outage fallback (domain.md §8): cases from request to closure, the cancellation in the
//! same transaction (or pending), paper reissues that can never be dispensed together with the
//! e-prescription, originals by post with cover letters, reminders sent once, and every mail
//! received by a real SMTP server on loopback.

use std::time::Duration;

use relay::config::{DatabaseUrl, Settings};
use relay::mail::Worker;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::smtp::{Parsed, TestSmtp};

/// A relay mailing through `smtp`, with periodic jobs off: the test runs the worker.
async fn app_with(smtp: &TestSmtp, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let url = smtp.smtp_url();
    TestApp::spawn_with(move |s| {
        s.smtp_url = Some(url);
        s.jobs.enabled = false;
        adjust(s);
    })
    .await
}

fn worker(app: &TestApp, smtp: &TestSmtp) -> Worker {
    let mut s = Settings::with_database(DatabaseUrl::new("postgres://unused@127.0.0.1/unused"));
    s.smtp_url = Some(smtp.smtp_url());
    s.mail.backoff_base_ms = 1;
    Worker::new(app.pool.clone(), &s).expect("worker")
}

/// Delivers everything due and returns the messages received since `seen`.
async fn deliver(app: &TestApp, smtp: &TestSmtp, seen: usize) -> Vec<Parsed> {
    worker(app, smtp).drain().await.expect("worker pass");
    smtp.received()[seen..].iter().map(|m| m.parse()).collect()
}

fn pdf_text(pdf: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("relay-fallback-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args([path.to_str().unwrap(), "-"])
        .output()
        .expect("pdftotext (poppler-utils)");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET returning the raw body (PDFs).
async fn get_bytes(app: &TestApp, path: &str, token: &str) -> (u16, Vec<u8>) {
    let r = app
        .http
        .get(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent");
    (r.status().as_u16(), r.bytes().await.expect("body").to_vec())
}

/// Page 1 of a paper prescription PDF at 300 dpi, its JAHIS symbol read by zbarimg and parsed
/// by the relay's JAHIS decoder, as the prescription JSON.
fn scan_paper(pdf: &[u8]) -> Value {
    use relay::domain::lifecycle::IssueType;
    use relay::domain::{jahis, sj1};
    let dir = std::env::temp_dir().join(format!("relay-fax-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fax.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftoppm")
        .args(["-r", "300", "-png", "-f", "1", "-l", "1", "-singlefile"])
        .arg(&path)
        .arg(dir.join("page"))
        .status()
        .expect("pdftoppm (poppler-utils)");
    assert!(out.success());
    // zbarimg (an independent reader) hands back the symbol's Shift_JIS bytes as they are.
    let out = std::process::Command::new("zbarimg")
        .args(["-q", "--raw", "-Sbinary"])
        .arg(dir.join("page.png"))
        .output()
        .expect("zbarimg (zbar-tools)");
    let _ = std::fs::remove_dir_all(&dir);
    let mut bytes = out.stdout;
    if bytes.last() == Some(&b'\n') && bytes.len() >= 2 && bytes[bytes.len() - 2] == 0x1a {
        bytes.pop();
    }
    assert!(
        bytes.starts_with(b"JAHIS10\r\n"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    let records = jahis::decode(&bytes).expect("JAHIS text");
    let parsed = sj1::from_records(&records, IssueType::Electronic).expect("records");
    serde_json::to_value(parsed.draft.validate(today()).expect("valid prescription")).unwrap()
}

async fn request(app: &TestApp, token: &str, body: &Value) -> Resp {
    app.post("/v1/fallbacks", token, body).await
}

fn by_number(number: &str, preferred: &str) -> Value {
    json!({"exchange_number": number, "insured": insured(),
           "reason": "薬局システム障害で電子処方箋を取得できない", "preferred": preferred})
}

async fn step(app: &TestApp, id: &str, path: &str, token: &str, body: &Value) -> Resp {
    app.post(&format!("/v1/fallbacks/{id}/{path}"), token, body)
        .await
}

#[tokio::test]
async fn the_fax_path_runs_to_the_original_with_every_mail_delivered() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |_| {}).await;
    let reg = app.register(&prescription()).await;
    let number = reg["exchange_number"].as_str().unwrap().to_string();
    let pid = reg["prescription_id"].as_str().unwrap().to_string();
    let pharmacist = app.pharmacist();
    let doctor = app.doctor();

    // The pharmacy has not received it: the number and identity find it.
    let r = request(&app, &pharmacist, &by_number(&number, "fax")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "requested");
    let id = r.body["fallback_id"].as_str().unwrap().to_string();
    let mails = deliver(&app, &smtp, 0).await;
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.to, ["clinic-1@demo.invalid"]);
    assert!(
        m.subject.contains("代替手段の依頼") && m.subject.contains("検証用薬局"),
        "{}",
        m.subject
    );
    assert!(m.subject.contains(&number));
    assert!(
        m.body.contains("検証用病院 御中") && m.body.contains("薬局システム障害"),
        "{}",
        m.body
    );
    assert!(
        !m.body.contains("電処"),
        "no patient name for the clinic: {}",
        m.body
    );

    // Out of order, or by the wrong side: refused, naming the state; nothing changes.
    step(
        &app,
        &id,
        "original-mailed",
        &doctor,
        &json!({"mailed_on": today().to_string()}),
    )
    .await
    .assert_problem(409, "FALLBACK_STATE_CONFLICT");
    let r = step(
        &app,
        &id,
        "dispensed",
        &pharmacist,
        &json!({"dispensed_on": today().to_string()}),
    )
    .await;
    r.assert_problem(409, "FALLBACK_STATE_CONFLICT");
    assert_eq!(r.body["current_status"], "requested");
    step(&app, &id, "resolve", &pharmacist, &json!({"mode": "fax"}))
        .await
        .assert_problem(403, "FORBIDDEN");
    step(
        &app,
        &id,
        "resolve",
        &app.doctor_2(),
        &json!({"mode": "fax"}),
    )
    .await
    .assert_problem(404, "FALLBACK_NOT_FOUND");

    // The clinic resolves by FAX: the e-prescription is cancelled in the same transaction and the
    // paper prescription PDF goes to the pharmacy's FAX gateway.
    let r = step(&app, &id, "resolve", &doctor, &json!({"mode": "fax"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "faxed");
    assert_eq!(r.body["cancellation"], "applied");
    let status: String = app
        .sql_one(&format!(
            "SELECT status FROM prescriptions WHERE id = '{pid}'"
        ))
        .await;
    assert_eq!(status, "cancelled");
    step(&app, &id, "resolve", &doctor, &json!({"mode": "fax"}))
        .await
        .assert_problem(409, "FALLBACK_STATE_CONFLICT");
    let mails = deliver(&app, &smtp, 1).await;
    assert_eq!(mails.len(), 1);
    let fax = &mails[0];
    assert_eq!(fax.to, ["fax-9948000014@demo.invalid"]);
    assert!(fax.subject.contains("処方箋FAX"), "{}", fax.subject);
    assert_eq!(fax.attachments.len(), 1);
    let pdf = &fax.attachments[0];
    assert_eq!(pdf.content_type, "application/pdf");
    assert!(pdf.bytes.starts_with(b"%PDF-"));
    let text = pdf_text(&pdf.bytes);
    assert!(text.contains("処方箋"), "{text}");
    assert!(
        text.contains("電処") && text.contains("ユーロジン"),
        "the right patient and drugs: {text}"
    );
    // Scanned, its JAHIS 2-D code is the prescription that was cancelled.
    let scanned = scan_paper(&pdf.bytes);
    let stored = app.get(&format!("/v1/prescriptions/{pid}"), &doctor).await;
    assert_eq!(
        scanned, stored.body["prescription"],
        "the FAX is the prescription"
    );

    // The pharmacy dispenses from the FAX; the clinic sees the original it owes and prints the
    // cover letter for that pharmacy.
    let r = step(
        &app,
        &id,
        "dispensed",
        &pharmacist,
        &json!({"dispensed_on": today().to_string()}),
    )
    .await;
    assert_eq!(r.body["status"], "dispensed_from_fax", "{}", r.text);
    let owed = app.get("/v1/fallbacks/originals", &doctor).await;
    assert_eq!(owed.status, 200, "{}", owed.text);
    assert_eq!(owed.body["pharmacies"][0]["pharmacy"]["code"], PHARMACY);
    assert_eq!(
        owed.body["pharmacies"][0]["originals"][0]["exchange_number"],
        number.as_str()
    );
    let (status, letter) = get_bytes(
        &app,
        &format!("/v1/fallbacks/originals/cover-letter.pdf?pharmacy={PHARMACY}"),
        &doctor,
    )
    .await;
    assert_eq!(status, 200);
    let text = pdf_text(&letter);
    assert!(
        text.contains("処方箋原本送付状") && text.contains("検証用薬局"),
        "{text}"
    );
    assert!(
        text.contains("電処") && text.contains(&number[..3]),
        "{text}"
    );
    app.get(
        &format!("/v1/fallbacks/originals/cover-letter.pdf?pharmacy={PHARMACY_2}"),
        &doctor,
    )
    .await
    .assert_problem(404, "NOTHING_OWED");

    // Posted, then received: a difference needs a note.
    let r = step(
        &app,
        &id,
        "original-mailed",
        &doctor,
        &json!({"mailed_on": today().to_string(), "tracking": "1234-5678-9012"}),
    )
    .await;
    assert_eq!(r.body["status"], "original_mailed", "{}", r.text);
    let owed = app.get("/v1/fallbacks/originals", &doctor).await;
    assert_eq!(owed.body["pharmacies"], json!([]));
    let r = step(
        &app,
        &id,
        "original-received",
        &pharmacist,
        &json!({"received_on": today().to_string(), "matches": false}),
    )
    .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(r.field_errors()[0], ("note".into(), "REQUIRED".into()));
    let r = step(
        &app,
        &id,
        "original-received",
        &pharmacist,
        &json!({"received_on": today().to_string(), "matches": false,
                "note": "用法の記載がFAXと異なる。処方医に確認済み"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "closed");
    assert_eq!(r.body["original_matches"], false);
    let actions: Vec<&str> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "requested",
            "resolved",
            "dispensed_from_fax",
            "original_mailed",
            "original_received"
        ]
    );
    // The history cannot be rewritten; the pharmacy lists its closed case.
    let client = app.pool.get().await.unwrap();
    assert!(
        client
            .execute("DELETE FROM fallback_events", &[])
            .await
            .is_err()
    );
    let list = app.get("/v1/fallbacks?status=closed", &pharmacist).await;
    assert_eq!(list.body["fallbacks"].as_array().unwrap().len(), 1);
    app.get("/v1/fallbacks?status=bogus", &pharmacist)
        .await
        .assert_problem(422, "VALIDATION_FAILED");
    assert_eq!(smtp.count(), 2, "no other mail");
}

#[tokio::test]
async fn a_paper_reissue_and_its_e_prescription_are_never_both_dispensed() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |_| {}).await;
    let pharmacist = app.pharmacist();
    let pharmacist_2 = app.pharmacist_2();
    let doctor = app.doctor();

    // A: the pharmacy holds the e-prescription when the clinic resolves: the cancellation is
    // pending, and the reissue cannot be received until the pharmacy releases the original.
    let reg = app.register(&prescription()).await;
    let old = reg["prescription_id"].as_str().unwrap().to_string();
    let r = app
        .receive(
            &pharmacist,
            reg["exchange_number"].as_str().unwrap(),
            &insured(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = request(
        &app,
        &pharmacist,
        &json!({"prescription_id": old, "reason": "レセコン障害", "preferred": "paper_reissue"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["fallback_id"].as_str().unwrap().to_string();
    let r = step(
        &app,
        &id,
        "resolve",
        &doctor,
        &json!({"mode": "paper_reissue"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "paper_reissued");
    assert_eq!(r.body["cancellation"], "pending");
    let new_number = r.body["reissued"]["exchange_number"]
        .as_str()
        .unwrap()
        .to_string();
    let new_id = r.body["reissued"]["prescription_id"]
        .as_str()
        .unwrap()
        .to_string();
    let reissue = app
        .get(&format!("/v1/prescriptions/{new_id}"), &doctor)
        .await;
    assert_eq!(reissue.body["issue_type"], "paper_with_exchange_number");
    let (status, paper) = get_bytes(
        &app,
        &format!("/v1/prescriptions/{new_id}/paper.pdf"),
        &doctor,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        pdf_text(&paper).contains(&new_number[..3]),
        "the reissue carries its 引換番号"
    );
    app.receive(&pharmacist_2, &new_number, &insured())
        .await
        .assert_problem(409, "REPLACED_PRESCRIPTION_OPEN");
    // The holder releases: the cancellation applies, the clinic is mailed, the reissue opens.
    let r = app
        .post(
            &format!("/v1/prescriptions/{old}/release"),
            &pharmacist,
            &json!({"reason": "システム障害のため紙で対応"}),
        )
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.text);
    let case = app.get(&format!("/v1/fallbacks/{id}"), &pharmacist).await;
    assert_eq!(case.body["cancellation"], "applied");
    let mails = deliver(&app, &smtp, 0).await;
    let applied: Vec<&Parsed> = mails
        .iter()
        .filter(|m| m.subject.contains("取消が適用"))
        .collect();
    assert_eq!(applied.len(), 1, "{mails:?}");
    assert_eq!(applied[0].to, ["clinic-1@demo.invalid"]);
    let r = app.receive(&pharmacist_2, &new_number, &insured()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // B: the holder dispenses the e-prescription after all: the reissue is cancelled with it.
    let reg = app.register_overriding(&doctor, &prescription()).await;
    let old = reg["prescription_id"].as_str().unwrap().to_string();
    app.receive(
        &pharmacist,
        reg["exchange_number"].as_str().unwrap(),
        &insured(),
    )
    .await;
    let r = request(
        &app,
        &pharmacist,
        &json!({"prescription_id": old, "reason": "レセコン障害", "preferred": "paper_reissue"}),
    )
    .await;
    let id = r.body["fallback_id"].as_str().unwrap().to_string();
    let r = step(
        &app,
        &id,
        "resolve",
        &doctor,
        &json!({"mode": "paper_reissue"}),
    )
    .await;
    let new_number = r.body["reissued"]["exchange_number"]
        .as_str()
        .unwrap()
        .to_string();
    let dispensing = json!({"dispensed_on": today().to_string(),
        "items": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 1, "unit": "錠", "days": 14}]});
    // A (dispensed by pharmacy 2 from its paper reissue) is history now, but the doctor's
    // override travels with B: the dispensing goes through.
    let r = app
        .post(
            &format!("/v1/prescriptions/{old}/dispense"),
            &pharmacist,
            &dispensing,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.receive(&pharmacist_2, &new_number, &insured())
        .await
        .assert_problem(410, "PRESCRIPTION_CANCELLED");
}

#[tokio::test]
async fn requests_are_checked_and_withdrawal_ends_a_case() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |_| {}).await;
    let pharmacist = app.pharmacist();
    let reg = app.register(&prescription()).await;
    let number = reg["exchange_number"].as_str().unwrap().to_string();

    // Bad requests name the field; an unknown number is 404.
    let r = request(
        &app,
        &pharmacist,
        &json!({"reason": " ", "preferred": "fax"}),
    )
    .await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    assert!(fields.contains(&"reason".into()) && fields.contains(&"prescription_id".into()));
    request(
        &app,
        &pharmacist,
        &json!({"exchange_number": number, "insured": insured(),
        "reason": "x", "preferred": "pigeon"}),
    )
    .await
    .assert_problem(422, "VALIDATION_FAILED");
    let mut other = number.clone().into_bytes();
    other[5] = if other[5] == b'9' { b'0' } else { other[5] + 1 };
    request(
        &app,
        &pharmacist,
        &by_number(&String::from_utf8(other).unwrap(), "fax"),
    )
    .await
    .assert_problem(404, "PRESCRIPTION_NOT_FOUND");
    request(&app, &app.doctor(), &by_number(&number, "fax"))
        .await
        .assert_problem(403, "FORBIDDEN");

    // One open case per prescription; withdrawal ends it, and a new one may follow.
    let r = request(&app, &pharmacist, &by_number(&number, "fax")).await;
    let id = r.body["fallback_id"].as_str().unwrap().to_string();
    let r = request(&app, &pharmacist, &by_number(&number, "paper_reissue")).await;
    r.assert_problem(409, "FALLBACK_EXISTS");
    assert_eq!(r.body["fallback_id"], id.as_str());
    app.get(&format!("/v1/fallbacks/{id}"), &app.pharmacist_2())
        .await
        .assert_problem(404, "FALLBACK_NOT_FOUND");
    let r = step(
        &app,
        &id,
        "withdraw",
        &pharmacist,
        &json!({"reason": "復旧した"}),
    )
    .await;
    assert_eq!(r.body["status"], "withdrawn", "{}", r.text);
    let r = step(&app, &id, "withdraw", &pharmacist, &json!({})).await;
    r.assert_problem(409, "FALLBACK_STATE_CONFLICT");
    assert_eq!(r.body["current_status"], "withdrawn");
    step(&app, &id, "resolve", &app.doctor(), &json!({"mode": "fax"}))
        .await
        .assert_problem(409, "FALLBACK_STATE_CONFLICT");
    let r = request(&app, &pharmacist, &by_number(&number, "fax")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["fallback_id"].as_str().unwrap().to_string();

    // A pharmacy without a FAX gateway: the clinic is told to reissue on paper instead.
    app.sql("UPDATE facilities SET fax_email = NULL WHERE code = '9948000014'")
        .await;
    step(&app, &id, "resolve", &app.doctor(), &json!({"mode": "fax"}))
        .await
        .assert_problem(409, "NO_FAX_ADDRESS");
    // A dispensed prescription has nothing to fall back from.
    let reg = app
        .register_overriding(&app.doctor(), &prescription())
        .await;
    let n2 = reg["exchange_number"].as_str().unwrap();
    let p2 = reg["prescription_id"].as_str().unwrap();
    app.receive(&pharmacist, n2, &insured()).await;
    app.sql(&format!(
        "UPDATE prescriptions SET status = 'dispensed' WHERE id = '{p2}'"
    ))
    .await;
    request(&app, &pharmacist, &by_number(n2, "fax"))
        .await
        .assert_problem(409, "ALREADY_DISPENSED");
}

#[tokio::test]
async fn a_request_made_while_smtp_is_down_is_delivered_once_it_returns() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |_| {}).await;
    let reg = app.register(&prescription()).await;
    smtp.stop().await;
    let r = request(
        &app,
        &app.pharmacist(),
        &by_number(reg["exchange_number"].as_str().unwrap(), "paper_reissue"),
    )
    .await;
    assert_eq!(
        r.status, 201,
        "the request does not wait for mail: {}",
        r.text
    );
    let pass = worker(&app, &smtp).run_once().await.expect("pass");
    assert_eq!(pass.sent, 0);
    let pending: i64 = app
        .sql_one("SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts = 1")
        .await;
    assert_eq!(pending, 1);
    smtp.restart().await;
    // Past the backoff, delivered; further passes send nothing more.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mails = deliver(&app, &smtp, 0).await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].subject.contains("代替手段の依頼"));
    worker(&app, &smtp).drain().await.unwrap();
    assert_eq!(smtp.count(), 1, "exactly once");
}

#[tokio::test]
async fn reminders_go_out_once_and_the_aging_list_shows_them() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |s| {
        s.fallbacks.held_reminder_hours = 0;
        s.fallbacks.original_reminder_days = 0;
    })
    .await;
    let mut settings = Settings::with_database(DatabaseUrl::new("postgres://unused@127.0.0.1/u"));
    settings.fallbacks.held_reminder_hours = 0;
    settings.fallbacks.original_reminder_days = 0;
    let pharmacist = app.pharmacist();

    // Held without a result ("調剤中 forever").
    let held = app.register(&prescription()).await;
    app.receive(
        &pharmacist,
        held["exchange_number"].as_str().unwrap(),
        &insured(),
    )
    .await;
    let list = app
        .get("/v1/held-prescriptions?older_than_hours=0", &pharmacist)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(
        list.body["pharmacies"][0]["prescriptions"][0]["reminder"],
        Value::Null
    );
    assert_eq!(
        relay::reminders::run_once(&app.pool, &settings)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        relay::reminders::run_once(&app.pool, &settings)
            .await
            .unwrap(),
        0
    );
    let mails = deliver(&app, &smtp, 0).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["pharmacy-1@demo.invalid"]);
    assert!(
        mails[0].subject.contains("調剤結果が未登録"),
        "{}",
        mails[0].subject
    );
    assert!(!mails[0].body.contains("電処"));
    let list = app
        .get("/v1/held-prescriptions?older_than_hours=0", &pharmacist)
        .await;
    assert_eq!(
        list.body["pharmacies"][0]["prescriptions"][0]["reminder"]["status"],
        "sent"
    );
    // The operator sees every pharmacy; a clinic sees none of it.
    let all = app
        .get("/v1/held-prescriptions?older_than_hours=0", &app.admin())
        .await;
    assert_eq!(all.body["pharmacies"][0]["pharmacy"]["name"], "検証用薬局");
    app.get("/v1/held-prescriptions", &app.doctor())
        .await
        .assert_problem(403, "FORBIDDEN");

    // An original not posted after the FAX reminds the clinic; posted and not received, the
    // pharmacy; each once.
    let reg = app
        .register_overriding(&app.doctor(), &prescription())
        .await;
    let r = request(
        &app,
        &app.pharmacist_2(),
        &by_number(reg["exchange_number"].as_str().unwrap(), "fax"),
    )
    .await;
    let id = r.body["fallback_id"].as_str().unwrap().to_string();
    step(&app, &id, "resolve", &app.doctor(), &json!({"mode": "fax"})).await;
    app.sql("UPDATE fallbacks SET resolved_at = now() - interval '1 hour'")
        .await;
    assert_eq!(
        relay::reminders::run_once(&app.pool, &settings)
            .await
            .unwrap(),
        1
    );
    let yesterday = today()
        .checked_sub(jiff::ToSpan::days(1))
        .unwrap()
        .to_string();
    step(
        &app,
        &id,
        "original-mailed",
        &app.doctor(),
        &json!({"mailed_on": yesterday}),
    )
    .await;
    assert_eq!(
        relay::reminders::run_once(&app.pool, &settings)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        relay::reminders::run_once(&app.pool, &settings)
            .await
            .unwrap(),
        0
    );
    let mails = deliver(&app, &smtp, 1).await;
    let subjects: Vec<(&str, &str)> = mails
        .iter()
        .filter(|m| m.subject.contains("処方箋原本"))
        .map(|m| (m.to[0].as_str(), m.subject.as_str()))
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(
        subjects
            .iter()
            .any(|(to, s)| *to == "clinic-1@demo.invalid" && s.contains("未送付"))
    );
    assert!(
        subjects
            .iter()
            .any(|(to, s)| *to == "pharmacy-2@demo.invalid" && s.contains("受領が未記録"))
    );
}

#[tokio::test]
async fn registration_and_receiving_stop_during_a_declared_outage_and_resume_without_restart() {
    let app = TestApp::spawn().await;
    let admin = app.admin();
    let pharmacist = app.pharmacist();
    let before = app.register(&prescription()).await;
    let started = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(60))
        .unwrap()
        .to_string();
    let declare = |scope: &str| json!({"scope": scope, "starts_at": started, "note": "電子処方箋管理サービス障害"});

    // `issuing`: registration answers 503 with the paper instruction; receiving goes on.
    let o = app
        .post("/v1/admin/outages", &admin, &declare("issuing"))
        .await;
    assert_eq!(o.status, 201, "{}", o.text);
    let oid = o.body["id"]
        .as_str()
        .or(o.body["outage_id"].as_str())
        .unwrap()
        .to_string();
    let mut other = prescription();
    other["patient"]["birth_date"] = json!("1975-07-07");
    other["insurance"] = json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678",
                                "relationship": "insured", "branch": "01", "copay_rate": 30});
    let r = app.post("/v1/prescriptions", &app.doctor(), &other).await;
    r.assert_problem(503, "SERVICE_SUSPENDED");
    assert!(r.header("retry-after").is_some());
    assert!(
        r.body["detail"].as_str().unwrap().contains("紙の処方箋"),
        "{}",
        r.text
    );
    let count: i64 = app.sql_one("SELECT count(*) FROM prescriptions").await;
    assert_eq!(count, 1, "nothing registered");
    let r = app
        .receive(
            &pharmacist,
            before["exchange_number"].as_str().unwrap(),
            &insured(),
        )
        .await;
    assert_eq!(r.status, 200, "receiving continues: {}", r.text);

    // Ended: registration works again, no restart.
    let r = app
        .post(&format!("/v1/admin/outages/{oid}/end"), &admin, &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.post("/v1/prescriptions", &app.doctor(), &other).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let number = r.body["exchange_number"].as_str().unwrap().to_string();

    // `all`: receiving stops too, but the paper/FAX fallback request stays open.
    let o = app.post("/v1/admin/outages", &admin, &declare("all")).await;
    let oid = o.body["id"]
        .as_str()
        .or(o.body["outage_id"].as_str())
        .unwrap()
        .to_string();
    let other_insured =
        json!({"insurer_number": "01130012", "symbol": "1234", "number": "5678", "branch": "01"});
    app.receive(&pharmacist, &number, &other_insured)
        .await
        .assert_problem(503, "SERVICE_SUSPENDED");
    app.post("/v1/prescriptions", &app.doctor(), &prescription())
        .await
        .assert_problem(503, "SERVICE_SUSPENDED");
    let r = request(
        &app,
        &pharmacist,
        &json!({"exchange_number": number, "insured": other_insured,
                "reason": "サービス停止", "preferred": "fax"}),
    )
    .await;
    assert_eq!(
        r.status, 201,
        "the fallback works during the outage: {}",
        r.text
    );
    app.post(&format!("/v1/admin/outages/{oid}/end"), &admin, &json!({}))
        .await;
    let r = app.receive(&pharmacist, &number, &other_insured).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn every_step_out_of_order_is_refused_naming_the_current_state() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |_| {}).await;
    let (doctor, pharmacist) = (app.doctor(), app.pharmacist());
    let day = today().to_string();
    // (name, path, clinic side, body); the domain allows exactly the documented edges.
    let steps: [(&str, &str, bool, Value); 6] = [
        (
            "resolve paper",
            "resolve",
            true,
            json!({"mode": "paper_reissue"}),
        ),
        ("resolve fax", "resolve", true, json!({"mode": "fax"})),
        ("withdraw", "withdraw", false, json!({})),
        (
            "dispensed",
            "dispensed",
            false,
            json!({"dispensed_on": day}),
        ),
        (
            "original-mailed",
            "original-mailed",
            true,
            json!({"mailed_on": day}),
        ),
        (
            "original-received",
            "original-received",
            false,
            json!({"received_on": day, "matches": true}),
        ),
    ];
    // How to reach each state from a new request: the steps (by index) to take.
    let paths: [(&str, &[usize]); 7] = [
        ("requested", &[]),
        ("withdrawn", &[2]),
        ("paper_reissued", &[0]),
        ("faxed", &[1]),
        ("dispensed_from_fax", &[1, 3]),
        ("original_mailed", &[1, 3, 4]),
        ("closed", &[1, 3, 4, 5]),
    ];
    let allowed: &[(&str, usize)] = &[
        ("requested", 0),
        ("requested", 1),
        ("requested", 2),
        ("faxed", 3),
        ("faxed", 4),
        ("dispensed_from_fax", 4),
        ("original_mailed", 5),
    ];
    let mut refused = 0;
    for (state, path) in paths {
        let reg = app.register_overriding(&doctor, &prescription()).await;
        let r = request(
            &app,
            &pharmacist,
            &by_number(reg["exchange_number"].as_str().unwrap(), "fax"),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["fallback_id"].as_str().unwrap().to_string();
        for &i in path {
            let (_, p, clinic, body) = &steps[i];
            let token = if *clinic { &doctor } else { &pharmacist };
            let r = step(&app, &id, p, token, body).await;
            assert_eq!(r.status, 200, "{state} via {p}: {}", r.text);
        }
        for (i, (name, p, clinic, body)) in steps.iter().enumerate() {
            if allowed.contains(&(state, i)) {
                continue;
            }
            let token = if *clinic { &doctor } else { &pharmacist };
            let r = step(&app, &id, p, token, body).await;
            assert_eq!(r.status, 409, "{name} from {state}: {}", r.text);
            assert_eq!(r.body["code"], "FALLBACK_STATE_CONFLICT");
            assert_eq!(r.body["current_status"], state, "{name} from {state}");
            refused += 1;
        }
        let now = app.get(&format!("/v1/fallbacks/{id}"), &pharmacist).await;
        assert_eq!(now.body["status"], state, "refusals changed nothing");
    }
    assert_eq!(refused, 7 * 6 - allowed.len());
}

#[tokio::test]
async fn a_request_made_offline_is_uploaded_once_and_tells_the_clinic_it_was_mailed_already() {
    let smtp = TestSmtp::start().await;
    let app = app_with(&smtp, |_| {}).await;
    let pharmacist = app.pharmacist();
    let reg = app.register(&prescription()).await;
    let number = reg["exchange_number"].as_str().unwrap();
    // Whole seconds: PostgreSQL keeps microseconds.
    let asked = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 90 * 60).unwrap();
    let mailed = asked + jiff::SignedDuration::from_secs(20);
    let offline = |local_id: &str, requested: jiff::Timestamp, mailed: jiff::Timestamp| {
        let mut b = by_number(number, "fax");
        b["offline"] = json!({"local_id": local_id, "requested_at": requested.to_string(),
                              "clinic_mailed_at": mailed.to_string()});
        b
    };

    // Bad offline members name the field and change nothing.
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let r = request(&app, &pharmacist, &offline("", future, asked)).await;
    r.assert_problem(422, "VALIDATION_FAILED");
    let fields: Vec<String> = r.field_errors().into_iter().map(|(f, _)| f).collect();
    assert!(
        fields.contains(&"offline.local_id".into())
            && fields.contains(&"offline.requested_at".into())
            && fields.contains(&"offline.clinic_mailed_at".into()),
        "{fields:?}"
    );
    let mut bad = by_number(number, "fax");
    bad["offline"] = json!({"local_id": "x", "requested_at": "yesterday"});
    request(&app, &pharmacist, &bad)
        .await
        .assert_problem(422, "VALIDATION_FAILED");
    let n: i64 = app.sql_one("SELECT count(*) FROM fallbacks").await;
    assert_eq!(n, 0);

    let r = request(&app, &pharmacist, &offline("q-1", asked, mailed)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["fallback_id"].as_str().unwrap().to_string();
    assert_eq!(r.body["offline"]["local_id"], "q-1");
    assert_eq!(r.body["offline"]["requested_at"], asked.to_string());
    assert_eq!(r.body["offline"]["clinic_mailed_at"], mailed.to_string());

    // The same queued record uploaded again (a new key, as after a lost answer) opens nothing new.
    let r = request(&app, &pharmacist, &offline("q-1", asked, mailed)).await;
    r.assert_problem(409, "FALLBACK_EXISTS");
    assert_eq!(r.body["fallback_id"], id.as_str());
    let n: i64 = app.sql_one("SELECT count(*) FROM fallbacks").await;
    assert_eq!(n, 1);

    // The clinic learns that this is the record of a request it was mailed directly.
    let mails = deliver(&app, &smtp, 0).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].subject.contains("障害中の依頼の登録"),
        "{}",
        mails[0].subject
    );
    assert!(
        mails[0].body.contains("直接メールでお知らせ済み") && mails[0].body.contains("q-1"),
        "{}",
        mails[0].body
    );
}
