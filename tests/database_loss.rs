//! Database loss, across processes: the `relay serve` binary reaches PostgreSQL through a TCP proxy
//! this test controls. While the path is cut — connections closed and refused, or blackholed
//! (accepted, never forwarded: the nasty case, no TCP error ever arrives) — `/readyz` and API calls
//! must answer 503 `DATABASE_UNAVAILABLE` within a bound (never a hang, never a 500); once the path
//! is back the relay must recover by itself, without a restart. Measured times are printed
//! (`--no-capture` to see them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_e2e::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Generous: only tells a bounded answer from a hang.
const BOUND: Duration = Duration::from_secs(15);
/// How long the relay may take to notice that the database is back.
const RECOVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Every connection closed, the port closed: connects are refused.
    Refuse,
    /// Connections stay open and new ones are accepted, but no byte goes through.
    Blackhole,
}

/// A TCP proxy in front of PostgreSQL whose path can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, rx) = watch::channel(Mode::Forward);
        tokio::spawn(accept_loop(listener, addr, upstream, rx));
        Proxy { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        match (current, &listener) {
            (Mode::Refuse, Some(_)) => listener = None,
            (Mode::Refuse, None) => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            (_, None) => listener = Some(bind_again(addr).await),
            (_, Some(l)) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((client, _)) = accepted {
                            tokio::spawn(serve(client, upstream, mode.clone()));
                        }
                    }
                    changed = mode.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot listen on {addr} again");
}

/// Waits while blackholed: `true` when forwarding, `false` when the connection must close.
async fn wait_forward(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Forward => return true,
            Mode::Refuse => return false,
            Mode::Blackhole => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    // Accepted while blackholed: held open, never answered.
    if !wait_forward(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // When either direction ends, both sockets close.
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone()) => {}
        _ = pump(server_read, client_write, mode) => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_forward(&mut mode).await {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Bytes read as the path goes dark are held, not delivered.
                if !wait_forward(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

/// One HTTP answer with how long it took.
#[derive(Debug)]
struct Answer {
    what: &'static str,
    status: u16,
    code: String,
    retry_after: Option<String>,
    took: Duration,
}

struct Client {
    http: reqwest::Client,
    base: String,
    admin: String,
    pharmacist: String,
}

impl Client {
    async fn send(&self, what: &'static str) -> Answer {
        let started = Instant::now();
        let req = match what {
            "readyz" => self.http.get(format!("{}/readyz", self.base)),
            "GET disasters" => self
                .http
                .get(format!("{}/v1/admin/disasters", self.base))
                .bearer_auth(&self.admin),
            "GET outages" => self
                .http
                .get(format!("{}/v1/outages/active", self.base))
                .bearer_auth(&self.pharmacist),
            "POST staff" => self
                .http
                .post(format!("{}/v1/admin/staff", self.base))
                .bearer_auth(&self.admin)
                .header("Idempotency-Key", format!("loss-{}", unique()))
                .json(
                    &json!({"facility_code": "9918000010", "staff_id": "doctor-9",
                              "role": "doctor", "name": "試験 医師"}),
                ),
            other => panic!("unknown request {other}"),
        };
        let r = req.send().await.unwrap_or_else(|e| {
            panic!(
                "{what}: no answer after {:?} (a hang?): {e}",
                started.elapsed()
            )
        });
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Answer {
            what,
            status,
            code: body["code"].as_str().unwrap_or("").to_string(),
            retry_after,
            took: started.elapsed(),
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

const ALL: [&str; 4] = ["readyz", "GET disasters", "GET outages", "POST staff"];

fn show(phase: &str, answers: &[Answer]) {
    for a in answers {
        println!(
            "[{phase}] {:<14} {} {:<22} Retry-After {:<5} {:>6} ms",
            a.what,
            a.status,
            a.code,
            a.retry_after.as_deref().unwrap_or("-"),
            a.took.as_millis()
        );
    }
}

#[track_caller]
fn assert_unavailable(a: &Answer) {
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.code, "DATABASE_UNAVAILABLE", "{a:?}");
    assert!(a.retry_after.is_some(), "Retry-After on {a:?}");
    assert!(a.took < BOUND, "bounded: {a:?}");
}

async fn lose_the_database_and_recover(mode: Mode, name: &str) {
    let mut relay = Relay::new(name);
    let out = relay.run(&["migrate"]);
    assert!(out.status.success(), "migrate: {}", stderr(&out));
    let out = relay.run(&["seed", "demo"]);
    assert!(out.status.success(), "seed: {}", stderr(&out));

    let pg: tokio_postgres::Config = relay.database_url.parse().expect("database URL");
    let (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) =
        (pg.get_hosts().first(), pg.get_ports().first())
    else {
        panic!("the test cluster is reached over TCP");
    };
    let upstream: SocketAddr = format!("{host}:{port}").parse().expect("IP address");
    let proxy = Proxy::start(upstream).await;
    relay.database_url =
        relay
            .database_url
            .replacen(&format!("{host}:{port}"), &proxy.addr.to_string(), 1);
    let client = Arc::new(Client {
        http: relay_e2e::http_client()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client"),
        base: relay.base_url(),
        admin: relay.token("9918000010", "admin", "admin-1"),
        pharmacist: relay.token("9948000014", "pharmacist", "pharmacist-1"),
    });
    let mut server = tokio::task::block_in_place(|| relay.serve());

    // Healthy, through the proxy.
    let mut healthy = Vec::new();
    for what in ALL {
        healthy.push(client.send(what).await);
    }
    show("healthy", &healthy);
    for a in &healthy {
        assert_eq!(a.status, 200, "{a:?}");
    }

    // Cut.
    proxy.set(mode);
    let cut_at = Instant::now();
    let mut down = Vec::new();
    for what in ALL {
        down.push(client.send(what).await);
    }
    show(&format!("{mode:?} 1st"), &down);
    // A burst: every pooled connection is stale at once.
    let burst = burst(&client, 12).await;
    let slowest = burst.iter().map(|a| a.took).max().unwrap_or_default();
    println!(
        "[{mode:?} burst] 12 concurrent GETs: statuses {:?}, slowest {} ms",
        burst.iter().map(|a| a.status).collect::<Vec<_>>(),
        slowest.as_millis()
    );
    let mut again = Vec::new();
    for what in ALL {
        again.push(client.send(what).await);
    }
    show(&format!("{mode:?} 2nd"), &again);
    for a in down.iter().chain(&burst).chain(&again) {
        assert_unavailable(a);
    }
    println!(
        "[{mode:?}] {} requests while cut, all 503 DATABASE_UNAVAILABLE, in {} ms",
        down.len() + burst.len() + again.len(),
        cut_at.elapsed().as_millis()
    );

    // Restore: the relay recovers by itself.
    proxy.set(Mode::Forward);
    let restored = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        let a = client.send("readyz").await;
        assert!(
            a.status == 200 || a.status == 503,
            "readyz while recovering: {a:?}"
        );
        if a.status == 200 {
            break;
        }
        assert!(
            restored.elapsed() < RECOVERY,
            "not ready {RECOVERY:?} after the database came back: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "[{mode:?}] ready again {} ms after the path was restored ({polls} polls)",
        restored.elapsed().as_millis()
    );
    let mut back = Vec::new();
    for what in ALL {
        back.push(client.send(what).await);
    }
    show(&format!("{mode:?} back"), &back);
    for a in &back {
        assert_eq!(a.status, 200, "after recovery: {a:?}");
    }

    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("the relay stops on SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let log = relay.log();
    assert!(!log.contains("panicked"), "{log}");
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    println!(
        "[{mode:?}] log: {} 'database unavailable', {} 'closing this connection', {} 'database connection closed'",
        lines("database unavailable"),
        lines("closing this connection"),
        lines("database connection closed"),
    );
}

async fn burst(client: &Arc<Client>, n: usize) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.send("GET disasters").await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("request task"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_refused_answers_503_quickly_and_recovers() {
    lose_the_database_and_recover(Mode::Refuse, "dbloss_refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_blackholed_answers_503_within_a_bound_and_recovers() {
    lose_the_database_and_recover(Mode::Blackhole, "dbloss_blackholed").await;
}

/// A pool of the relay library itself on a fresh database, with `adjust` applied.
fn library_pool(
    url: &str,
    adjust: impl FnOnce(&mut relay::config::DatabaseSettings),
) -> relay::db::Pool {
    let mut settings =
        relay::config::Settings::with_database(relay::config::DatabaseUrl::new(url.to_string()));
    adjust(&mut settings.database);
    relay::db::pool(&settings).expect("pool")
}

fn unavailable(e: tokio_postgres::Error) -> bool {
    matches!(
        relay::db::DbError::from(e),
        relay::db::DbError::Unavailable(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_long_statement_on_a_live_server_outlasts_the_watch() {
    let url = fresh_database("dbloss_long");
    let pool = library_pool(&url, |d| {
        d.response_timeout_ms = 200;
        d.statement_timeout_ms = 0;
    });
    let client = pool.get().await.expect("connection");
    let started = Instant::now();
    client
        .simple_query("SELECT pg_sleep(1.2)")
        .await
        .expect("a silent but live server is waited for (probes answered)");
    println!(
        "[long statement] 1.2 s statement with a 200 ms watch: done in {} ms",
        started.elapsed().as_millis()
    );
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_statement_timeout_bounds_a_statement_and_reads_as_unavailable() {
    let url = fresh_database("dbloss_stmt");
    let pool = library_pool(&url, |d| d.statement_timeout_ms = 300);
    // Migrations lift the limit for their own session only.
    relay::db::migrate(&pool).await.expect("migrate");
    let client = pool.get().await.expect("connection");
    let shown = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show");
    assert_eq!(shown.get::<_, String>(0), "300ms");
    let started = Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(5)")
        .await
        .expect_err("cancelled by statement_timeout");
    println!(
        "[statement_timeout 300 ms] pg_sleep(5) cancelled after {} ms: {err}",
        started.elapsed().as_millis()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(unavailable(err), "statement_timeout is a 503, not a 500");
    let api: relay::http::ApiError = relay::db::DbError::Unavailable("x".into()).into();
    assert_eq!(api.status().as_u16(), 503);
    assert_eq!(api.code(), "DATABASE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_query_in_flight_when_the_path_goes_dark_fails_within_the_bound() {
    let url = fresh_database("dbloss_inflight");
    let pg: tokio_postgres::Config = url.parse().expect("database URL");
    let (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) =
        (pg.get_hosts().first(), pg.get_ports().first())
    else {
        panic!("the test cluster is reached over TCP");
    };
    let proxy = Proxy::start(format!("{host}:{port}").parse().expect("IP address")).await;
    let proxied = url.replacen(&format!("{host}:{port}"), &proxy.addr.to_string(), 1);
    let pool = library_pool(&proxied, |d| {
        d.acquire_timeout_ms = 500;
        d.response_timeout_ms = 500;
    });
    // Two idle connections, then one busy when the path goes dark.
    let (a, b) = tokio::join!(pool.get(), pool.get());
    drop((a.expect("connection"), b.expect("connection")));
    let client = pool.get().await.expect("connection");
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(1)").await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Mode::Blackhole);
    let (result, client) = query.await.expect("join");
    let took = started.elapsed();
    let err = result.expect_err("the answer never arrives");
    println!(
        "[in flight] blackholed mid-statement: failed after {} ms: {err}",
        took.as_millis()
    );
    assert!(took < BOUND, "bounded: {took:?}");
    assert!(client.is_closed());
    assert!(unavailable(err), "a dead connection is a 503");
    drop(client);
    // The idle connections opened before the loss are not handed out: a new one is tried (and
    // times out in the blackhole), quickly.
    let started = Instant::now();
    let err = pool.get().await.expect_err("no connection while dark");
    println!(
        "[in flight] checkout while dark: {} ms: {err}",
        started.elapsed().as_millis()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        relay::db::DbError::from(err),
        relay::db::DbError::Unavailable(_)
    ));
    proxy.set(Mode::Forward);
    let client = pool
        .get()
        .await
        .expect("a fresh connection once the path is back");
    client.simple_query("SELECT 1").await.expect("works");
}
