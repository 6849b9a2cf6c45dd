//! A real SMTP server on loopback for the mail tests: the SMTP conversation is the `mailin` state
//! machine (the core of `mailin-embedded`), driven by tokio here so that the server can start on
//! port 0, stop (closing its port and every open connection) and start again on the same port.
//! Messages are kept as received: envelope plus raw RFC 5322 bytes, decoded for assertions with
//! `mail-parser`.
//!
//! ```ignore
//! let smtp = TestSmtp::start().await;
//! let app = TestApp::spawn_with(|s| s.smtp_url = Some(smtp.smtp_url())).await;
//! // … something that enqueues a mail …
//! let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
//! let m = mails[0].parse();
//! assert_eq!(m.subject, "…");
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};
use relay::config::SmtpUrl;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// One message as the server accepted it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `MAIL FROM`.
    pub envelope_from: String,
    /// `RCPT TO`, in order.
    pub envelope_to: Vec<String>,
    /// The user of `AUTH`, when the client authenticated.
    pub auth_user: Option<String>,
    /// The message exactly as sent after `DATA` (dot-unstuffed).
    pub raw: Vec<u8>,
}

/// A received message decoded: RFC 2047 words, transfer encodings and MIME parts undone.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub subject: String,
    /// The first text/plain part.
    pub body: String,
    /// Without the angle brackets.
    pub message_id: String,
    pub from_name: Option<String>,
    pub from_address: String,
    pub to: Vec<String>,
    pub attachments: Vec<ParsedAttachment>,
    pub auto_submitted: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ParsedAttachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl Received {
    pub fn parse(&self) -> Parsed {
        let m = MessageParser::default()
            .parse(&self.raw)
            .expect("the received message parses");
        let from = m.from().and_then(|a| a.first()).expect("From");
        Parsed {
            subject: m.subject().unwrap_or_default().to_string(),
            body: m.body_text(0).map(|b| b.into_owned()).unwrap_or_default(),
            message_id: m.message_id().unwrap_or_default().to_string(),
            from_name: from.name().map(str::to_string),
            from_address: from.address().unwrap_or_default().to_string(),
            to: m
                .to()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.address().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            attachments: m
                .attachments()
                .map(|p| ParsedAttachment {
                    filename: p.attachment_name().unwrap_or_default().to_string(),
                    content_type: p
                        .content_type()
                        .map(|c| match c.subtype() {
                            Some(sub) => format!("{}/{sub}", c.ctype()),
                            None => c.ctype().to_string(),
                        })
                        .unwrap_or_default(),
                    bytes: p.contents().to_vec(),
                })
                .collect(),
            auto_submitted: m.header_raw("Auto-Submitted").map(|v| v.trim().to_string()),
        }
    }

    /// The raw `Message-ID`, angle brackets included, as the relay wrote it.
    pub fn message_id(&self) -> String {
        format!("<{}>", self.parse().message_id)
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    arrived: Notify,
    /// Waited after each message before the `250` (a slow server).
    delay: Mutex<Duration>,
    /// Messages (by 1-based arrival number) that are stored but never acknowledged: the server
    /// goes silent, as if the network failed after the data was sent.
    stall: Mutex<Vec<usize>>,
    credentials: Option<(String, String)>,
}

pub struct TestSmtp {
    port: u16,
    shared: Arc<Shared>,
    running: Mutex<Option<JoinSet<()>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl TestSmtp {
    /// A server on 127.0.0.1, on a free port.
    pub async fn start() -> TestSmtp {
        Self::start_inner(None).await
    }

    /// A server that requires `AUTH PLAIN`/`LOGIN` with these credentials (over plain text: this
    /// is loopback).
    pub async fn start_with_auth(user: &str, password: &str) -> TestSmtp {
        Self::start_inner(Some((user.to_string(), password.to_string()))).await
    }

    async fn start_inner(credentials: Option<(String, String)>) -> TestSmtp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test SMTP server");
        let port = listener.local_addr().expect("address").port();
        let server = TestSmtp {
            port,
            shared: Arc::new(Shared {
                credentials,
                ..Shared::default()
            }),
            running: Mutex::new(None),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        server.serve(listener);
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// [`Self::url`] as the relay's setting.
    pub fn smtp_url(&self) -> SmtpUrl {
        SmtpUrl::new(self.url())
    }

    /// Closes the port and drops every open connection; what was received is kept.
    pub async fn stop(&self) {
        let accept = self.running.lock().expect("lock").take();
        if let Some(mut accept) = accept {
            accept.shutdown().await;
        }
        let mut connections = std::mem::take(&mut *self.tasks.lock().expect("lock"));
        connections.shutdown().await;
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop().await;
        let mut delay = Duration::from_millis(20);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if delay < Duration::from_secs(2) => {
                    eprintln!("rebinding the test SMTP port {}: {e}", self.port);
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => panic!(
                    "cannot listen on the test SMTP port {} again: {e}",
                    self.port
                ),
            }
        };
        self.serve(listener);
    }

    /// Wait this long before acknowledging each message.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().expect("lock") = delay;
    }

    /// Store the `n`-th message to arrive (1-based, counted over the server's life) but never
    /// acknowledge it.
    pub fn stall_message(&self, n: usize) {
        self.shared.stall.lock().expect("lock").push(n);
    }

    /// Everything received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("lock").len()
    }

    /// Waits until at least `n` messages arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "the test SMTP server received {} message(s) in {timeout:?}, expected {n}",
                    self.count()
                );
            }
        }
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let tasks = self.tasks.clone();
        let mut accept = JoinSet::new();
        accept.spawn(async move {
            let mut builder = SessionBuilder::new("test-smtp.invalid");
            if shared.credentials.is_some() {
                builder
                    .enable_auth(AuthMechanism::Plain)
                    .enable_auth(AuthMechanism::Login)
                    .insecure_enable_plaintext_auth();
            }
            while let Ok((stream, peer)) = listener.accept().await {
                let (shared, builder) = (shared.clone(), builder.clone());
                tasks
                    .lock()
                    .expect("lock")
                    .spawn(connection(stream, peer, builder, shared));
            }
        });
        *self.running.lock().expect("lock") = Some(accept);
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        if let Some(mut accept) = self.running.lock().expect("lock").take() {
            accept.abort_all();
        }
        self.tasks.lock().expect("lock").abort_all();
    }
}

/// The state of one connection's current mail transaction.
struct Conversation {
    shared: Arc<Shared>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    auth_user: Option<String>,
    /// The arrival number of the message the last line completed, for the connection loop.
    completed: Arc<Mutex<Option<usize>>>,
}

impl Handler for Conversation {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_string();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mut received = self.shared.received.lock().expect("lock");
        received.push(Received {
            envelope_from: std::mem::take(&mut self.from),
            envelope_to: std::mem::take(&mut self.to),
            auth_user: self.auth_user.clone(),
            raw: std::mem::take(&mut self.data),
        });
        *self.completed.lock().expect("lock") = Some(received.len());
        drop(received);
        self.shared.arrived.notify_waiters();
        response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.check(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check(user, password)
    }
}

impl Conversation {
    fn check(&mut self, user: &str, password: &str) -> Response {
        match &self.shared.credentials {
            Some((u, p)) if u == user && p == password => {
                self.auth_user = Some(user.to_string());
                response::AUTH_OK
            }
            _ => response::INVALID_CREDENTIALS,
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: SessionBuilder,
    shared: Arc<Shared>,
) {
    let ip: IpAddr = peer.ip();
    let completed = Arc::new(Mutex::new(None));
    let mut session = builder.build(
        ip,
        Conversation {
            shared: shared.clone(),
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
            auth_user: None,
            completed: completed.clone(),
        },
    );
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write
        .write_all(&session.greeting().buffer().expect("greeting"))
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let res = session.process(&line);
        let done = completed.lock().expect("lock").take();
        if let Some(n) = done {
            if shared.stall.lock().expect("lock").contains(&n) {
                // Silent from now on: the client times out (or is killed) without a reply.
                std::future::pending::<()>().await;
            }
            let delay = *shared.delay.lock().expect("lock");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        match res.action {
            Action::NoReply => {}
            Action::Reply => {
                if write
                    .write_all(&res.buffer().expect("response"))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Action::Close | Action::UpgradeTls => {
                let _ = write.write_all(&res.buffer().expect("response")).await;
                return;
            }
        }
    }
}
