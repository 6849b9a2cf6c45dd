//! Test harness: each test gets its own database (copied from a migrated, seeded template) on the
//! throwaway PostgreSQL cluster that `scripts/test` starts, and its own relay on port 0.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use relay::auth::{KeySet, Role};
use relay::config::{DatabaseUrl, Settings};
use relay::db::Pool;
use relay::startup::Application;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

pub const CLINIC: &str = "9918000010";
pub const CLINIC_2: &str = "9918000028";
pub const PHARMACY: &str = "9948000014";
pub const PHARMACY_2: &str = "9948000022";

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

fn admin_url() -> String {
    std::env::var("RELAY_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "RELAY_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a \
             throwaway PostgreSQL cluster and sets it"
        )
    })
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("admin URL has a database path");
    format!("{base}/{db}")
}

pub fn shared_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

async fn admin_exec(sql: &str) {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster as its superuser");
    let task = tokio::spawn(conn);
    // CREATE DATABASE … TEMPLATE fails while another session copies the same template.
    let mut delay = Duration::from_millis(50);
    for attempt in 0..40 {
        match client.batch_execute(sql).await {
            Ok(()) => break,
            Err(e) if attempt < 39 && e.to_string().contains("being accessed by other users") => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    drop(client);
    let _ = task.await;
}

/// What the template is made of: when any of it changes, a new template is built.
fn template_name() -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let sql_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql");
    let mut files: Vec<_> = std::fs::read_dir(&sql_dir)
        .expect("sql/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        h.update(std::fs::read(&f).expect("migration readable"));
    }
    h.update(include_str!("../../src/seed.rs"));
    h.update(include_str!("../../src/db/insured.rs"));
    // The demo seed places some dates relative to today.
    h.update(relay::domain::time::today().to_string());
    for f in ["mhlw-yakka-list-20250716.csv", "contraindications-seed.csv"] {
        let len = std::fs::metadata(shared_data_dir().join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        h.update(len.to_le_bytes());
    }
    let digest = h.finalize();
    format!(
        "tpl_{}",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A migrated database holding the demo seed and the real drug master. Test processes (nextest
/// runs one per test) share it: the first builds it under an advisory lock, the rest copy it.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster as its superuser");
            let task = tokio::spawn(conn);
            client
                .execute("SELECT pg_advisory_lock(727001)", &[])
                .await
                .expect("template lock");
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .expect("look up template")
                .is_some();
            if !exists {
                let building = format!("{name}_building");
                admin_exec(&format!("DROP DATABASE IF EXISTS {building}")).await;
                admin_exec(&format!("CREATE DATABASE {building}")).await;
                let settings = Settings::with_database(DatabaseUrl::new(url_for(&building)));
                let pool = relay::db::pool(&settings).expect("pool");
                relay::db::migrate(&pool).await.expect("migrate template");
                relay::seed::demo(&pool, &shared_data_dir())
                    .await
                    .expect("seed template");
                pool.close();
                admin_exec(&format!("ALTER DATABASE {building} RENAME TO {name}")).await;
            }
            client
                .execute("SELECT pg_advisory_unlock(727001)", &[])
                .await
                .expect("template unlock");
            drop(client);
            let _ = task.await;
            name
        })
        .await
}

pub struct TestApp {
    pub address: String,
    pub pool: Pool,
    pub keys: KeySet,
    pub http: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// A relay on a fresh copy of the template, with `adjust` applied to the settings.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        if std::env::var_os("TEST_LOG").is_some() {
            relay::telemetry::init(&Default::default());
        }
        let template = template().await;
        let database = format!("t_{}", uuid::Uuid::now_v7().simple());
        admin_exec(&format!("CREATE DATABASE {database} TEMPLATE {template}")).await;
        let mut settings = Settings::with_database(DatabaseUrl::new(url_for(&database)));
        settings.database.pool_size = 24;
        adjust(&mut settings);
        let keys = KeySet::generate_ephemeral(&settings.auth).expect("ephemeral key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let app = Application::build_with(settings, listener, keys.clone())
            .await
            .expect("application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let pool = app.pool().clone();
        let handle = app.server_handle();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            pool,
            keys,
            http: http_client()
                .redirect(reqwest::redirect::Policy::none())
                // Below the server's keep-alive, so a pooled connection is never one it closed.
                .pool_idle_timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            handle,
        }
    }

    pub fn token(&self, facility: &str, role: Role, staff: &str) -> String {
        self.keys
            .mint(staff, facility, role, Duration::from_secs(3600))
            .expect("mint")
    }

    pub fn doctor(&self) -> String {
        self.token(CLINIC, Role::Doctor, "doctor-1")
    }

    pub fn doctor_2(&self) -> String {
        self.token(CLINIC_2, Role::Doctor, "doctor-2")
    }

    pub fn pharmacist(&self) -> String {
        self.token(PHARMACY, Role::Pharmacist, "pharmacist-1")
    }

    pub fn pharmacist_2(&self) -> String {
        self.token(PHARMACY_2, Role::Pharmacist, "pharmacist-2")
    }

    pub fn admin(&self) -> String {
        self.token(CLINIC, Role::Admin, "admin-1")
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.post_keyed(path, token, None, body).await
    }

    pub async fn post_keyed(
        &self,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: &Value,
    ) -> Resp {
        let mut req = self
            .http
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Resp::from(req.send().await.expect("request sent")).await
    }

    pub async fn post_raw(&self, path: &str, token: &str, content_type: &str, body: &str) -> Resp {
        let req = self
            .http
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(body.to_string());
        Resp::from(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        let req = self
            .http
            .get(format!("{}{path}", self.address))
            .bearer_auth(token);
        Resp::from(req.send().await.expect("request sent")).await
    }

    pub async fn get_anon(&self, path: &str) -> Resp {
        let req = self.http.get(format!("{}{path}", self.address));
        Resp::from(req.send().await.expect("request sent")).await
    }

    /// Registers `body` as doctor-1 and returns the 201 reply.
    pub async fn register(&self, body: &Value) -> Value {
        let r = self.post("/v1/prescriptions", &self.doctor(), body).await;
        assert_eq!(r.status, 201, "registration failed: {}", r.body);
        r.body
    }

    /// Registers `body` as `token` (a doctor), overriding the duplicate/contraindication hits the
    /// check inside registration finds: for tests of something else that register the same
    /// patient's drugs more than once, or fixtures with duplicates inside one prescription. The
    /// path is the real one: 409 with the check, the override, the registration with `check_id`.
    pub async fn register_overriding(&self, token: &str, body: &Value) -> Value {
        let r = self.post("/v1/prescriptions", token, body).await;
        if r.status == 201 {
            return r.body;
        }
        assert_eq!(
            r.body["code"], "UNRESOLVED_CHECK_HITS",
            "registration failed: {}",
            r.text
        );
        let check_id = r.body["check"]["check_id"]
            .as_str()
            .expect("check id")
            .to_string();
        let o = self
            .post(
                &format!("/v1/checks/{check_id}/override"),
                token,
                &json!({"reason": "重複を確認済み（試験）"}),
            )
            .await;
        assert_eq!(o.status, 200, "override failed: {}", o.text);
        let mut body = body.clone();
        body["check_id"] = json!(check_id);
        let r = self.post("/v1/prescriptions", token, &body).await;
        assert_eq!(
            r.status, 201,
            "registration with the override failed: {}",
            r.text
        );
        r.body
    }

    /// Receives as pharmacist-1 by number and identity.
    pub async fn receive(&self, token: &str, exchange_number: &str, insured: &Value) -> Resp {
        self.post(
            "/v1/prescriptions/receive",
            token,
            &json!({"exchange_number": exchange_number, "insured": insured}),
        )
        .await
    }

    /// Runs a statement on this test's database (for setting up states such as expiry).
    pub async fn sql(&self, sql: &str) {
        let client = self.pool.get().await.expect("connection");
        client.batch_execute(sql).await.expect("sql");
    }

    pub async fn sql_one<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        let client = self.pool.get().await.expect("connection");
        client.query_one(sql, &[]).await.expect("sql").get(0)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop accepting; the database is dropped with the throwaway cluster.
        let handle = self.handle.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(handle.stop(false));
            }
        });
    }
}

/// A response with its JSON body read.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    async fn from(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The (field, code) pairs of a validation problem.
    pub fn field_errors(&self) -> Vec<(String, String)> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["field"].as_str().unwrap_or("").to_string(),
                            e["code"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts an `application/problem+json` answer with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.body["code"], code,
            "unexpected code; body: {}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/problem+json")),
            "content type {:?}",
            self.header("content-type")
        );
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
    }
}

/// Today in Japan, as the relay sees it.
pub fn today() -> jiff::civil::Date {
    relay::domain::time::today()
}

/// The test patient of the public test prescription.
pub fn insured() -> Value {
    json!({"insurer_number": "31130842", "symbol": "2022", "number": "010001", "branch": "01"})
}

/// A valid two-RP prescription for the test patient, issued today, with real master codes.
pub fn prescription() -> Value {
    json!({
        "issue_type": "electronic",
        "patient": {"name": "電処　有効五二", "name_kana": "ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ", "sex": "female", "birth_date": "2011-01-01"},
        "insurance": {"insurer_number": "31130842", "symbol": "2022", "number": "010001",
                      "relationship": "dependent", "branch": "01", "copay_rate": 20},
        "issued_on": today().to_string(),
        "rps": [
            {"dosage_form": "oral", "quantity": 14,
             "usage": {"text": "1日1回就寝前", "times_per_day": 1},
             "drugs": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 1, "unit": "錠"}]},
            {"dosage_form": "as_needed", "quantity": 5,
             "usage": {"text": "頭痛時"},
             "drugs": [{"code_system": "generic", "code": "2325003B2ZZZ", "name": "【般】ファモチジン散２％", "dose": 0.5, "unit": "g"}]}
        ]
    })
}

/// A valid pharmacy code that is not among the demo facilities: 99 4 8 NNNN + check digit.
pub fn pharmacy_code(n: u32) -> String {
    let base = format!("99481{n:04}");
    format!(
        "{base}{}",
        relay::domain::check_digit::mod10(&base).expect("digits")
    )
}

/// Registers extra pharmacies directly in the registry.
pub async fn add_pharmacies(app: &TestApp, codes: &[String]) {
    let client = app.pool.get().await.expect("connection");
    for code in codes {
        let facility = relay::domain::facility::Facility {
            code: relay::domain::identifiers::FacilityCode::parse(code).expect("valid code"),
            kind: relay::domain::identifiers::FacilityKind::Pharmacy,
            name: format!("テスト薬局{code}"),
            address: None,
            phone: None,
            email: format!("{code}@test.invalid"),
            fax_email: None,
            accepts_e_prescriptions: true,
            municipality_code: None,
        };
        relay::db::facilities::upsert(&client, &facility)
            .await
            .expect("facility");
    }
}

pub fn role_token(app: &TestApp, facility: &str, role: Role) -> String {
    app.token(facility, role, &format!("{}-staff", role.as_str()))
}

/// A reqwest client builder. The workspace's reqwest has rustls without a built-in crypto provider
/// (pharmacy-client installs ring; see Cargo.toml), so every process installs it before building
/// a client, tests included.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

impl TestApp {
    /// This test's database, reached with the test cluster's superuser credentials (the audit
    /// tests connect as the superuser on purpose; a second relay can serve the same database).
    pub async fn database_url(&self) -> String {
        let name: String = self.sql_one("SELECT current_database()::text").await;
        url_for(&name)
    }
}

/// `prescription()` for another insured person of the same insurer (identity `insured_for`):
/// someone with no history, so registering them never meets a duplicate from another test step.
pub fn prescription_for(number: &str) -> Value {
    let mut p = prescription();
    p["insurance"]["number"] = number.into();
    p
}

/// The insurance identity of `prescription_for(number)`.
pub fn insured_for(number: &str) -> Value {
    let mut i = insured();
    i["number"] = number.into();
    i
}
