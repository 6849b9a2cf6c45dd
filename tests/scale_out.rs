//! Scale-out, across processes: two `relay serve` processes on one database behind a real haproxy
//! (round robin, health-checked with `GET /readyz`). Both serve; one leaving (SIGTERM) costs no
//! request once the balancer has marked it down; and fifty pharmacies receiving the same
//! prescription at once — half through the balancer, half straight at either relay — leave exactly
//! one holder. Figures are printed (`--no-capture` to see them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use relay_e2e::*;
use serde_json::{Value, json};
use tokio::sync::{Barrier, Mutex};

/// Generous: only tells a slow machine from a balancer that never notices.
const HEALTH_BOUND: Duration = Duration::from_secs(15);

/// Two relays of one installation (demo data loaded) behind haproxy, both marked up.
struct Fleet {
    a: Relay,
    b: Relay,
    serving_a: Serving,
    serving_b: Serving,
    haproxy: Haproxy,
}

async fn fleet(name: &str) -> Fleet {
    let setup = Instant::now();
    let a = Relay::new(name);
    a.migrate_and_seed();
    // The signing key exists before either relay starts (the replica links to it).
    let _ = a.keys();
    let b = a.replica(&format!("{name}_b"));
    let (serving_a, serving_b) = tokio::task::block_in_place(|| (a.serve(), b.serve()));
    let haproxy = Haproxy::start(&a.work, &[&a.listen, &b.listen]);
    for server in ["r1", "r2"] {
        let Some(took) = haproxy.wait_for(server, "UP", HEALTH_BOUND).await else {
            panic!("{server} never UP: {:?}", haproxy.servers().await);
        };
        println!("[fleet] {server} UP after {} ms", took.as_millis());
    }
    // Mostly `cargo build` of the relay (waiting for the build lock when others build).
    println!("[fleet] set up in {} ms", setup.elapsed().as_millis());
    Fleet {
        a,
        b,
        serving_a,
        serving_b,
        haproxy,
    }
}

/// Requests on `route` in a relay's log (request spans name the route pattern).
fn requests_in_log(relay: &Relay, route: &str) -> usize {
    let needle = format!("route={route}");
    relay
        .log()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("close"))
        .count()
}

/// One request of the load: when it started and how it ended.
struct Sent {
    started: Instant,
    outcome: Result<u16, String>,
}

fn failed(s: &Sent) -> bool {
    !matches!(s.outcome, Ok(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_share_the_traffic_and_one_leaving_fails_nothing_once_marked_down() {
    let Fleet {
        a,
        b,
        serving_a,
        serving_b,
        haproxy,
    } = fleet("scale_share").await;
    let pharmacist = a.token("9948000014", "pharmacist", "pharmacist-1");
    let route = "/v1/outages/active";
    let url = format!("{}{route}", haproxy.base_url());
    let http = http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Round robin over one kept-alive client connection: each request is balanced on its own.
    for _ in 0..40 {
        let r = http
            .get(&url)
            .bearer_auth(&pharmacist)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
    }
    let (in_a, in_b) = (requests_in_log(&a, route), requests_in_log(&b, route));
    let servers = haproxy.servers().await;
    println!("[share] 40 requests through haproxy: relay r1 logged {in_a}, relay r2 logged {in_b}");
    for s in &servers {
        println!(
            "[share] haproxy {}: {} sessions, {} 2xx, {} 5xx",
            s.name, s.sessions, s.responses_2xx, s.responses_5xx
        );
    }
    assert_eq!(in_a + in_b, 40, "every request reached a relay");
    assert!(in_a > 0 && in_b > 0, "both relays serve: {in_a} / {in_b}");

    // Load through the balancer while relay r2 leaves (SIGTERM: it stops accepting, drains).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, url, token) =
                (stop.clone(), sent.clone(), url.clone(), pharmacist.clone());
            tokio::spawn(async move {
                let http = http_client()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = match http.get(&url).bearer_auth(&token).send().await {
                        Ok(r) => Ok(r.status().as_u16()),
                        Err(e) => Err(e.to_string()),
                    };
                    sent.lock().await.push(Sent { started, outcome });
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stopping = Instant::now();
    let leaving = tokio::task::spawn_blocking(move || {
        let mut serving_b = serving_b;
        let exit = terminate(&mut serving_b, Duration::from_secs(30));
        (exit, serving_b)
    });
    let Some(marked_down) = haproxy.wait_for("r2", "DOWN", HEALTH_BOUND).await else {
        panic!("r2 never marked DOWN: {:?}", haproxy.servers().await);
    };
    let down_at = Instant::now();
    // As long again on the one relay left.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (exit, _serving_b) = leaving.await.expect("join");
    let exit = exit.expect("relay r2 stops on SIGTERM");
    assert!(exit.success(), "r2 exit status {exit:?}");

    let sent = sent.lock().await;
    let before: Vec<&Sent> = sent.iter().filter(|s| s.started < stopping).collect();
    let switch: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.started >= stopping && s.started < down_at)
        .collect();
    let after: Vec<&Sent> = sent.iter().filter(|s| s.started >= down_at).collect();
    println!(
        "[leave] r2 SIGTERMed; marked DOWN by haproxy {} ms later",
        marked_down.as_millis()
    );
    for (phase, list) in [
        ("before the stop", &before),
        ("during the switch", &switch),
        ("after DOWN", &after),
    ] {
        let failures: Vec<String> = list
            .iter()
            .filter(|s| failed(s))
            .map(|s| match &s.outcome {
                Ok(status) => format!("HTTP {status}"),
                Err(e) => e.clone(),
            })
            .collect();
        println!(
            "[leave] {phase}: {} requests, {} failed {:?}",
            list.len(),
            failures.len(),
            failures
        );
    }
    assert!(
        before.iter().all(|s| !failed(s)),
        "no failure before the stop"
    );
    assert!(!after.is_empty(), "traffic kept flowing");
    assert!(
        after.iter().all(|s| !failed(s)),
        "no failed request once r2 is marked down"
    );
    println!(
        "[leave] r1 served {} requests after r2 went down",
        after.len()
    );
    drop(sent);

    // Back again: r2 restarts and takes traffic.
    let serving_b = tokio::task::block_in_place(|| b.serve());
    let up = haproxy
        .wait_for("r2", "UP", HEALTH_BOUND)
        .await
        .expect("r2 UP again");
    let logged_before = requests_in_log(&b, route);
    for _ in 0..10 {
        let r = http
            .get(&url)
            .bearer_auth(&pharmacist)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
    }
    let new_in_b = requests_in_log(&b, route) - logged_before;
    println!(
        "[rejoin] r2 UP {} ms after its restart; served {new_in_b} of the next 10 requests",
        up.as_millis()
    );
    assert!(new_in_b > 0, "the restarted relay takes traffic again");

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

/// Pharmacy code number `i` (10 digits, prefecture 99, 点数表 4, mod-10 check digit).
fn pharmacy_code(i: usize) -> String {
    let base = format!("994{:06}", 900_000 + i);
    let check = relay::domain::check_digit::mod10(&base).expect("digits");
    format!("{base}{check}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_pharmacies_receiving_one_prescription_across_two_relays_leave_one_holder() {
    const CLIENTS: usize = 50;
    let Fleet {
        a,
        b,
        serving_a,
        serving_b,
        haproxy,
    } = fleet("scale_race").await;
    let keys = a.keys();
    let admin = mint(&keys, "9918000010", "admin", "admin-1");
    let doctor = mint(&keys, "9918000010", "doctor", "doctor-1");
    let balancer = haproxy.base_url();
    let http = http_client()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    // Fifty pharmacies, registered through the balancer.
    let pharmacies: Vec<String> = (1..=CLIENTS).map(pharmacy_code).collect();
    for (i, code) in pharmacies.iter().enumerate() {
        let r = http
            .post(format!("{balancer}/v1/admin/facilities"))
            .bearer_auth(&admin)
            .json(
                &json!({"code": code, "kind": "pharmacy", "name": format!("試験薬局 {i}"),
                          "email": format!("pharmacy-{i}@example.jp")}),
            )
            .send()
            .await
            .expect("register pharmacy");
        assert_eq!(
            r.status().as_u16(),
            201,
            "{code}: {}",
            r.text().await.unwrap_or_default()
        );
    }

    let insured = json!({"insurer_number": "01130012", "symbol": "1234", "number": "7391846", "branch": "01"});
    let r = http
        .post(format!("{balancer}/v1/prescriptions"))
        .bearer_auth(&doctor)
        .json(&json!({
            "issue_type": "electronic",
            "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": "1975-07-07"},
            "insurance": {"insurer_number": "01130012", "symbol": "1234", "number": "7391846",
                          "relationship": "insured", "branch": "01", "copay_rate": 30},
            "issued_on": relay::domain::time::today().to_string(),
            "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日3回毎食後", "times_per_day": 3},
                     "drugs": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 0.4, "unit": "g"}]}]
        }))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status().as_u16(), 201);
    let registered: Value = r.json().await.expect("JSON");
    let id = registered["prescription_id"]
        .as_str()
        .expect("id")
        .to_string();
    let number = registered["exchange_number"]
        .as_str()
        .expect("number")
        .to_string();

    // Half through the balancer, half straight at r1 and r2 in turn; every client has its own
    // connection, opened before the start so that the receives leave together.
    let targets: Vec<(String, &str)> = (0..CLIENTS)
        .map(|i| match i % 4 {
            0 | 2 => (balancer.clone(), "haproxy"),
            1 => (a.base_url(), "r1 direct"),
            _ => (b.base_url(), "r2 direct"),
        })
        .collect();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let body = json!({"exchange_number": number, "insured": insured});
    let tasks: Vec<_> = pharmacies
        .iter()
        .zip(targets)
        .map(|(code, (base, via))| {
            let token = mint(&keys, code, "pharmacist", "pharmacist-1");
            let (barrier, body, code) = (barrier.clone(), body.clone(), code.clone());
            tokio::spawn(async move {
                let http = http_client()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let warm = http.get(format!("{base}/healthz")).send().await;
                assert!(warm.is_ok(), "{via}: {warm:?}");
                barrier.wait().await;
                let started = Instant::now();
                let r = http
                    .post(format!("{base}/v1/prescriptions/receive"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{code} via {via}: {e}"));
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (code, via, status, body, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("receive task"));
    }

    let winners: Vec<_> = answers.iter().filter(|a| a.2 == 200).collect();
    let slowest = answers.iter().map(|a| a.4).max().unwrap_or_default();
    let mut by_answer = std::collections::BTreeMap::<String, usize>::new();
    for (_, via, status, body, _) in &answers {
        let code = body["code"].as_str().unwrap_or("");
        *by_answer
            .entry(format!("{via}: {status} {code}"))
            .or_default() += 1;
    }
    println!(
        "[race] {CLIENTS} concurrent receives; slowest answer {} ms",
        slowest.as_millis()
    );
    for (what, n) in &by_answer {
        println!("[race]   {n:>2} × {what}");
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one receive succeeds: {by_answer:?}"
    );
    let holder = winners[0].0.clone();
    println!("[race] holder {holder} (via {})", winners[0].1);
    for (code, via, status, body, _) in &answers {
        if *code == holder {
            continue;
        }
        assert_eq!(*status, 409, "{code} via {via}: {body}");
        assert_eq!(body["code"], "HELD_BY_ANOTHER_PHARMACY", "{body}");
        assert_eq!(body["holder"]["code"], holder.as_str(), "{body}");
    }

    let db = a.connect().await;
    let row = db
        .query_one(
            "SELECT status, holder_code FROM prescriptions WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("prescription");
    assert_eq!(row.get::<_, String>(0), "dispensing");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(holder.as_str())
    );
    let received: Vec<String> = db
        .query(
            "SELECT facility_code FROM prescription_events
              WHERE prescription_id = $1::text::uuid AND action = 'received'",
            &[&id],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!("[race] database: status dispensing, holder {holder}, received events {received:?}");
    assert_eq!(
        received,
        vec![holder.clone()],
        "exactly one received event, by the holder"
    );

    drop((serving_a, serving_b, haproxy));
}
