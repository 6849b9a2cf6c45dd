//! Harness for end-to-end tests that run the real `relay` binary as separate processes against the
//! throwaway PostgreSQL cluster of `scripts/test` (`RELAY_TEST_DATABASE_URL`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds the relay binary (a no-op when fresh) and returns its path.
pub fn relay_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "relay", "--bin", "relay"])
        .current_dir(repo_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p relay failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join("relay")
}

fn admin_url() -> String {
    std::env::var("RELAY_TEST_DATABASE_URL")
        .expect("RELAY_TEST_DATABASE_URL is not set: run the tests with scripts/test")
}

/// A fresh, empty database on the test cluster; returns its URL.
pub fn fresh_database(name: &str) -> String {
    let admin = admin_url();
    let out = Command::new("psql")
        .args([
            &admin,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name}"),
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

/// The environment of one relay installation: its database, key directory and listen address.
pub struct Relay {
    pub bin: PathBuf,
    pub database_url: String,
    pub work: PathBuf,
    pub listen: String,
}

impl Relay {
    pub fn new(name: &str) -> Relay {
        let work = std::env::temp_dir().join(format!("relay-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("work dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Relay {
            bin: relay_binary(),
            database_url: fresh_database(name),
            work,
            listen: format!("127.0.0.1:{port}"),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(repo_root())
            .env("RELAY_ENV", "e2e")
            .env("RELAY_DATABASE_URL", &self.database_url)
            .env("RELAY_LISTEN", &self.listen)
            .env("RELAY_AUTH__KEY_DIR", self.work.join("keys"))
            .env_remove("RUST_LOG");
        c
    }

    /// Runs a subcommand to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run relay")
    }

    /// `relay migrate` and `relay seed demo`, asserting both succeed.
    pub fn migrate_and_seed(&self) {
        for args in [&["migrate"][..], &["seed", "demo"][..]] {
            let out = self.run(args);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        }
    }

    /// A token minted by `relay token` for `staff` with `role` at `facility`.
    pub fn token(&self, facility: &str, role: &str, staff: &str) -> String {
        let out = self.run(&[
            "token",
            "--facility",
            facility,
            "--role",
            role,
            "--staff",
            staff,
        ]);
        assert!(out.status.success(), "token: {}", stderr(&out));
        stdout(&out)
    }

    /// Starts `relay serve` with stderr appended to `work/serve.log`; waits for the port.
    pub fn serve(&self) -> Serving {
        self.serve_with(&[])
    }

    /// [`Relay::serve`] with extra environment variables (configuration overrides).
    pub fn serve_with(&self, env: &[(&str, &str)]) -> Serving {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut child = self
            .command(&["serve"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn relay serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.listen).is_ok() {
                return Serving(child);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("relay serve did not listen; log:\n{}", self.log());
    }

    /// A client on this relay's database, for looking at what a command wrote.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn log_path(&self) -> PathBuf {
        self.work.join("serve.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// Sends SIGTERM and waits for the exit status, at most `limit`.
pub fn terminate(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A running `relay serve`: a `Child` (stop it with [`terminate`] to see its exit), killed when
/// dropped so that a failing test leaves no relay behind.
pub struct Serving(Child);

impl std::ops::Deref for Serving {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serving {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Already reaped after `terminate`: kill and wait then fail quietly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A reqwest client builder. The workspace's reqwest has rustls without a built-in crypto provider
/// (pharmacy-client installs ring; see Cargo.toml), so every process installs it before building
/// a client, tests included.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

// ---------------------------------------------------------------------------------------------
// Scale-out and crash tests: more relays on one installation, haproxy in front of them.
// ---------------------------------------------------------------------------------------------

/// A free TCP port on loopback (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something listens on `addr`, at most `limit`.
pub fn wait_listening(addr: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Relay {
    /// Another `relay serve` of the same installation: same binary, database and signing key (its
    /// key directory is a link to this one's), with its own port, work directory and log.
    pub fn replica(&self, name: &str) -> Relay {
        let work = std::env::temp_dir().join(format!("relay-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("work dir");
        std::os::unix::fs::symlink(self.work.join("keys"), work.join("keys")).expect("key link");
        Relay {
            bin: self.bin.clone(),
            database_url: self.database_url.clone(),
            work,
            listen: format!("127.0.0.1:{}", free_port()),
        }
    }

    /// The installation's signing key, loaded (or created) in this process: tests that need
    /// dozens of tokens mint them here rather than starting `relay token` for each.
    pub fn keys(&self) -> relay::auth::KeySet {
        let settings = relay::auth::AuthSettings {
            key_dir: self.work.join("keys"),
            ..Default::default()
        };
        relay::auth::KeySet::load_or_create(&settings)
            .expect("signing key")
            .0
    }
}

/// One hour's token for `staff` with `role` at `facility`, signed with `keys`.
pub fn mint(keys: &relay::auth::KeySet, facility: &str, role: &str, staff: &str) -> String {
    let role: relay::auth::Role = role.parse().expect("role");
    keys.mint(staff, facility, role, Duration::from_secs(3600))
        .expect("mint token")
}

/// haproxy in the foreground (`haproxy -f cfg -db`) balancing over relays: round robin, each
/// server health-checked with `GET /readyz` every 250 ms (down after 2 failures, up after 2
/// successes), a request refused on connect retried on the other server. Killed when dropped.
pub struct Haproxy {
    child: Child,
    /// The balancer's address (`127.0.0.1:port`).
    pub listen: String,
    /// The statistics page's address (`/stats;csv`).
    pub stats: String,
    log: PathBuf,
}

/// One server as the balancer sees it (a row of haproxy's CSV statistics).
#[derive(Debug, Clone)]
pub struct ServerState {
    /// `r1`, `r2`, … in the order the backends were given.
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), `MAINT` …
    pub status: String,
    /// Requests the balancer sent to this server (`stot`: sessions, one per forwarded request
    /// when the client keeps the connection alive).
    pub sessions: u64,
    /// Responses from this server by class.
    pub responses_2xx: u64,
    pub responses_5xx: u64,
}

impl Haproxy {
    /// Writes `work/haproxy.cfg` for `backends` (`host:port`, named `r1`, `r2`, …) and starts
    /// haproxy; returns once it listens.
    pub fn start(work: &Path, backends: &[&str]) -> Haproxy {
        let listen = format!("127.0.0.1:{}", free_port());
        let stats = format!("127.0.0.1:{}", free_port());
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("    server r{} {addr} check\n", i + 1))
            .collect();
        // Short timeouts: a test must not wait on a dead relay. `option redispatch 1`: a retry
        // after a refused connect goes to another server (a stopping relay refuses at once).
        let config = format!(
            "global
    maxconn 4096
    nbthread 2

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout queue 5s
    retries 3
    option redispatch 1

frontend relay
    bind {listen}
    default_backend relays

backend relays
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 250ms fastinter 250ms downinter 250ms fall 2 rise 2
{servers}
listen stats
    bind {stats}
    stats enable
    stats uri /stats
"
        );
        let path = work.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = work.join("haproxy.log");
        let log_file = std::fs::File::create(&log).expect("haproxy log");
        let mut child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("run haproxy (apt-get install haproxy; scripts/test installs it)");
        if !(wait_listening(&listen, Duration::from_secs(10))
            && wait_listening(&stats, Duration::from_secs(10)))
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "haproxy did not listen; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Haproxy {
            child,
            listen,
            stats,
            log,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// What haproxy wrote (health-check state changes among it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The servers of the backend, from the statistics page.
    pub async fn servers(&self) -> Vec<ServerState> {
        let csv = http_client()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
            .get(format!("http://{}/stats;csv", self.stats))
            .send()
            .await
            .expect("haproxy statistics")
            .text()
            .await
            .expect("statistics body");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("no column {name} in haproxy statistics"))
        };
        let (px, sv, st, stot, r2, r5) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("stot"),
            column("hrsp_2xx"),
            column("hrsp_5xx"),
        );
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > r5 && f[px] == "relays" && f[sv].starts_with('r'))
            .map(|f| ServerState {
                name: f[sv].to_string(),
                status: f[st].to_string(),
                sessions: f[stot].parse().unwrap_or(0),
                responses_2xx: f[r2].parse().unwrap_or(0),
                responses_5xx: f[r5].parse().unwrap_or(0),
            })
            .collect()
    }

    /// Polls until `server` has `status` (`UP` or `DOWN`); the time it took, or `None` after
    /// `limit`.
    pub async fn wait_for(&self, server: &str, status: &str, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let servers = self.servers().await;
            if servers
                .iter()
                .any(|s| s.name == server && s.status == status)
            {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Backup and log-privacy tests: the relay's JSON API as a client sees it.
// ---------------------------------------------------------------------------------------------

/// A JSON client of one relay: each call answers (status, body), the body `Null` when not JSON.
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: http_client()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    /// POST with a fresh `Idempotency-Key` unless `key` names one.
    pub async fn post_keyed(
        &self,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            headers,
        )
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let (status, body, _) = self.post_keyed(path, token, None, body).await;
        (status, body)
    }

    /// POST of a body as given (malformed JSON, other content types).
    pub async fn post_raw(&self, path: &str, token: &str, content_type: &str, body: &str) -> u16 {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let (status, bytes) = self.get_bytes(path, token).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn get_bytes(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("body").to_vec())
    }
}

/// Waits (at most 10 s) until the mail worker has tried every queued outbox message — with an
/// unreachable SMTP server they stay queued with their error, as on a live system — then stops
/// the relay with SIGTERM and asserts a clean exit.
pub async fn stop_after_mail_attempts(relay: &Relay, mut server: Serving) {
    let db = relay.connect().await;
    for _ in 0..100 {
        let untried: i64 = db
            .query_one("SELECT count(*) FROM outbox WHERE attempts = 0", &[])
            .await
            .expect("count untried mail")
            .get(0);
        if untried == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("relay exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}
