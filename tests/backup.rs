//! Backup and restore, as README "Backup and restore" tells an operator to do it: a relay builds
//! real state through its HTTP API (every lifecycle state, checks with consent and override, a
//! FAX fallback case, queued mail with a PDF attachment, a refused guess, an idempotent answer,
//! a declared outage); `pg_dump -Fc`, a new database, `pg_restore`; then every table, sequence,
//! trigger, constraint and index is compared, the audit tables still refuse changes, `relay
//! migrate` has nothing to do, and a relay on the restored database carries on.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use relay_e2e::*;
use serde_json::{Value, json};

const CLINIC: &str = "9918000010";
const CLINIC_2: &str = "9918000028";
const PHARMACY: &str = "9948000014";

fn today() -> String {
    relay::domain::time::today().to_string()
}

/// An insurance identity unknown to the registry, one per prescription so that the checks find
/// only the duplicates this test makes on purpose.
fn insured(number: &str) -> Value {
    json!({"insurer_number": "01130012", "symbol": "1234", "number": number, "branch": "01"})
}

fn prescription(number: &str, drug: (&str, &str)) -> Value {
    json!({
        "issue_type": "electronic",
        "patient": {"name": "保全 試験", "name_kana": "ホゼン シケン", "sex": "female", "birth_date": "1980-02-03"},
        "insurance": {"insurer_number": "01130012", "symbol": "1234", "number": number,
                      "relationship": "insured", "branch": "01", "copay_rate": 30},
        "issued_on": today(),
        "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回朝食後", "times_per_day": 1},
                 "drugs": [{"code_system": "yj", "code": drug.0, "name": drug.1, "dose": 1, "unit": "錠"}]}]
    })
}

const FAMOTIDINE: (&str, &str) = ("2325003F1024", "ガスター錠１０ｍｇ");
const ESTAZOLAM: (&str, &str) = ("1124001F1022", "ユーロジン１ｍｇ錠");

/// Rows of a query as text, for comparing two databases.
async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Every table of `public` with its row count and a digest of its rows in a stable order.
async fn table_digests(c: &tokio_postgres::Client) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for t in rows(
        c,
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .await
    {
        let name = t[0].clone().unwrap();
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
                       FROM public.{name} t"
                ),
                &[],
            )
            .await
            .expect("digest");
        out.insert(name, (row.get(0), row.get(1)));
    }
    out
}

/// The schema objects a restore must bring back, as comparable text.
const CATALOG: [(&str, &str); 5] = [
    (
        "sequences",
        "SELECT sequencename::text, last_value::text FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
    ),
    (
        "triggers",
        "SELECT tgrelid::regclass::text, tgname::text, tgenabled::text, pg_get_triggerdef(oid)
           FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
    ),
    (
        "constraints",
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    ),
    (
        "indexes",
        "SELECT tablename::text, indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    ),
    (
        "functions",
        "SELECT proname::text, md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
    ),
];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_restored_into_a_new_database_is_the_same_relay() {
    let relay = Relay::new("backup_source");
    relay.migrate_and_seed();
    let keys = relay.keys();
    let doctor = mint(&keys, CLINIC, "doctor", "doctor-1");
    let doctor_2 = mint(&keys, CLINIC_2, "doctor", "doctor-2");
    let pharmacist = mint(&keys, PHARMACY, "pharmacist", "pharmacist-1");
    let clerk = mint(&keys, PHARMACY, "pharmacy_clerk", "pharmacy-clerk-1");
    let admin = mint(&keys, CLINIC, "admin", "admin-1");
    // Mail goes to a port nothing listens on: the outbox keeps it, with the failed attempt.
    let smtp = format!("smtp://127.0.0.1:{}", free_port());
    let server = relay.serve_with(&[
        ("RELAY_SMTP_URL", smtp.as_str()),
        ("RELAY_MAIL__POLL_INTERVAL_MS", "200"),
    ]);
    let api = Api::new(&relay.base_url());

    let register = async |number: &str, drug: (&str, &str)| {
        let (status, body) = api
            .post("/v1/prescriptions", &doctor, &prescription(number, drug))
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["prescription_id"].as_str().unwrap().to_string(),
            body["exchange_number"].as_str().unwrap().to_string(),
        )
    };
    let receive = async |exchange: &str, number: &str| {
        api.post(
            "/v1/prescriptions/receive",
            &pharmacist,
            &json!({"exchange_number": exchange, "insured": insured(number)}),
        )
        .await
    };

    // Dispensed.
    let (dispensed, exchange) = register("7391846", FAMOTIDINE).await;
    assert_eq!(receive(&exchange, "7391846").await.0, 200);
    let (status, body) = api
        .post(&format!("/v1/prescriptions/{dispensed}/dispense"), &pharmacist, &json!({
            "dispensed_on": today(),
            "items": [{"code_system": "yj", "code": FAMOTIDINE.0, "name": FAMOTIDINE.1, "dose": 1, "unit": "錠", "days": 7}],
            "important_note": "胃部不快の訴えあり"
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    // Cancelled.
    let (cancelled, _) = register("7391847", ESTAZOLAM).await;
    let (status, body) = api
        .post(
            &format!("/v1/prescriptions/{cancelled}/cancel"),
            &doctor,
            &json!({"reason": "処方変更"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Open: received on the restored database.
    let (open, open_exchange) = register("7391848", ESTAZOLAM).await;
    // Held by the pharmacy.
    let (held, exchange) = register("7391849", ESTAZOLAM).await;
    assert_eq!(receive(&exchange, "7391849").await.0, 200);
    // The FAX fallback: two mails, one with the paper prescription as a PDF attachment.
    let (_, exchange) = register("7391850", ESTAZOLAM).await;
    let (status, case) = api
        .post(
            "/v1/fallbacks",
            &pharmacist,
            &json!({"exchange_number": exchange, "insured": insured("7391850"),
                    "reason": "薬局システム障害", "preferred": "fax"}),
        )
        .await;
    assert_eq!(status, 201, "{case}");
    let fallback = case["fallback_id"].as_str().unwrap().to_string();
    let (status, body) = api
        .post(
            &format!("/v1/fallbacks/{fallback}/resolve"),
            &doctor,
            &json!({"mode": "fax"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A check with hits (the dispensed ガスター), revealed by a verbal consent.
    let (status, check) = api
        .post("/v1/checks", &doctor_2, &json!({
            "patient": {"insured": insured("7391846"), "birth_date": "1980-02-03"},
            "context": "prescribing",
            "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日1回", "times_per_day": 1},
                     "drugs": [{"code_system": "yj", "code": FAMOTIDINE.0, "name": FAMOTIDINE.1, "dose": 1, "unit": "錠"}]}]
        }))
        .await;
    assert_eq!(status, 201, "{check}");
    assert_eq!(check["outcome"], "hits", "{check}");
    let check_id = check["check_id"].as_str().unwrap();
    let (status, body) = api
        .post(
            &format!("/v1/checks/{check_id}/verbal-consent"),
            &doctor_2,
            &json!({"note": "口頭同意"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A duplicate registered with the doctor's override, under an Idempotency-Key.
    let body = prescription("7391846", FAMOTIDINE);
    let (status, refused) = api.post("/v1/prescriptions", &doctor, &body).await;
    assert_eq!(status, 409, "{refused}");
    let check_id = refused["check"]["check_id"].as_str().unwrap().to_string();
    let (status, o) = api
        .post(
            &format!("/v1/checks/{check_id}/override"),
            &doctor,
            &json!({"reason": "前回分は中止済み"}),
        )
        .await;
    assert_eq!(status, 200, "{o}");
    let mut overridden = body.clone();
    overridden["check_id"] = json!(check_id);
    let key = "backup-test-registration-1";
    let (status, registered, _) = api
        .post_keyed("/v1/prescriptions", &doctor, Some(key), &overridden)
        .await;
    assert_eq!(status, 201, "{registered}");
    // A card qualification, a wrong guess counted by the throttle, an outage after the fact.
    let (status, q) = api
        .post(
            "/v1/qualifications/card",
            &clerk,
            &json!({"card_id": "CARD-0002", "auth": "face", "consent": {"medication": true}}),
        )
        .await;
    assert_eq!(status, 201, "{q}");
    let wrong = format!(
        "{:06}",
        (open_exchange.parse::<u32>().unwrap() + 1) % 1_000_000
    );
    assert_eq!(receive(&wrong, "7391848").await.0, 404);
    let (status, outage) = api
        .post(
            "/v1/admin/outages",
            &admin,
            &json!({"scope": "issuing", "starts_at": "2025-01-06T09:00:00+09:00",
                    "ends_at": "2025-01-06T10:00:00+09:00", "note": "事後登録の障害"}),
        )
        .await;
    assert_eq!(status, 201, "{outage}");
    // Reads of the prescriptions (some installations log them).
    for id in [&dispensed, &cancelled, &open, &held] {
        assert_eq!(
            api.get(&format!("/v1/prescriptions/{id}"), &doctor).await.0,
            200
        );
    }

    // The mail worker has tried (and failed) every message before the relay stops: the dump
    // then holds attempted rows with their error, as a live system's would.
    stop_after_mail_attempts(&relay, server).await;
    let source = relay.connect().await;

    // What the state holds: the dump must carry each of these.
    for (table, at_least) in [
        ("prescriptions", 6),
        ("dispensings", 1),
        ("prescription_events", 11),
        ("checks", 7),
        ("check_consents", 1),
        ("check_overrides", 1),
        ("fallbacks", 1),
        ("fallback_events", 2),
        ("outbox", 2),
        ("outbox_attachments", 1),
        ("qualifications", 1),
        ("receive_failures", 1),
        ("idempotency_keys", 1),
        ("outages", 1),
        ("outage_events", 1),
    ] {
        let n: i64 = source
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            n >= at_least,
            "{table}: {n} rows, expected at least {at_least}"
        );
    }

    // The procedure of README "Backup and restore".
    let dump = relay.work.join("relay.dump");
    run(Command::new("pg_dump")
        .args(["--format=custom", "--file"])
        .arg(&dump)
        .arg(&relay.database_url));
    let restored_url = fresh_database("backup_restored");
    run(Command::new("pg_restore")
        .args(["--exit-on-error", "--single-transaction", "--dbname"])
        .arg(&restored_url)
        .arg(&dump));
    let dump_size = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);

    // Every table, row for row; sequences, triggers, constraints, indexes and functions.
    let restored = connect(&restored_url).await;
    let (before, after) = (table_digests(&source).await, table_digests(&restored).await);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the same tables"
    );
    for (table, digest) in &before {
        assert_eq!(
            Some(digest),
            after.get(table),
            "{table}: rows differ after the restore"
        );
    }
    for (what, sql) in CATALOG {
        let (a, b) = (rows(&source, sql).await, rows(&restored, sql).await);
        assert!(!a.is_empty(), "no {what} in the source?");
        assert_eq!(a, b, "{what} differ after the restore");
    }
    let total: i64 = before.values().map(|(n, _)| n).sum();
    println!(
        "restored {} tables ({total} rows) from a {dump_size}-byte dump: identical",
        before.len()
    );

    // The audit tables refuse changes on the restored database too: every operation a
    // `refuse_change` trigger covers (row triggers fire on the restored rows; TRUNCATE's
    // statement trigger even on an empty table).
    let guarded = rows(
        &restored,
        "SELECT t.tgrelid::regclass::text,
                bool_or(t.tgtype & 16 <> 0)::text, bool_or(t.tgtype & 8 <> 0)::text,
                bool_or(t.tgtype & 32 <> 0)::text
           FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
          WHERE p.proname = 'refuse_change' GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert!(guarded.len() >= 7, "{guarded:?}");
    for t in &guarded {
        let table = t[0].as_deref().unwrap();
        let on = |i: usize| t[i].as_deref() == Some("true");
        let column: String = restored
            .query_one(
                // An identity column cannot be assigned at all: that error would hide the trigger's.
                "SELECT column_name::text FROM information_schema.columns
                  WHERE table_schema = 'public' AND table_name = $1 AND is_identity = 'NO'
                  ORDER BY ordinal_position LIMIT 1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        let count: i64 = restored
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        let mut statements = Vec::new();
        if on(3) {
            statements.push(format!("TRUNCATE {table} CASCADE"));
        }
        if count > 0 && on(1) {
            statements.push(format!("UPDATE {table} SET {column} = {column}"));
        }
        if count > 0 && on(2) {
            statements.push(format!("DELETE FROM {table}"));
        }
        for sql in &statements {
            let err = restored
                .batch_execute(sql)
                .await
                .expect_err(&format!("{sql} must be refused on the restored database"));
            let message = err.as_db_error().map(|e| e.message().to_string());
            assert!(
                message
                    .as_deref()
                    .is_some_and(|m| m.contains("append-only")),
                "{sql}: {message:?}"
            );
        }
        println!("{table}: {count} rows; refused after the restore: {statements:?}");
    }

    // The migration history came along: nothing to apply.
    let mut on_restored = relay.replica("backup_restored");
    on_restored.database_url = restored_url.clone();
    let out = on_restored.run(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "database is up to date");

    // A relay on the restored database serves what was there and carries on.
    let mut server = on_restored.serve_with(&[
        ("RELAY_SMTP_URL", smtp.as_str()),
        ("RELAY_JOBS__ENABLED", "false"),
    ]);
    let api = Api::new(&on_restored.base_url());
    let max_event: i64 = restored
        .query_one("SELECT max(id) FROM prescription_events", &[])
        .await
        .unwrap()
        .get(0);
    for (id, status) in [
        (&dispensed, "dispensed"),
        (&cancelled, "cancelled"),
        (&open, "registered"),
        (&held, "dispensing"),
    ] {
        let (code, view) = api.get(&format!("/v1/prescriptions/{id}"), &doctor).await;
        assert_eq!(code, 200, "{view}");
        assert_eq!(view["status"], status, "{view}");
    }
    let (status, got) = api
        .post(
            "/v1/prescriptions/receive",
            &pharmacist,
            &json!({"exchange_number": open_exchange, "insured": insured("7391848")}),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    let (_, events) = api
        .get(&format!("/v1/prescriptions/{open}/events"), &doctor)
        .await;
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["registered", "received"]);
    let new_event: i64 = restored
        .query_one(
            "SELECT max(id) FROM prescription_events WHERE prescription_id::text = $1",
            &[&open],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        new_event > max_event,
        "the event log's identity continues past the restored ids: {new_event} ≤ {max_event}"
    );
    // The stored answer of an Idempotency-Key is replayed, the queued mail is still queued, a new
    // registration gets a number, a fallback step continues the case.
    let (status, replay, headers) = api
        .post_keyed("/v1/prescriptions", &doctor, Some(key), &overridden)
        .await;
    assert_eq!(status, 201);
    assert_eq!(replay, registered);
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let (status, queued) = api.get("/v1/admin/outbox?status=pending", &admin).await;
    assert_eq!(status, 200, "{queued}");
    assert!(
        queued["messages"].as_array().unwrap().len() >= 2,
        "{queued}"
    );
    register_on(&api, &doctor).await;
    let (status, body) = api
        .post(
            &format!("/v1/fallbacks/{fallback}/dispensed"),
            &pharmacist,
            &json!({"dispensed_on": today()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "dispensed_from_fax");
    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("relay exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

async fn register_on(api: &Api, doctor: &str) {
    let (status, body) = api
        .post(
            "/v1/prescriptions",
            doctor,
            &prescription("7391851", ESTAZOLAM),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
