//! Crash survival under registration load, across processes. Clinics register prescriptions
//! concurrently, each with a fresh `Idempotency-Key`, retrying a failed or timed-out request with
//! the SAME key until it is acknowledged. Meanwhile one of two relays behind haproxy is killed with
//! SIGKILL and restarted, or PostgreSQL itself is stopped (`pg_ctl stop -m immediate`) and started
//! again under a relay that is never restarted. Afterwards every acknowledged registration is in
//! the database exactly once, nothing was registered twice by a retry, and a replayed key answers
//! the same prescription. Figures are printed (`--no-capture`); `RELAY_TEST_LOAD_SECS` lengthens
//! the load (default 4 s).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_e2e::*;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Concurrent clinic clients.
const CLIENTS: usize = 8;
/// How long one key may go unacknowledged after the load ends before the test gives up on it.
const ACK_DEADLINE: Duration = Duration::from_secs(20);
/// Generous: only tells a slow recovery from none.
const RECOVERY: Duration = Duration::from_secs(30);

fn load_duration() -> Duration {
    let secs = std::env::var("RELAY_TEST_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

/// A prescription for a patient of its own (one per registration: no duplicate-medication hit
/// between the registrations of the load).
fn registration(client: usize, seq: usize) -> Value {
    json!({
        "issue_type": "electronic",
        "patient": {"name": "負荷 試験", "name_kana": "フカ シケン", "sex": "female", "birth_date": "1980-04-01"},
        "insurance": {"insurer_number": "01130012", "symbol": "9999", "number": format!("{}", 10_000_000 + client * 100_000 + seq),
                      "relationship": "insured", "branch": "01", "copay_rate": 30},
        "issued_on": relay::domain::time::today().to_string(),
        "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日3回毎食後", "times_per_day": 3},
                 "drugs": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 0.4, "unit": "g"}]}]
    })
}

/// An acknowledged registration: what the clinic was told.
#[derive(Debug, Clone)]
struct Ack {
    prescription_id: String,
    exchange_number: String,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct Tally {
    acked: BTreeMap<String, Ack>,
    /// Failed attempts by what went wrong (`HTTP 503 DATABASE_UNAVAILABLE`, `timeout`, …).
    failures: BTreeMap<String, u64>,
    /// Keys answered with something that must not be retried (the test fails on any).
    refused: Vec<String>,
    /// Keys still unacknowledged at the deadline (the test fails on any).
    abandoned: Vec<String>,
    failed_then_acked: u64,
    /// Acknowledgements that were replays of a commit whose first answer was lost.
    replayed: u64,
    first_failure: Option<Instant>,
}

struct Load {
    sent: AtomicU64,
    retried: AtomicU64,
    stop: AtomicBool,
    tally: Mutex<Tally>,
}

/// What one attempt came to.
enum Attempt {
    Acked(Ack, bool),
    Retry(String),
    Refused(String),
}

async fn attempt(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> Attempt {
    let r = match http
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Attempt::Retry("timeout".into()),
        Err(e) if e.is_connect() => return Attempt::Retry("connect error".into()),
        Err(_) => return Attempt::Retry("connection lost".into()),
    };
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    let answer: Value = match r.json().await {
        Ok(v) => v,
        Err(_) => return Attempt::Retry(format!("HTTP {status}, body cut")),
    };
    match status {
        201 => Attempt::Acked(
            Ack {
                prescription_id: answer["prescription_id"].as_str().unwrap_or("").into(),
                exchange_number: answer["exchange_number"].as_str().unwrap_or("").into(),
                body: body.clone(),
                at: Instant::now(),
            },
            replayed,
        ),
        // Worth the same request again: the balancer found no relay (502/503/504) or the
        // database was away (503). A 500 is retried too, but counted: it is a bug.
        500 | 502 | 503 | 504 => Attempt::Retry(format!(
            "HTTP {status} {}",
            answer["code"].as_str().unwrap_or("")
        )),
        _ => Attempt::Refused(format!("HTTP {status}: {answer}")),
    }
}

/// Runs `CLIENTS` clinic clients against `url` until `load.stop`, then lets each finish the key
/// in hand (bounded by [`ACK_DEADLINE`]).
fn start_load(load: &Arc<Load>, url: String, token: String) -> Vec<tokio::task::JoinHandle<()>> {
    let run = std::process::id();
    (0..CLIENTS)
        .map(|client| {
            let (load, url, token) = (load.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let http = http_client()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut seq = 0;
                while !load.stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("load-{run}-{client}-{seq}");
                    let body = registration(client, seq);
                    let mut deadline = None;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        load.sent.fetch_add(1, Ordering::Relaxed);
                        if tries > 1 {
                            load.retried.fetch_add(1, Ordering::Relaxed);
                        }
                        let outcome = attempt(&http, &url, &token, &key, &body).await;
                        let mut t = load.tally.lock().await;
                        match outcome {
                            Attempt::Acked(ack, replayed) => {
                                if tries > 1 {
                                    t.failed_then_acked += 1;
                                }
                                if replayed {
                                    t.replayed += 1;
                                }
                                let previous = t.acked.insert(key.clone(), ack);
                                assert!(previous.is_none(), "{key} acknowledged twice");
                                break;
                            }
                            Attempt::Refused(why) => {
                                t.refused.push(format!("{key}: {why}"));
                                break;
                            }
                            Attempt::Retry(why) => {
                                *t.failures.entry(why).or_default() += 1;
                                t.first_failure.get_or_insert_with(Instant::now);
                            }
                        }
                        drop(t);
                        if load.stop.load(Ordering::Relaxed) {
                            let deadline = *deadline.get_or_insert(Instant::now() + ACK_DEADLINE);
                            if Instant::now() > deadline {
                                load.tally.lock().await.abandoned.push(key.clone());
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect()
}

async fn finish_load(load: &Arc<Load>, workers: Vec<tokio::task::JoinHandle<()>>) {
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("load client");
    }
}

fn new_load() -> Arc<Load> {
    Arc::new(Load {
        sent: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
    })
}

/// Prints the figures and checks exactly-once against the database: every acknowledged
/// registration stored once with what the clinic was told, as many prescriptions (and
/// `registered` events, and stored idempotent responses) as keys acknowledged, and replays of a
/// few keys answering the same prescription.
async fn check_exactly_once(
    what: &str,
    load: &Load,
    db: &tokio_postgres::Client,
    replay_url: &str,
    token: &str,
) {
    let t = load.tally.lock().await;
    println!(
        "[{what}] sent {} requests, {} acknowledged, {} retried, {} failed-then-acked, {} acknowledged by replay",
        load.sent.load(Ordering::Relaxed),
        t.acked.len(),
        load.retried.load(Ordering::Relaxed),
        t.failed_then_acked,
        t.replayed
    );
    for (why, n) in &t.failures {
        println!("[{what}]   failed attempts: {n:>4} × {why}");
    }
    assert!(t.refused.is_empty(), "refused: {:?}", t.refused);
    assert!(
        t.abandoned.is_empty(),
        "never acknowledged: {:?}",
        t.abandoned
    );
    assert!(
        !t.failures.keys().any(|k| k.starts_with("HTTP 500")),
        "no 500 from the relay: {:?}",
        t.failures
    );
    assert!(!t.acked.is_empty(), "the load registered something");

    let stored: BTreeMap<String, String> = db
        .query("SELECT id::text, exchange_number FROM prescriptions", &[])
        .await
        .expect("prescriptions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let events: BTreeMap<String, i64> = db
        .query(
            "SELECT prescription_id::text, count(*) FROM prescription_events
              WHERE action = 'registered' GROUP BY 1",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let responses: BTreeMap<String, (i16, Option<String>)> = db
        .query(
            "SELECT key, response_status, response_body->>'prescription_id' FROM idempotency_keys
              WHERE key LIKE 'load-%'",
            &[],
        )
        .await
        .expect("idempotency keys")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    println!(
        "[{what}] database: {} prescriptions, {} registered events, {} stored responses for {} keys acknowledged",
        stored.len(),
        events.values().sum::<i64>(),
        responses.len(),
        t.acked.len()
    );
    for (key, ack) in &t.acked {
        assert_eq!(
            stored.get(&ack.prescription_id),
            Some(&ack.exchange_number),
            "{key}: the acknowledged prescription is stored with the number the clinic was given"
        );
        assert_eq!(
            events.get(&ack.prescription_id),
            Some(&1),
            "{key}: one registered event"
        );
        assert_eq!(
            responses.get(key),
            Some(&(201, Some(ack.prescription_id.clone()))),
            "{key}: the stored response names the same prescription"
        );
    }
    assert_eq!(
        stored.len(),
        t.acked.len(),
        "no prescription beyond those acknowledged"
    );
    assert_eq!(
        events.len(),
        t.acked.len(),
        "no registered event beyond them"
    );
    assert_eq!(responses.len(), t.acked.len(), "no key stored beyond them");

    // An idempotent retry: the same key and body answer the same prescription, not a new one.
    let http = http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let step = (t.acked.len() / 5).max(1);
    let mut replays = 0;
    for (key, ack) in t.acked.iter().step_by(step).take(5) {
        let r = http
            .post(replay_url)
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&ack.body)
            .send()
            .await
            .expect("replay");
        assert_eq!(r.status().as_u16(), 201, "{key}");
        assert_eq!(
            r.headers()
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true"),
            "{key}"
        );
        let answer: Value = r.json().await.expect("JSON");
        assert_eq!(
            answer["prescription_id"],
            ack.prescription_id.as_str(),
            "{key}"
        );
        assert_eq!(
            answer["exchange_number"],
            ack.exchange_number.as_str(),
            "{key}"
        );
        replays += 1;
    }
    let count: i64 = db
        .query_one("SELECT count(*) FROM prescriptions", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        count as usize,
        t.acked.len(),
        "replays registered nothing new"
    );
    println!(
        "[{what}] {replays} keys replayed: same prescription, Idempotent-Replayed, nothing new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_and_restarted_under_load_loses_and_duplicates_nothing() {
    let setup = Instant::now();
    let a = Relay::new("crash_kill");
    a.migrate_and_seed();
    let keys = a.keys();
    let doctor = mint(&keys, "9918000010", "doctor", "doctor-1");
    let b = a.replica("crash_kill_b");
    let (serving_a, serving_b) = tokio::task::block_in_place(|| (a.serve(), b.serve()));
    let haproxy = Haproxy::start(&a.work, &[&a.listen, &b.listen]);
    for server in ["r1", "r2"] {
        assert!(
            haproxy.wait_for(server, "UP", RECOVERY).await.is_some(),
            "{server} UP"
        );
    }
    println!("[kill] set up in {} ms", setup.elapsed().as_millis());
    let url = format!("{}/v1/prescriptions", haproxy.base_url());
    let load = new_load();
    let duration = load_duration();
    let started = Instant::now();
    let workers = start_load(&load, url.clone(), doctor.clone());

    tokio::time::sleep(duration / 3).await;
    let mut serving_b = serving_b;
    let acked_before = load.tally.lock().await.acked.len();
    serving_b.kill().expect("SIGKILL r2");
    let killed = Instant::now();
    let status = serving_b.wait().expect("reap r2");
    println!(
        "[kill] r2 SIGKILLed at {} ms into the load ({acked_before} acknowledged so far): {status}",
        started.elapsed().as_millis()
    );
    drop(serving_b);
    let marked_down = haproxy.wait_for("r2", "DOWN", RECOVERY).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let serving_b = tokio::task::block_in_place(|| b.serve());
    let restarted = killed.elapsed();
    let up = haproxy
        .wait_for("r2", "UP", RECOVERY)
        .await
        .expect("r2 UP again");
    println!(
        "[kill] haproxy marked r2 DOWN {} ms after the kill; r2 restarted after {} ms, UP again {} ms later",
        marked_down.map_or("(never)".into(), |d| d.as_millis().to_string()),
        restarted.as_millis(),
        up.as_millis()
    );
    // The rest of the load, with both relays again for a moment at least.
    let rest = duration
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    tokio::time::sleep(rest).await;
    finish_load(&load, workers).await;
    println!("[kill] load ran {} ms", started.elapsed().as_millis());
    let servers = haproxy.servers().await;
    for s in &servers {
        println!(
            "[kill] haproxy {}: {} requests, {} 2xx, {} 5xx",
            s.name, s.sessions, s.responses_2xx, s.responses_5xx
        );
    }
    println!(
        "[kill] haproxy log:\n{}",
        haproxy
            .log()
            .lines()
            .filter(|l| l.contains("r2"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let db = a.connect().await;
    check_exactly_once("kill", &load, &db, &url, &doctor).await;
    for (relay, serving) in [(&a, serving_a), (&b, serving_b)] {
        let exit = tokio::task::spawn_blocking(move || {
            let mut serving = serving;
            terminate(&mut serving, Duration::from_secs(30))
        })
        .await
        .expect("join")
        .expect("the relay stops on SIGTERM");
        assert!(exit.success(), "exit status {exit:?}");
        assert!(!relay.log().contains("panicked"), "{}", relay.log());
    }
}

/// A PostgreSQL cluster of this test alone (the shared test cluster is never restarted), made
/// with `scripts/pg.sh` like `scripts/test`'s but durable — `synchronous_commit` on, as in
/// production — since an immediate stop loses any commit acknowledged before its WAL was written.
/// Stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
    port: String,
}

fn pg_sh(script: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/pg.sh; {script}"))
        .arg("pg.sh")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{script} {args:?}: {}", stderr(&out));
    out
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = stdout(&pg_sh("pg_free_port", &[]));
        let cluster = Cluster { dir, port };
        cluster.start_again();
        cluster
    }

    /// Starts the cluster (initdb the first time) on its port and waits until it is ready.
    fn start_again(&self) {
        pg_sh(r#"pg_start_cluster "$1" "$2""#, &[self.dir(), &self.port]);
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, no checkpoint, the next
    /// start recovers from the WAL — as after a crash.
    fn stop_immediately(&self) {
        pg_sh(
            r#"_pg_as_owner "$(pg_bindir)/pg_ctl" stop -D "$1/data" -m immediate -w -s"#,
            &[self.dir()],
        );
    }

    fn url(&self) -> String {
        stdout(&pg_sh(r#"pg_url "$1""#, &[self.dir()]))
    }

    fn dir(&self) -> &str {
        self.dir.to_str().expect("UTF-8 path")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("-c")
            .arg(r#"source scripts/pg.sh; pg_stop_cluster "$1""#)
            .arg("pg.sh")
            .arg(self.dir())
            .current_dir(repo_root())
            .output();
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_the_same_relay_recovers_and_loses_nothing() {
    let setup = Instant::now();
    let cluster = tokio::task::block_in_place(|| Cluster::start("relay-e2e-pg-restart"));
    println!(
        "[pg] own cluster initialised and started in {} ms",
        setup.elapsed().as_millis()
    );
    let work = std::env::temp_dir().join(format!("relay-e2e-crash_pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let relay = Relay {
        bin: relay_binary(),
        database_url: cluster.url(),
        work,
        listen: format!("127.0.0.1:{}", free_port()),
    };
    relay.migrate_and_seed();
    let doctor = mint(&relay.keys(), "9918000010", "doctor", "doctor-1");
    let mut serving = tokio::task::block_in_place(|| relay.serve());
    println!("[pg] set up in {} ms", setup.elapsed().as_millis());
    let url = format!("{}/v1/prescriptions", relay.base_url());
    let load = new_load();
    let duration = load_duration();
    let started = Instant::now();
    let workers = start_load(&load, url.clone(), doctor.clone());

    tokio::time::sleep(duration / 3).await;
    let acked_before = load.tally.lock().await.acked.len();
    let stop_began = Instant::now();
    tokio::task::block_in_place(|| cluster.stop_immediately());
    println!(
        "[pg] PostgreSQL stopped (immediate) at {} ms into the load ({acked_before} acknowledged so far), in {} ms",
        stop_began.duration_since(started).as_millis(),
        stop_began.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_began = Instant::now();
    tokio::task::block_in_place(|| cluster.start_again());
    let back = Instant::now();
    println!(
        "[pg] PostgreSQL down {} ms; started again on port {} in {} ms",
        back.duration_since(stop_began).as_millis(),
        cluster.port,
        back.duration_since(start_began).as_millis()
    );

    // The relay was never restarted: it must come back by itself.
    let http = http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let ready = loop {
        let r = http
            .get(format!("{}/readyz", relay.base_url()))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < RECOVERY,
            "not ready {RECOVERY:?} after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // From the start command: the server accepts connections before the script returns.
    let registering = loop {
        let acked_since = load
            .tally
            .lock()
            .await
            .acked
            .values()
            .filter(|a| a.at > start_began)
            .map(|a| a.at)
            .min();
        if let Some(at) = acked_since {
            break at.duration_since(start_began);
        }
        assert!(
            back.elapsed() < RECOVERY,
            "no registration acknowledged {RECOVERY:?} after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "[pg] same relay: first registration acknowledged {} ms after the start command began; /readyz 200 {} ms after it returned",
        registering.as_millis(),
        ready.as_millis()
    );
    let rest = duration
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    tokio::time::sleep(rest).await;
    finish_load(&load, workers).await;
    println!("[pg] load ran {} ms", started.elapsed().as_millis());
    let first_failure = load.tally.lock().await.first_failure;
    if let Some(f) = first_failure {
        println!(
            "[pg] first failed attempt {} ms after the stop began",
            f.saturating_duration_since(stop_began).as_millis()
        );
    }

    let db = relay.connect().await;
    check_exactly_once("pg", &load, &db, &url, &doctor).await;
    let exit =
        tokio::task::spawn_blocking(move || terminate(&mut serving, Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("the relay stops on SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let log = relay.log();
    assert!(!log.contains("panicked"), "{log}");
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    println!(
        "[pg] relay log: {} 'database unavailable', {} 'request failed'",
        lines("database unavailable"),
        lines("request failed")
    );
    drop(cluster);
}
