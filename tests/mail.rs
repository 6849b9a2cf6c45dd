//! The mail configuration of `relay serve` as a separate process: production refuses to start
//! without SMTP, and `RELAY_SMTP_URL` from the environment is enough to start it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use relay_e2e::{Relay, stderr, terminate};

#[test]
fn production_without_smtp_exits_with_a_clear_error_before_listening() {
    let relay = Relay::new("mail_prod_refused");
    let mut cmd = relay.command(&["serve"]);
    cmd.env("RELAY_ENV", "production")
        .env_remove("RELAY_SMTP_URL");
    let started = Instant::now();
    let out = cmd.output().expect("run relay serve");
    assert!(!out.status.success(), "relay serve started without SMTP");
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = stderr(&out);
    assert!(
        err.contains("RELAY_SMTP_URL is not set") && err.contains("RELAY_ENV=production"),
        "{err}"
    );
    assert!(
        std::net::TcpStream::connect(&relay.listen).is_err(),
        "nothing listens"
    );
}

#[test]
fn production_with_smtp_url_from_the_environment_serves_and_stops_on_sigterm() {
    let relay = Relay::new("mail_prod_smtp");
    // Nothing needs to listen there: the relay talks to SMTP only to deliver.
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = std::fs::File::create(relay.log_path()).expect("log file");
    let mut child = relay
        .command(&["serve"])
        .env("RELAY_ENV", "production")
        .env(
            "RELAY_SMTP_URL",
            format!("smtp://relay:s3cret@127.0.0.1:{smtp_port}"),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn relay serve");
    // Listening starts before the migrations; ready is when /healthz answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !healthy(&relay.listen) {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("relay serve did not become ready; log:\n{}", relay.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = terminate(&mut child, Duration::from_secs(30)).expect("stopped in time");
    assert!(status.success(), "exit {status:?}; log:\n{}", relay.log());
    let log = relay.log();
    assert!(log.contains("mail delivery"), "{log}");
    assert!(!log.contains("s3cret"), "the SMTP password is never logged");
}

fn healthy(listen: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(listen) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut reply))
        .is_ok()
        && reply.starts_with("HTTP/1.1 200")
}
