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
