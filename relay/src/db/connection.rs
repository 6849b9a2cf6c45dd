//! How the pool reaches PostgreSQL, so that no request waits on the database without a bound.
//!
//! tokio-postgres bounds the TCP connect (`connect_timeout`) and deadpool bounds the whole
//! connection start-up (`create_timeout`); the server bounds each statement (`statement_timeout`).
//! What none of them bounds is a connection that is *established and silent*: a network path
//! that drops packets, or a proxy (pgbouncer, a cloud SQL proxy, a load balancer) that accepts
//! bytes and never forwards them. TCP keepalive and `TCP_USER_TIMEOUT` catch the first on the
//! relay's own socket; nothing at the TCP level catches the second, because the proxy's kernel
//! acknowledges everything. So this module opens the sockets itself (same host, port and
//! `hostaddr` rules as tokio-postgres) and wraps each in a [`Watched`] stream that follows the
//! protocol's message framing: while a `Sync`/`Query` is unanswered by its `ReadyForQuery` and
//! the server has sent nothing for `response_timeout`, it dials the same address afresh and sends
//! an `SSLRequest`, which any live postmaster answers with one byte before authentication. No
//! answer within the probe timeout: the connection fails with an I/O error, so the request gets
//! `DbError::Unavailable` (503), and [`Health`] remembers the loss so the pool discards every
//! older idle connection at checkout instead of handing them out one by one. An answer: the
//! server is alive and merely busy (a long migration statement), and the watch goes on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use deadpool_postgres::Connect;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::{Client, Config, NoTls};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// When a connection of this pool last turned out dead (a silent path, see the module docs).
#[derive(Debug, Default)]
pub struct Health {
    lost_at: Mutex<Option<Instant>>,
}

impl Health {
    fn lost(&self) {
        if let Ok(mut at) = self.lost_at.lock() {
            *at = Some(Instant::now());
        }
    }

    /// A connection created before the last loss probably shares its fate: do not hand it out.
    pub fn predates_loss(&self, created: Instant) -> bool {
        self.lost_at
            .lock()
            .map(|at| at.is_some_and(|lost| created <= lost))
            .unwrap_or(false)
    }
}

/// The pool's [`Connect`]: TCP or Unix socket, keepalive, then the PostgreSQL start-up over a
/// [`Watched`] stream.
pub struct Connector {
    /// Silence allowed while an answer is owed before the server is probed; `None`: no watch.
    pub response_timeout: Option<Duration>,
    /// How long a probe (connect + one byte back) may take.
    pub probe_timeout: Duration,
    pub health: Arc<Health>,
}

const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Where one connection attempt goes.
#[derive(Debug, Clone)]
enum Peer {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(PathBuf),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            #[cfg(unix)]
            Peer::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Connect for Connector {
    fn connect(
        &self,
        pg: &Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let pg = pg.clone();
        Box::pin(async move { self.open(&pg).await })
    }
}

impl Connector {
    /// Every address of every host in order (shuffled with `load_balance_hosts=random`); the
    /// first that connects, starts up and (with `target_session_attrs`) suits, wins.
    async fn open(&self, pg: &Config) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut last_pg_error = None;
        let mut last_io_error = None;
        let peers = match peers(pg).await {
            Ok(p) => p,
            Err(e) => return Err(io_error(pg, e).await),
        };
        for peer in peers {
            let socket = match dial(&peer, pg.get_connect_timeout().copied()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "database connect failed");
                    last_io_error = Some(e);
                    continue;
                }
            };
            if let Err(e) = tune(&socket, pg) {
                last_io_error = Some(e);
                continue;
            }
            let stream = Watched::new(socket, peer.clone(), self);
            let (client, connection) = match pg.connect_raw(stream, NoTls).await {
                Ok(c) => c,
                Err(e) => {
                    last_pg_error = Some(e);
                    continue;
                }
            };
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "database connection closed");
                }
            });
            if let Err(e) = session_suits(&client, pg.get_target_session_attrs()).await {
                task.abort();
                last_pg_error = Some(e);
                continue;
            }
            return Ok((client, task));
        }
        match (last_pg_error, last_io_error) {
            (Some(e), _) => Err(e),
            (None, Some(e)) => Err(io_error(pg, e).await),
            (None, None) => Err(io_error(
                pg,
                io::Error::new(io::ErrorKind::InvalidInput, "no database host configured"),
            )
            .await),
        }
    }
}

/// The addresses to try, as tokio-postgres would: `hostaddr` before `host`, one port for all
/// hosts or one each, 5432 by default.
async fn peers(pg: &Config) -> io::Result<Vec<Peer>> {
    let hosts = pg.get_hosts();
    let addrs = pg.get_hostaddrs();
    let ports = pg.get_ports();
    let n = hosts.len().max(addrs.len());
    let random = pg.get_load_balance_hosts() == LoadBalanceHosts::Random;
    let mut order: Vec<usize> = (0..n).collect();
    if random {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rng());
    }
    let mut peers = Vec::new();
    let mut lookup_error = None;
    for i in order {
        let port = ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432);
        if let Some(ip) = addrs.get(i) {
            peers.push(Peer::Tcp(SocketAddr::new(*ip, port)));
            continue;
        }
        match hosts.get(i) {
            Some(Host::Tcp(name)) => match tokio::net::lookup_host((name.as_str(), port)).await {
                Ok(found) => {
                    let mut found: Vec<SocketAddr> = found.collect();
                    if random {
                        use rand::seq::SliceRandom;
                        found.shuffle(&mut rand::rng());
                    }
                    peers.extend(found.into_iter().map(Peer::Tcp));
                }
                Err(e) => lookup_error = Some(e),
            },
            #[cfg(unix)]
            Some(Host::Unix(dir)) => peers.push(Peer::Unix(dir.join(format!(".s.PGSQL.{port}")))),
            None => {}
        }
    }
    match (peers.is_empty(), lookup_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(peers),
    }
}

async fn dial(peer: &Peer, timeout: Option<Duration>) -> io::Result<Socket> {
    let connect = async {
        Ok(match peer {
            Peer::Tcp(addr) => Socket::Tcp(TcpStream::connect(addr).await?),
            #[cfg(unix)]
            Peer::Unix(path) => Socket::Unix(UnixStream::connect(path).await?),
        })
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, connect).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection to {peer} within {t:?}"),
            ))
        }),
        None => connect.await,
    }
}

/// TCP_NODELAY, keepalive (30 s idle, then every 10 s, 3 tries, unless the URL says otherwise)
/// and `TCP_USER_TIMEOUT` (15 s unless the URL says otherwise): the kernel then drops a
/// connection whose peer stopped acknowledging, idle or not.
fn tune(socket: &Socket, pg: &Config) -> io::Result<()> {
    let Socket::Tcp(tcp) = socket else {
        return Ok(());
    };
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    if pg.get_keepalives() {
        let idle = match pg.get_keepalives_idle() {
            DEFAULT_KEEPALIVE_IDLE => KEEPALIVE_IDLE,
            set => set,
        };
        #[allow(unused_mut)]
        let mut keepalive = socket2::TcpKeepalive::new().with_time(idle);
        #[cfg(target_os = "linux")]
        {
            keepalive = keepalive
                .with_interval(pg.get_keepalives_interval().unwrap_or(KEEPALIVE_INTERVAL))
                .with_retries(pg.get_keepalives_retries().unwrap_or(KEEPALIVE_RETRIES));
        }
        sock.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(target_os = "linux")]
    sock.set_tcp_user_timeout(Some(
        pg.get_tcp_user_timeout()
            .copied()
            .unwrap_or(TCP_USER_TIMEOUT),
    ))?;
    Ok(())
}

/// `target_session_attrs=read-write|read-only`, checked as tokio-postgres does.
async fn session_suits(
    client: &Client,
    wanted: TargetSessionAttrs,
) -> Result<(), tokio_postgres::Error> {
    if wanted == TargetSessionAttrs::Any {
        return Ok(());
    }
    let rows = client.simple_query("SHOW transaction_read_only").await?;
    let read_only = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "on"),
        _ => None,
    });
    let suits = match wanted {
        TargetSessionAttrs::ReadWrite => read_only == Some(false),
        TargetSessionAttrs::ReadOnly => read_only == Some(true),
        _ => true,
    };
    if suits {
        Ok(())
    } else {
        Err(io_error(
            &Config::new(),
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the server does not match target_session_attrs={wanted:?}"),
            ),
        )
        .await)
    }
}

/// A `tokio_postgres::Error` carrying `e` as its source (the crate has no public constructor):
/// the start-up over a stream that fails at once with `e`. The source being an `io::Error` is
/// what makes `DbError` call it `Unavailable`.
async fn io_error(pg: &Config, e: io::Error) -> tokio_postgres::Error {
    match pg.connect_raw(Failing(Some(e)), NoTls).await {
        Err(err) => err,
        Ok(_) => tokio_postgres::Error::__private_api_timeout(),
    }
}

struct Failing(Option<io::Error>);

impl Failing {
    fn error(&mut self) -> io::Error {
        self.0
            .take()
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))
    }
}

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.get_mut().error()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A TCP or Unix-domain socket.
enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Follows the message framing of one direction of the protocol: a type byte and a 4-byte
/// length that counts itself (the frontend's first message, the start-up packet, has no type).
struct Framing {
    untyped_next: bool,
    header: [u8; 5],
    have: usize,
    skip: usize,
    /// A length below 4: not the protocol we know. The watch stops rather than guess.
    lost: bool,
}

impl Framing {
    fn new(untyped_first: bool) -> Self {
        Self {
            untyped_next: untyped_first,
            header: [0; 5],
            have: 0,
            skip: 0,
            lost: false,
        }
    }

    /// Feeds bytes that went by; calls `seen` with the type of each message as it starts.
    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(u8)) {
        while !bytes.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = if self.untyped_next { 4 } else { 5 };
            let n = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < need {
                continue;
            }
            let len_at = need - 4;
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.header[len_at..need]);
            let len = u32::from_be_bytes(len) as usize;
            if len < 4 {
                self.lost = true;
                return;
            }
            self.skip = len - 4;
            self.have = 0;
            if self.untyped_next {
                self.untyped_next = false;
            } else {
                seen(self.header[0]);
            }
        }
    }
}

/// A database socket that fails when the server stays silent while it owes an answer and a
/// fresh connection to the same address is not answered either (see the module docs).
struct Watched {
    io: Socket,
    peer: Arc<Peer>,
    limit: Option<Duration>,
    probe_timeout: Duration,
    health: Arc<Health>,
    sent: Framing,
    received: Framing,
    /// `Sync`, `Query` and `FunctionCall` messages sent minus `ReadyForQuery` messages received.
    owed: u32,
    timer: Pin<Box<Sleep>>,
    probe: Option<BoxFuture<'static, bool>>,
    probes: u32,
    silent_since: Instant,
}

impl Watched {
    fn new(io: Socket, peer: Peer, c: &Connector) -> Self {
        Self {
            io,
            peer: Arc::new(peer),
            limit: c.response_timeout,
            probe_timeout: c.probe_timeout,
            health: c.health.clone(),
            sent: Framing::new(true),
            received: Framing::new(false),
            owed: 0,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            probe: None,
            probes: 0,
            silent_since: Instant::now(),
        }
    }

    fn watching(&self) -> Option<Duration> {
        self.limit
            .filter(|_| self.owed > 0 && !self.sent.lost && !self.received.lost)
    }

    /// The server made progress (or a new question was asked): the silence starts again.
    fn progress(&mut self, cx: &mut Context<'_>) {
        self.probe = None;
        self.probes = 0;
        self.silent_since = Instant::now();
        if let Some(limit) = self.watching() {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + limit);
            // Registers the wake-up: the connection task may poll nothing else until then.
            let _ = self.timer.as_mut().poll(cx);
        }
    }

    /// Nothing to read now: `Some(error)` when the answer is overdue and the server is gone.
    fn overdue(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let limit = self.watching()?;
        loop {
            if let Some(probe) = self.probe.as_mut() {
                match probe.as_mut().poll(cx) {
                    Poll::Pending => return None,
                    Poll::Ready(true) => {
                        // Alive and busy (a long statement): keep waiting.
                        self.probe = None;
                        self.probes += 1;
                        self.timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + limit);
                    }
                    Poll::Ready(false) => {
                        self.probe = None;
                        self.health.lost();
                        let silent = self.silent_since.elapsed();
                        tracing::warn!(
                            peer = %self.peer,
                            silent_ms = silent.as_millis() as u64,
                            "the database owes an answer, has sent nothing, and does not answer a \
                             new connection either: closing this connection"
                        );
                        return Some(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no answer from the database at {} for {silent:?}, and no answer \
                                 to a probe within {:?}",
                                self.peer, self.probe_timeout
                            ),
                        ));
                    }
                }
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return None,
                Poll::Ready(()) => {
                    tracing::debug!(peer = %self.peer, probes = self.probes, "database silent: probing");
                    self.probe = Some(Box::pin(probe(self.peer.clone(), self.probe_timeout)));
                }
            }
        }
    }
}

/// Does the server at `peer` answer an `SSLRequest` (one byte, `S` or `N`, before any
/// authentication) within `limit`?
async fn probe(peer: Arc<Peer>, limit: Duration) -> bool {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let ask = async {
        let mut s = dial(&peer, None).await?;
        s.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await?;
        io::Result::Ok(())
    };
    matches!(tokio::time::timeout(limit, ask).await, Ok(Ok(())))
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    let owed = &mut this.owed;
                    this.received.feed(new, |kind| {
                        if kind == b'Z' {
                            *owed = owed.saturating_sub(1);
                        }
                    });
                    this.progress(cx);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.overdue(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            let owed = &mut this.owed;
            this.sent.feed(&buf[..n], |kind| {
                if matches!(kind, b'S' | b'Q' | b'F') {
                    *owed += 1;
                }
            });
            this.progress(cx);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_counts_messages_across_any_split() {
        // Start-up packet (untyped, 8 bytes), then Parse (P, len 6), Sync (S, len 4), Query (Q,
        // len 9 with "SELECT" … truncated bodies are fine for the framing).
        let mut stream = vec![0, 0, 0, 8, 0, 3, 0, 0];
        stream.extend([b'P', 0, 0, 0, 6, 1, 2]);
        stream.extend([b'S', 0, 0, 0, 4]);
        stream.extend([b'Q', 0, 0, 0, 9, b'S', b'E', b'L', b'E', b'\0']);
        for chunk in 1..=stream.len() {
            let mut f = Framing::new(true);
            let mut kinds = Vec::new();
            for part in stream.chunks(chunk) {
                f.feed(part, |k| kinds.push(k));
            }
            assert_eq!(kinds, vec![b'P', b'S', b'Q'], "chunks of {chunk}");
            assert!(!f.lost);
        }
    }

    #[test]
    fn framing_gives_up_on_a_nonsense_length() {
        let mut f = Framing::new(false);
        let mut kinds = Vec::new();
        f.feed(&[b'Z', 0, 0, 0, 1, b'Z', 0, 0, 0, 5, b'I'], |k| {
            kinds.push(k)
        });
        assert!(f.lost);
        assert!(kinds.is_empty());
    }

    #[test]
    fn health_discards_connections_older_than_the_last_loss() {
        let h = Health::default();
        let old = Instant::now();
        assert!(!h.predates_loss(old));
        std::thread::sleep(Duration::from_millis(2));
        h.lost();
        std::thread::sleep(Duration::from_millis(2));
        assert!(h.predates_loss(old));
        assert!(!h.predates_loss(Instant::now()));
    }
}
