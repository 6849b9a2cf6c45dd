//! The relay over HTTP: bearer token, an `Idempotency-Key` on every POST, problem+json errors,
//! and the exit code each failure maps to.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

/// Exit codes scripts can rely on (also in `--help` and README.md).
pub mod exit {
    pub const OK: i32 = 0;
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const CONFLICT: i32 = 4;
    pub const AUTH: i32 = 5;
    pub const UNREACHABLE: i32 = 6;
    /// Not done on the relay: kept in the offline queue (and the clinic mailed directly).
    pub const QUEUED: i32 = 7;
}

/// One field error of a problem.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: String,
}

/// An `application/problem+json` answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after: Option<u64>,
    /// The whole body, for `--json` and the problem-specific members (`holder`, `next_steps`…).
    pub raw: Value,
}

#[derive(Debug)]
pub enum Failure {
    /// Bad command-line input or a local file problem the user can fix (exit 2).
    Usage(String),
    /// No token stored (exit 5).
    NoToken,
    /// The relay answered with a problem.
    Problem(Box<Problem>),
    /// The relay answered an error that is not problem+json (a proxy, say).
    Http {
        status: u16,
        text: String,
    },
    /// No answer: connection refused, DNS, timeout (exit 6).
    Unreachable {
        url: String,
        detail: String,
    },
    /// The user declined at a confirmation (exit 1, nothing sent).
    Declined,
    /// The relay is unreachable and the offline path cannot help either (exit 6, nothing done).
    OfflineNotPossible(String),
    Other(String),
}

fn by_status(status: u16) -> i32 {
    match status {
        400 | 413 | 415 | 422 => exit::USAGE,
        404 => exit::NOT_FOUND,
        409 | 410 => exit::CONFLICT,
        401 | 403 => exit::AUTH,
        502..=504 => exit::UNREACHABLE,
        _ => exit::OTHER,
    }
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::NoToken => exit::AUTH,
            Failure::Problem(p) => by_status(p.status),
            Failure::Http { status, .. } => by_status(*status),
            Failure::Unreachable { .. } | Failure::OfflineNotPossible(_) => exit::UNREACHABLE,
            Failure::Declined | Failure::Other(_) => exit::OTHER,
        }
    }

    /// A stable code for `--json` output of failures that are not the relay's.
    pub fn code(&self) -> &str {
        match self {
            Failure::Usage(_) => "USAGE",
            Failure::NoToken => "NO_TOKEN",
            Failure::Problem(p) => &p.code,
            Failure::Http { .. } => "HTTP_ERROR",
            Failure::Unreachable { .. } => "RELAY_UNREACHABLE",
            Failure::OfflineNotPossible(_) => "OFFLINE_NOT_POSSIBLE",
            Failure::Declined => "DECLINED",
            Failure::Other(_) => "CLIENT_ERROR",
        }
    }
}

impl Failure {
    /// The relay did not answer, or a proxy in front of it said it is down: the cases where the
    /// offline path applies (and where a request may or may not have arrived).
    pub fn relay_down(&self) -> bool {
        match self {
            Failure::Unreachable { .. } => true,
            Failure::Http { status, .. } => (502..=504).contains(status),
            Failure::Problem(p) => (502..=504).contains(&p.status),
            _ => false,
        }
    }
}

/// The answer of a conditional GET.
pub enum Conditional {
    /// 304: what the caller has is current.
    NotModified,
    Fresh {
        body: Value,
        etag: Option<String>,
    },
}

pub struct Api {
    base: String,
    token: Option<String>,
    http: Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Api, Failure> {
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .user_agent(concat!("pharmacy-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Other(format!("HTTP クライアントを作れません: {e}")))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)))
    }

    pub fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query))
    }

    /// A state-changing POST with a fresh `Idempotency-Key`.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.post_keyed(path, body, &uuid::Uuid::now_v7().to_string())
    }

    /// A POST with the caller's `Idempotency-Key`: repeating it with the same key and body gives
    /// the first answer again and changes nothing more.
    pub fn post_keyed(&self, path: &str, body: &Value, key: &str) -> Result<Value, Failure> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("Idempotency-Key", key)
                .json(body),
        )
    }

    /// A GET with `If-None-Match: etag` when there is one.
    pub fn get_conditional(&self, path: &str, etag: Option<&str>) -> Result<Conditional, Failure> {
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if let Some(e) = etag {
            rb = rb.header("If-None-Match", e);
        }
        let resp = self.execute(rb)?;
        if resp.status().as_u16() == 304 {
            return Ok(Conditional::NotModified);
        }
        let etag = resp
            .headers()
            .get("ETag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.interpret(resp)?;
        Ok(Conditional::Fresh { body, etag })
    }

    fn execute(&self, rb: RequestBuilder) -> Result<reqwest::blocking::Response, Failure> {
        let token = self.token.as_deref().ok_or(Failure::NoToken)?;
        rb.bearer_auth(token)
            .header("Accept", "application/json")
            .send()
            .map_err(|e| self.transport(e))
    }

    fn send(&self, rb: RequestBuilder) -> Result<Value, Failure> {
        let resp = self.execute(rb)?;
        self.interpret(resp)
    }

    fn interpret(&self, resp: reqwest::blocking::Response) -> Result<Value, Failure> {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = resp.bytes().map_err(|e| self.transport(e))?;
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Other(format!("リレーの応答を解釈できません (HTTP {status}): {e}"))
            });
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(raw) if raw.get("code").and_then(Value::as_str).is_some() => Err(Failure::Problem(
                Box::new(problem(status, retry_after, raw)),
            )),
            _ => Err(Failure::Http {
                status,
                text: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    fn transport(&self, e: reqwest::Error) -> Failure {
        // Walk the source chain for the underlying reason (e.g. "Connection refused").
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            detail = s.to_string();
            src = s.source();
        }
        if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
            Failure::Unreachable {
                url: self.base.clone(),
                detail,
            }
        } else {
            Failure::Other(format!("通信エラー: {detail}"))
        }
    }
}

fn problem(status: u16, retry_after: Option<u64>, raw: Value) -> Problem {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let errors = raw
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| FieldError {
                    field: text(e, "field"),
                    code: text(e, "code"),
                    message: text(e, "message"),
                })
                .collect()
        })
        .unwrap_or_default();
    Problem {
        status,
        code: text(&raw, "code"),
        detail: text(&raw, "detail"),
        errors,
        retry_after,
        raw,
    }
}
