//! The mail outbox and its delivery worker, against a real SMTP server on loopback (smtp.rs).

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use relay::auth::KeySet;
use relay::config::{DatabaseUrl, Settings};
use relay::db::outbox::{self, Attachment, Mail};
use relay::jobs::Jobs;
use relay::mail::{Pass, Worker};
use relay::startup::Application;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::TestApp;
use crate::smtp::TestSmtp;

/// Settings for a worker driven by the test itself (the database comes from the app's pool).
fn worker_settings(smtp: Option<&TestSmtp>) -> Settings {
    let mut s = Settings::with_database(DatabaseUrl::new("postgres://unused@127.0.0.1/unused"));
    s.smtp_url = smtp.map(TestSmtp::smtp_url);
    s.mail.backoff_base_ms = 60_000;
    s.mail.smtp_timeout_ms = 10_000;
    s
}

/// A relay whose periodic jobs are off: the tests run the worker themselves.
async fn quiet_app() -> TestApp {
    TestApp::spawn_with(|s| s.jobs.enabled = false).await
}

fn worker(app: &TestApp, settings: &Settings) -> Worker {
    Worker::new(app.pool.clone(), settings).expect("worker")
}

fn mail(kind: &'static str, subject: &str) -> Mail {
    Mail {
        to: vec!["clinic@test.invalid".into()],
        subject: subject.into(),
        body: format!("{subject}\n本文です。"),
        attachments: Vec::new(),
        kind,
        dedupe_key: None,
    }
}

/// Enqueues in a transaction of its own and commits.
async fn enqueue_committed(app: &TestApp, m: &Mail) -> Option<Uuid> {
    let mut client = app.pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    let id = outbox::enqueue(&tx, m).await.expect("enqueue");
    tx.commit().await.expect("commit");
    id
}

async fn row(app: &TestApp, id: Uuid) -> tokio_postgres::Row {
    let client = app.pool.get().await.expect("connection");
    client
        .query_one(
            "SELECT status, attempts, last_error, next_attempt_at > now(), sent_at IS NOT NULL,
                    message_id, next_attempt_at - now() <= interval '60 seconds'
               FROM outbox WHERE id = $1",
            &[&id],
        )
        .await
        .expect("outbox row")
}

async fn status(app: &TestApp, id: Uuid) -> String {
    row(app, id).await.get(0)
}

/// A pool of its own on the app's database, as another relay would have.
async fn own_pool(app: &TestApp) -> relay::db::Pool {
    let db: String = app.sql_one("SELECT current_database()::text").await;
    let admin = std::env::var("RELAY_TEST_DATABASE_URL").expect("scripts/test sets it");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    relay::db::pool(&Settings::with_database(DatabaseUrl::new(format!(
        "{base}/{db}"
    ))))
    .expect("pool")
}

/// Runs passes until one finds nothing to do (for workers racing each other, or a lock that is
/// still being released).
async fn drain(w: &Worker) -> Pass {
    let mut total = Pass::default();
    for _ in 0..200 {
        let pass = w.run_once().await.expect("pass");
        if pass.attempted() == 0 {
            return total;
        }
        total.sent += pass.sent;
        total.retrying += pass.retrying;
        total.dead += pass.dead;
    }
    panic!("the worker never ran out of work");
}

#[tokio::test]
async fn outbox_committed_mail_is_delivered_decoded_and_a_rolled_back_one_is_not() {
    let smtp = TestSmtp::start().await;
    let app = quiet_app().await;
    let pdf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let subject = "【電子処方箋】代替手段の依頼 髙橋 𠮷田クリニック";
    let body =
        "薬局「テスト薬局」から代替手段の依頼がありました。\n引換番号: 012345\n理由: システム障害";
    let m = Mail {
        to: vec!["clinic@test.invalid".into(), "fax@fax.test.invalid".into()],
        subject: subject.into(),
        body: body.into(),
        attachments: vec![Attachment {
            filename: "処方箋_012345.pdf".into(),
            content_type: "application/pdf".into(),
            bytes: pdf.clone(),
        }],
        kind: "fallback_requested",
        dedupe_key: None,
    };
    let id = enqueue_committed(&app, &m).await.expect("an id");

    // The same kind of mail in a transaction that rolls back: it never existed.
    {
        let mut client = app.pool.get().await.expect("connection");
        let tx = client.transaction().await.expect("begin");
        let gone = mail("rolled_back", "送られないはずの通知");
        assert!(
            outbox::enqueue(&tx, &gone)
                .await
                .expect("enqueue")
                .is_some()
        );
        tx.rollback().await.expect("rollback");
    }

    let w = worker(&app, &worker_settings(Some(&smtp)));
    let pass = w.run_once().await.expect("pass");
    assert_eq!(
        pass,
        Pass {
            sent: 1,
            retrying: 0,
            dead: 0
        }
    );
    assert_eq!(w.run_once().await.expect("pass").attempted(), 0);

    let received = smtp.received();
    assert_eq!(received.len(), 1, "only the committed mail is sent");
    let r = &received[0];
    assert_eq!(
        r.envelope_to,
        vec!["clinic@test.invalid", "fax@fax.test.invalid"]
    );
    assert_eq!(r.envelope_from, "relay@localhost");
    assert!(
        r.raw.is_ascii(),
        "headers are RFC 2047-encoded and the body transfer-encoded"
    );
    let p = r.parse();
    assert_eq!(p.subject, subject);
    // Lines end in CR LF on the wire (RFC 5322); the text is otherwise as written.
    assert_eq!(p.body.replace("\r\n", "\n").trim_end(), body);
    assert_eq!(p.message_id, format!("{id}@localhost"));
    assert_eq!(p.from_name.as_deref(), Some("電子処方箋リレー"));
    assert_eq!(p.from_address, "relay@localhost");
    assert_eq!(p.to, vec!["clinic@test.invalid", "fax@fax.test.invalid"]);
    assert_eq!(p.auto_submitted.as_deref(), Some("auto-generated"));
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.attachments[0].filename, "処方箋_012345.pdf");
    assert_eq!(p.attachments[0].content_type, "application/pdf");
    assert!(p.attachments[0].bytes == pdf, "attachment bytes intact");

    let r = row(&app, id).await;
    assert_eq!(r.get::<_, String>(0), "sent");
    assert_eq!(r.get::<_, i32>(1), 1);
    assert!(r.get::<_, bool>(4), "sent_at set");
    assert_eq!(r.get::<_, String>(5), format!("<{id}@localhost>"));
    let rows: i64 = app.sql_one("SELECT count(*) FROM outbox").await;
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn outbox_smtp_down_keeps_the_mail_pending_and_delivers_it_exactly_once_when_back() {
    let smtp = TestSmtp::start().await;
    smtp.stop().await;
    let app = quiet_app().await;
    let id = enqueue_committed(&app, &mail("fallback_requested", "代替手段の依頼"))
        .await
        .expect("id");
    let w = worker(&app, &worker_settings(Some(&smtp)));

    let pass = w.run_once().await.expect("pass");
    assert_eq!(
        pass,
        Pass {
            sent: 0,
            retrying: 1,
            dead: 0
        }
    );
    let r = row(&app, id).await;
    assert_eq!(r.get::<_, String>(0), "pending");
    assert_eq!(r.get::<_, i32>(1), 1);
    let error: String = r.get(2);
    assert!(!error.is_empty(), "last_error recorded");
    assert!(r.get::<_, bool>(3), "next attempt in the future");
    assert!(r.get::<_, bool>(6), "within backoff_base_ms");
    assert_eq!(
        r.get::<_, String>(5),
        format!("<{id}@localhost>"),
        "the Message-ID is fixed by the first attempt"
    );
    // Not due yet: nothing happens.
    assert_eq!(w.run_once().await.expect("pass").attempted(), 0);

    smtp.restart().await;
    app.sql("UPDATE outbox SET next_attempt_at = now()").await; // the backoff has passed
    let pass = w.run_once().await.expect("pass");
    assert_eq!(pass.sent, 1);
    assert_eq!(w.run_once().await.expect("pass").attempted(), 0);
    assert_eq!(smtp.count(), 1, "delivered exactly once");
    assert_eq!(smtp.received()[0].message_id(), format!("<{id}@localhost>"));
    let r = row(&app, id).await;
    assert_eq!(r.get::<_, String>(0), "sent");
    assert_eq!(r.get::<_, i32>(1), 2);
}

#[tokio::test]
async fn outbox_dedupe_key_gives_one_row_and_one_mail() {
    let smtp = TestSmtp::start().await;
    let app = quiet_app().await;
    let mut m = mail("reminder_held", "調剤中のままの処方箋があります");
    m.dedupe_key = Some("reminder_held:0190a000-0000-7000-8000-000000000001".into());
    assert!(enqueue_committed(&app, &m).await.is_some());
    assert_eq!(
        enqueue_committed(&app, &m).await,
        None,
        "second enqueue does nothing"
    );

    // Two transactions racing for one key: the second waits for the first and, once it has
    // committed, writes nothing.
    let mut other = m.clone();
    other.dedupe_key = Some("reminder_original:race".into());
    let mut c1 = app.pool.get().await.expect("connection");
    let t1 = c1.transaction().await.expect("begin");
    assert!(outbox::enqueue(&t1, &other).await.expect("first").is_some());
    let pool = app.pool.clone();
    let second = {
        let other = other.clone();
        tokio::spawn(async move {
            let mut c2 = pool.get().await.expect("connection");
            let t2 = c2.transaction().await.expect("begin");
            let id = outbox::enqueue(&t2, &other).await.expect("second");
            t2.commit().await.expect("commit");
            id
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second enqueue waits for the first transaction"
    );
    t1.commit().await.expect("commit");
    assert_eq!(second.await.expect("task"), None);

    let rows: i64 = app.sql_one("SELECT count(*) FROM outbox").await;
    assert_eq!(rows, 2);
    let w = worker(&app, &worker_settings(Some(&smtp)));
    assert_eq!(drain(&w).await.sent, 2);
    assert_eq!(smtp.count(), 2, "one mail per key");
}

async fn get_outbox(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/admin/outbox{query}"), &app.admin())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["messages"].as_array().expect("messages").clone()
}

async fn wait_for_status(app: &TestApp, id: Uuid, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = status(app, id).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message stayed {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn outbox_dead_letters_are_listed_for_operators_and_a_retry_delivers_them() {
    let smtp = TestSmtp::start().await;
    smtp.stop().await;
    // The server's own worker, polling fast, with a short backoff.
    let url = smtp.smtp_url();
    let app = TestApp::spawn_with(move |s| {
        s.smtp_url = Some(url);
        s.mail.poll_interval_ms = 50;
        s.mail.backoff_base_ms = 10;
        s.mail.backoff_max_ms = 40;
        s.mail.max_attempts = 3;
        s.jobs.reminder_interval_seconds = 3600;
    })
    .await;
    let id = enqueue_committed(&app, &mail("cancellation_applied", "取消が反映されました"))
        .await
        .expect("id");
    let sent_id = enqueue_committed(&app, &mail("fallback_fax", "FAX送信"))
        .await
        .expect("id");
    wait_for_status(&app, id, "dead").await;
    wait_for_status(&app, sent_id, "dead").await;
    assert_eq!(row(&app, id).await.get::<_, i32>(1), 3, "max_attempts");

    let dead = get_outbox(&app, "?status=dead").await;
    let entry = dead
        .iter()
        .find(|e| e["id"] == id.to_string())
        .expect("listed as dead");
    assert_eq!(entry["kind"], "cancellation_applied");
    assert_eq!(
        entry["recipients"],
        serde_json::json!(["clinic@test.invalid"])
    );
    assert_eq!(entry["subject"], "取消が反映されました");
    assert_eq!(entry["status"], "dead");
    assert_eq!(entry["attempts"], 3);
    assert!(entry["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(entry["created_at"].is_string());
    assert!(entry["sent_at"].is_null());
    assert!(entry.get("body").is_none(), "no bodies for operators");
    assert!(get_outbox(&app, "?status=pending").await.is_empty());
    assert_eq!(get_outbox(&app, "").await.len(), 2);

    // Only admins; a bad status is a 422; unknown ids are 404s.
    let r = app.get("/v1/admin/outbox", &app.doctor()).await;
    r.assert_problem(403, "FORBIDDEN");
    let r = app.get("/v1/admin/outbox?status=lost", &app.admin()).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/admin/outbox/{}/retry", Uuid::now_v7()),
            &app.admin(),
            &Value::Null,
        )
        .await;
    r.assert_problem(404, "OUTBOX_MESSAGE_NOT_FOUND");
    let r = app
        .post(
            &format!("/v1/admin/outbox/{id}/retry"),
            &app.doctor(),
            &Value::Null,
        )
        .await;
    r.assert_problem(403, "FORBIDDEN");

    smtp.restart().await;
    let r = app
        .post(
            &format!("/v1/admin/outbox/{id}/retry"),
            &app.admin(),
            &Value::Null,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["attempts"], 0);
    let got = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].message_id(), format!("<{id}@localhost>"));
    wait_for_status(&app, id, "sent").await;
    let sent = get_outbox(&app, "?status=sent").await;
    assert_eq!(sent.len(), 1);
    assert!(sent[0]["sent_at"].is_string());
    // The other one stays dead until someone retries it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&app, sent_id).await, "dead");
    assert_eq!(smtp.count(), 1);

    let r = app
        .post(
            &format!("/v1/admin/outbox/{id}/retry"),
            &app.admin(),
            &Value::Null,
        )
        .await;
    r.assert_problem(409, "OUTBOX_MESSAGE_NOT_DEAD");
    assert_eq!(r.body["message_status"], "sent");
}

#[tokio::test]
async fn outbox_worker_killed_mid_delivery_loses_nothing() {
    let smtp = TestSmtp::start().await;
    let app = quiet_app().await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        let m = mail("reminder_original", &format!("原本未着のお知らせ {n}"));
        ids.push(enqueue_committed(&app, &m).await.expect("id"));
    }
    // The third message reaches the server, which then never answers: the worker is killed
    // while it waits, after the message was handed over but before the outcome was committed.
    smtp.stall_message(3);
    let mut settings = worker_settings(Some(&smtp));
    settings.mail.smtp_timeout_ms = 60_000;
    let doomed = worker(&app, &settings);
    let task = tokio::spawn(async move { doomed.run_once().await });
    smtp.wait_for(3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    assert!(task.await.expect_err("killed").is_cancelled());

    // Two were committed as sent; the rest are pending, the interrupted one untouched.
    let sent: i64 = app
        .sql_one("SELECT count(*) FROM outbox WHERE status = 'sent'")
        .await;
    assert_eq!(sent, 2);

    let w = worker(&app, &worker_settings(Some(&smtp)));
    assert_eq!(drain(&w).await.sent, 3);
    let unsent: i64 = app
        .sql_one("SELECT count(*) FROM outbox WHERE status <> 'sent'")
        .await;
    assert_eq!(unsent, 0, "every mail delivered");

    let mut by_id: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for r in smtp.received() {
        by_id.entry(r.message_id()).or_default().push(r.raw.clone());
    }
    let expected: std::collections::HashSet<String> =
        ids.iter().map(|id| format!("<{id}@localhost>")).collect();
    assert_eq!(
        by_id
            .keys()
            .cloned()
            .collect::<std::collections::HashSet<_>>(),
        expected,
        "every message arrived, none under another Message-ID"
    );
    let twice: Vec<_> = by_id.iter().filter(|(_, v)| v.len() > 1).collect();
    assert_eq!(twice.len(), 1, "only the interrupted delivery is repeated");
    let copies = twice[0].1;
    assert_eq!(copies.len(), 2);
    assert_eq!(
        copies[0], copies[1],
        "the repeat is the same message, byte for byte"
    );
    assert_eq!(*twice[0].0, format!("<{}@localhost>", ids[2]));
}

#[tokio::test]
async fn outbox_two_workers_deliver_each_message_once() {
    let smtp = TestSmtp::start().await;
    smtp.set_delay(Duration::from_millis(15));
    let app = quiet_app().await;
    let mut expected = std::collections::HashSet::new();
    for n in 0..30 {
        let id = enqueue_committed(&app, &mail("fallback_requested", &format!("依頼 {n}")))
            .await
            .expect("id");
        expected.insert(format!("<{id}@localhost>"));
    }
    let mut settings = worker_settings(Some(&smtp));
    settings.mail.batch_size = 4;
    // Two relays: separate pools, so separate connections and transactions.
    let a = worker(&app, &settings);
    let b = Worker::new(own_pool(&app).await, &settings).expect("worker");
    let (pa, pb) = tokio::join!(
        tokio::spawn(async move { drain(&a).await }),
        tokio::spawn(async move { drain(&b).await })
    );
    let (pa, pb) = (pa.expect("worker a"), pb.expect("worker b"));
    assert_eq!(pa.sent + pb.sent, 30);
    assert!(
        pa.sent > 0 && pb.sent > 0,
        "both workers took part: {pa:?} {pb:?}"
    );
    let received = smtp.received();
    assert_eq!(received.len(), 30, "each message delivered once");
    let ids: std::collections::HashSet<String> = received.iter().map(|r| r.message_id()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn outbox_worker_stops_between_deliveries_on_shutdown() {
    let smtp = TestSmtp::start().await;
    let app = quiet_app().await;
    enqueue_committed(&app, &mail("reminder_held", "通知")).await;
    let jobs = Jobs::new();
    let w = worker(&app, &worker_settings(Some(&smtp))).with_shutdown(jobs.shutdown_signal());
    jobs.shutdown(Duration::from_secs(1)).await;
    assert_eq!(w.run_once().await.expect("pass").attempted(), 0);
    assert_eq!(smtp.count(), 0);
}

#[tokio::test]
async fn outbox_smtp_credentials_come_from_the_url_and_a_refusal_is_dead_at_once() {
    let smtp = TestSmtp::start_with_auth("relay@clinic.example", "p@ss:word").await;
    let app = quiet_app().await;
    let id = enqueue_committed(&app, &mail("fallback_requested", "認証あり"))
        .await
        .expect("id");
    let mut settings = worker_settings(None);
    settings.smtp_url = Some(
        format!(
            "smtp://relay%40clinic.example:p%40ss%3Aword@127.0.0.1:{}",
            smtp.port()
        )
        .into(),
    );
    assert_eq!(
        worker(&app, &settings).run_once().await.expect("pass").sent,
        1
    );
    let got = smtp.received();
    assert_eq!(got[0].auth_user.as_deref(), Some("relay@clinic.example"));
    assert_eq!(status(&app, id).await, "sent");

    // A wrong password is a permanent refusal (535): dead after one attempt, not retried.
    let id = enqueue_committed(&app, &mail("fallback_requested", "認証失敗"))
        .await
        .expect("id");
    settings.smtp_url = Some(
        format!(
            "smtp://relay%40clinic.example:wrong@127.0.0.1:{}",
            smtp.port()
        )
        .into(),
    );
    let pass = worker(&app, &settings).run_once().await.expect("pass");
    assert_eq!(
        pass,
        Pass {
            sent: 0,
            retrying: 0,
            dead: 1
        }
    );
    let r = row(&app, id).await;
    assert_eq!(r.get::<_, String>(0), "dead");
    assert_eq!(r.get::<_, i32>(1), 1);
    assert!(
        r.get::<_, String>(2).contains("535"),
        "{}",
        r.get::<_, String>(2)
    );
    assert_eq!(smtp.count(), 1);
}

#[tokio::test]
async fn outbox_file_backend_writes_eml_files() {
    let app = quiet_app().await;
    let dir = std::env::temp_dir().join(format!("relay-mail-{}", Uuid::now_v7()));
    let mut m = mail("fallback_fax", "FAX送信のお知らせ");
    m.attachments.push(Attachment {
        filename: "paper.pdf".into(),
        content_type: "application/pdf".into(),
        bytes: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec(),
    });
    let id = enqueue_committed(&app, &m).await.expect("id");
    let mut settings = worker_settings(None);
    settings.mail.dir = dir.clone();
    let w = worker(&app, &settings);
    assert!(!w.transport().is_smtp());
    assert_eq!(w.run_once().await.expect("pass").sent, 1);

    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("mail dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(
        files,
        vec![format!("{id}.eml")],
        "one file, no temporary left"
    );
    let raw = std::fs::read(dir.join(format!("{id}.eml"))).expect("eml");
    let p = crate::smtp::Received {
        envelope_from: String::new(),
        envelope_to: Vec::new(),
        auth_user: None,
        raw,
    }
    .parse();
    assert_eq!(p.subject, "FAX送信のお知らせ");
    assert_eq!(p.message_id, format!("{id}@localhost"));
    assert_eq!(p.attachments[0].bytes, m.attachments[0].bytes);
    assert_eq!(status(&app, id).await, "sent");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn outbox_production_without_smtp_refuses_to_start() {
    let mut settings = Settings::with_database(DatabaseUrl::new("postgres://unused@127.0.0.1:1/x"));
    settings.env = "production".into();
    let keys = KeySet::generate_ephemeral(&settings.auth).expect("keys");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let err = Application::build_with(settings.clone(), listener, keys)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("RELAY_SMTP_URL"), "{text}");
    assert!(text.contains("RELAY_ENV=production"), "{text}");

    settings.env = "local".into();
    settings.mail.require_smtp = true;
    let err = Application::build(settings).await.err().expect("refused");
    assert!(format!("{err:#}").contains("require_smtp"));
}
