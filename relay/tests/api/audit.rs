//! The audit tables are append-only, and it is the database that says no (issue 10): for every
//! table the migrations guard with `refuse_change()` (and `outages`, which may only be ended
//! once), UPDATE, DELETE and TRUNCATE fail — also for the cluster's superuser, which the tests
//! connect as — with an error that names the table; and no code path of the relay, hence no
//! API call, writes anything but INSERT to them.
//!
//! One table-driven test instead of a check per feature: `lifecycle.rs`, `outages.rs`,
//! `eligibility.rs`, `checks.rs` and `fallbacks.rs` each try one of these tables in passing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::ToSpan;
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::helpers::*;

/// One append-only table: a column an UPDATE can name, and the word its refusals must contain.
struct Audited {
    table: &'static str,
    column: &'static str,
    /// `outages` answers in its own words ("an outage can only be ended, and only once").
    named_as: &'static str,
}

const AUDITED: &[Audited] = &[
    Audited {
        table: "prescription_events",
        column: "action",
        named_as: "prescription_events",
    },
    Audited {
        table: "qualifications",
        column: "outcome",
        named_as: "qualifications",
    },
    Audited {
        table: "checks",
        column: "outcome",
        named_as: "checks",
    },
    Audited {
        table: "check_consents",
        column: "note",
        named_as: "check_consents",
    },
    Audited {
        table: "check_overrides",
        column: "reason",
        named_as: "check_overrides",
    },
    Audited {
        table: "outages",
        column: "note",
        named_as: "outage",
    },
    Audited {
        table: "outage_events",
        column: "actor",
        named_as: "outage_events",
    },
    Audited {
        table: "fallback_events",
        column: "action",
        named_as: "fallback_events",
    },
    Audited {
        table: "access_log",
        column: "action",
        named_as: "access_log",
    },
];

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Each table a migration guards with a trigger, with what the triggers refuse:
/// (rows: UPDATE and DELETE, truncate).
fn guarded_in_migrations() -> BTreeMap<String, (bool, bool)> {
    let mut guarded: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for entry in std::fs::read_dir(repo("sql")).expect("sql/") {
        let sql = std::fs::read_to_string(entry.expect("entry").path()).expect("migration");
        for statement in sql.split(';') {
            let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            let Some(trigger) = statement.find("CREATE TRIGGER").map(|at| &statement[at..]) else {
                continue;
            };
            if !trigger.contains("refuse_change()") && !trigger.contains("outages_end_only()") {
                continue;
            }
            let table = trigger
                .split(" ON ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("a table after ON");
            let entry = guarded.entry(table.to_string()).or_default();
            if trigger.contains("UPDATE OR DELETE") {
                entry.0 = true;
            }
            if trigger.contains("TRUNCATE") {
                entry.1 = true;
            }
        }
    }
    guarded
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Where the relay's source changes `table` other than by a plain INSERT: (file, statement
/// start). All SQL lives in `src/db/` and `sql/`, so this is every way an API call could.
fn changes_in_source(table: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&repo("relay/src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("source");
        // ASCII only: byte offsets in `folded` stay valid in `source`.
        let folded = source.to_ascii_uppercase();
        let name = table.to_ascii_uppercase();
        for verb in [
            "UPDATE ",
            "DELETE FROM ",
            "TRUNCATE ",
            "TRUNCATE TABLE ",
            "INSERT INTO ",
        ] {
            let needle = format!("{verb}{name}");
            for (at, _) in folded.match_indices(&needle) {
                let after = folded[at + needle.len()..].chars().next().unwrap_or(' ');
                if after.is_alphanumeric() || after == '_' {
                    continue; // another table with this prefix
                }
                // The string literal the statement is in.
                let end = folded[at..].find('"').map_or(folded.len(), |e| at + e);
                let statement = &source[at..end];
                let upsert = verb == "INSERT INTO " && folded[at..end].contains("DO UPDATE");
                if verb != "INSERT INTO " || upsert {
                    let short: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
                    found.push((
                        file.strip_prefix(repo(""))
                            .unwrap_or(&file)
                            .display()
                            .to_string(),
                        short.chars().take(120).collect(),
                    ));
                }
            }
        }
    }
    found
}

/// Rows of `table` and a digest of their content.
async fn snapshot(client: &tokio_postgres::Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
                   FROM {table} t"
            ),
            &[],
        )
        .await
        .expect("snapshot");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn append_only_tables_refuse_every_change_even_to_the_superuser() {
    // The table above is exactly what the migrations guard, each against rows and TRUNCATE.
    let guarded = guarded_in_migrations();
    let listed: Vec<&str> = AUDITED.iter().map(|a| a.table).collect();
    assert_eq!(
        guarded.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut l = listed.clone();
            l.sort();
            l
        },
        "a table guarded by a trigger in sql/ is missing here, or a listed one lost its triggers"
    );
    for (table, (rows, truncate)) in &guarded {
        assert!(
            *rows && *truncate,
            "{table}: guarded against rows {rows}, TRUNCATE {truncate}: both are needed"
        );
    }

    let app = TestApp::spawn_with(|s| s.jobs.enabled = false).await;
    // At least one row in each table, written by the API the way it always is: row triggers
    // only fire for rows that exist.
    let number = "71000001";
    let reg = app
        .post(
            "/v1/prescriptions",
            &app.doctor(),
            &prescription_for(number),
        )
        .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    let id = reg.body["prescription_id"].as_str().unwrap().to_string();
    let exchange = reg.body["exchange_number"].as_str().unwrap().to_string();
    let r = app
        .receive(&app.pharmacist(), &exchange, &insured_for(number))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .post(
            "/v1/qualifications/card",
            &app.pharmacist(),
            &json!({"card_id": "CARD-0001", "auth": "face", "consent": {"medication": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let check = app
        .post(
            "/v1/checks",
            &app.doctor(),
            &json!({"patient": {"insured": insured_for(number), "birth_date": "2011-01-01"},
                    "context": "prescribing", "rps": prescription()["rps"]}),
        )
        .await;
    assert_eq!(check.body["outcome"], "hits", "{}", check.text);
    let check_id = check.body["check_id"].as_str().unwrap();
    for (step, body) in [
        ("verbal-consent", json!({"note": "口頭で同意"})),
        ("override", json!({"reason": "重複を確認済み（試験）"})),
    ] {
        let r = app
            .post(
                &format!("/v1/checks/{check_id}/{step}"),
                &app.doctor(),
                &body,
            )
            .await;
        assert_eq!(r.status, 200, "{step}: {}", r.text);
    }
    let starts = jiff::Timestamp::now().checked_add(24.hours()).unwrap();
    let outage = app
        .post(
            "/v1/admin/outages",
            &app.admin(),
            &json!({"scope": "issuing", "starts_at": starts.to_string(), "note": "計画停止（試験）"}),
        )
        .await;
    assert_eq!(outage.status, 201, "{}", outage.text);
    let r = app
        .post(
            "/v1/fallbacks",
            &app.pharmacist(),
            &json!({"prescription_id": id, "reason": "薬局システム障害", "preferred": "fax"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Connected as the test cluster's superuser, not through the relay.
    let (client, connection) =
        tokio_postgres::connect(&app.database_url().await, tokio_postgres::NoTls)
            .await
            .expect("connect as the superuser");
    let task = tokio::spawn(connection);
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .expect("role")
        .get(0);
    assert!(superuser, "the tests connect as the cluster's superuser");

    let mut before = BTreeMap::new();
    for a in AUDITED {
        let s = snapshot(&client, a.table).await;
        assert!(s.0 > 0, "{}: no row to try to change", a.table);
        before.insert(a.table, s);
    }
    let mut tried = 0;
    for a in AUDITED {
        let (table, column) = (a.table, a.column);
        // Also with `session_replication_role = replica`, a superuser's way of loading data
        // without triggers: the audit triggers are ENABLE ALWAYS (sql/V12).
        for mode in [
            "RESET session_replication_role;",
            "SET session_replication_role = replica;",
        ] {
            for change in [
                // Even writing a value back unchanged is an UPDATE.
                format!("UPDATE {table} SET {column} = {column}"),
                format!("DELETE FROM {table}"),
                // CASCADE: a referencing table must not make it fail for another reason first.
                format!("TRUNCATE {table} CASCADE"),
            ] {
                let sql = format!("{mode} {change}");
                let err = client
                    .batch_execute(&sql)
                    .await
                    .expect_err(&format!("{sql} must be refused"));
                let db = err
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{sql}: not a database error: {err}"));
                assert_eq!(
                    db.code(),
                    &SqlState::INSUFFICIENT_PRIVILEGE,
                    "{sql}: {}",
                    db.message()
                );
                assert!(
                    db.message().contains(a.named_as),
                    "{sql}: the refusal names the table: {}",
                    db.message()
                );
                tried += 1;
            }
        }
    }
    for a in AUDITED {
        assert_eq!(
            snapshot(&client, a.table).await,
            before[a.table],
            "{}: its rows changed",
            a.table
        );
    }
    // The one change an outage allows is its end, once.
    let outage_id = outage.body["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/admin/outages/{outage_id}/end"),
            &app.admin(),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let err = client
        .batch_execute(&format!(
            "UPDATE outages SET ended_at = now() WHERE id = '{outage_id}'"
        ))
        .await
        .expect_err("a second end");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("only once")),
        "{err:?}"
    );
    before.insert("outages", snapshot(&client, "outages").await);
    let ended_events = snapshot(&client, "outage_events").await;
    assert_eq!(
        ended_events.0,
        before["outage_events"].0 + 1,
        "the end is audited"
    );
    before.insert("outage_events", ended_events);

    // The API has no method that changes a stored record: no PUT, PATCH or DELETE anywhere,
    // whatever record the path names.
    let ids = [
        id.as_str(),
        check_id,
        outage_id,
        &uuid::Uuid::now_v7().to_string(),
    ];
    let doc = app.get_anon("/openapi.json").await.body;
    let mut probes = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            assert!(
                method == "get" || method == "post",
                "{method} {path}: the API changes records only by POSTing new facts"
            );
        }
        for id in ids {
            let url = format!("{}{}", app.address, path.replace("{id}", id));
            for method in [
                reqwest::Method::PUT,
                reqwest::Method::PATCH,
                reqwest::Method::DELETE,
            ] {
                let r = app
                    .http
                    .request(method.clone(), &url)
                    .bearer_auth(app.admin())
                    .json(&json!({}))
                    .send()
                    .await
                    .expect("request sent");
                let status = r.status().as_u16();
                assert!(status == 404 || status == 405, "{method} {url}: {status}");
                probes += 1;
            }
        }
    }
    // …and none of its SQL does anything but INSERT into these tables; outages are ended in
    // place by one statement.
    for a in AUDITED {
        let found = changes_in_source(a.table);
        let allowed = |(file, statement): &(String, String)| {
            a.table == "outages"
                && file.ends_with("db/outages.rs")
                && statement.starts_with("UPDATE outages SET ended_at = now()")
        };
        let unexpected: Vec<_> = found.iter().filter(|f| !allowed(f)).collect();
        assert!(
            unexpected.is_empty(),
            "{}: the relay's SQL changes it: {unexpected:?}",
            a.table
        );
    }

    // The probes changed nothing either.
    for a in AUDITED {
        assert_eq!(
            snapshot(&client, a.table).await,
            before[a.table],
            "{}: its rows changed",
            a.table
        );
    }
    drop(client);
    let _ = task.await;
    println!(
        "{} append-only tables; {tried} refused statements as the superuser; {probes} \
         PUT/PATCH/DELETE probes answered 404/405",
        AUDITED.len()
    );
}
