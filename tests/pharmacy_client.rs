//! The `pharmacy-client` binary against a real relay process and PostgreSQL: login and token
//! storage, receive by typed number, the exclusive hold seen from a second pharmacy, scanning a
//! 控え rendered by the relay (PDF → PNG with pdftoppm), dispense, release, the card path and the
//! fallback ladder, fallback cases, `--json`, and the exit codes (including the relay stopped).
//!
//! The binary is built by `scripts/test` (its build step builds `pharmacy-client` too).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use relay_e2e::*;
use serde_json::{Value, json};

#[path = "pharmacy_client/ladder.rs"]
mod ladder;
#[path = "pharmacy_client/offline.rs"]
mod offline;
/// The real SMTP server on loopback of the relay's own tests.
#[allow(dead_code)]
#[path = "../relay/tests/api/smtp.rs"]
mod smtp;

fn client_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("pharmacy-client");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with scripts/test (it builds pharmacy-client)",
        bin.display()
    );
    bin
}

/// One pharmacy workstation: its own configuration directory.
struct Counter {
    home: PathBuf,
    relay_url: String,
}

impl Counter {
    fn new(relay: &Relay, name: &str) -> Counter {
        let home = relay.work.join(format!("xdg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        Counter {
            home,
            relay_url: relay.base_url(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(client_binary());
        c.args(args)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("HOME", &self.home)
            .env("PHARMACY_RELAY_URL", &self.relay_url)
            .env("PHARMACY_TIMEOUT_SECS", "20")
            .env_remove("PHARMACY_TOKEN")
            .env_remove("PHARMACY_TOKEN_FILE")
            .env_remove("PHARMACY_CLIENT_CONFIG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run pharmacy-client")
    }

    fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pharmacy-client");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn token_path(&self) -> PathBuf {
        self.home.join("pharmacy-client/token")
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

async fn post(base: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = http_client()
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The doctor registers a prescription for the patient with insured number `number`; 201 or panic.
async fn register(
    base: &str,
    doctor: &str,
    number: &str,
    birth: &str,
    drug: (&str, &str, f64, &str),
) -> Value {
    let (status, body) = post(
        base,
        "/v1/prescriptions",
        doctor,
        &prescription(number, birth, drug),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn prescription(number: &str, birth: &str, drug: (&str, &str, f64, &str)) -> Value {
    json!({
        "issue_type": "electronic",
        "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": birth},
        "insurance": {"insurer_number": "01130012", "symbol": "1234", "number": number,
                      "relationship": "insured", "branch": "01", "copay_rate": 30},
        "issued_on": relay::domain::time::today().to_string(),
        "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日3回毎食後", "times_per_day": 3},
                 "drugs": [{"code_system": "yj", "code": drug.0, "name": drug.1, "dose": drug.2, "unit": drug.3}]}]
    })
}

fn json_list_len(o: &Output, key: &str) -> usize {
    let v: Value =
        serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("JSON: {e}\n{}", show(o)));
    v[key].as_array().map_or(0, Vec::len)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn pharmacy_client_counter_workflow() {
    let relay = Relay::new("pharmacyclient");
    relay.migrate_and_seed();
    let token = |facility: &str, role: &str, staff: &str| relay.token(facility, role, staff);
    let doctor = token("9918000010", "doctor", "doctor-1");
    let pharmacist_1 = token("9948000014", "pharmacist", "pharmacist-1");
    let pharmacist_2 = token("9948000022", "pharmacist", "pharmacist-2");

    let mut server = relay.serve();
    let base = relay.base_url();
    let one = Counter::new(&relay, "one");
    let two = Counter::new(&relay, "two");
    let nobody = Counter::new(&relay, "nobody");

    // Login: --token at one counter, stdin at the other. The token is readable by the user only.
    let out = one.run(&["login", "--token", &pharmacist_1]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("9948000014"), "{}", show(&out));
    assert_eq!(mode(&one.token_path()), 0o600);
    assert_eq!(mode(one.token_path().parent().unwrap()), 0o700);
    let out = two.run_with_stdin(&["login"], &format!("{pharmacist_2}\n"));
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(mode(&two.token_path()), 0o600);
    let out = one.run(&["whoami"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("pharmacist-1") && stdout(&out).contains("薬剤師"),
        "{}",
        show(&out)
    );
    let out = one.run(&["login", "--token", "not-a-jwt"]);
    assert_eq!(code(&out), 2, "{}", show(&out));

    // Not logged in: exit 5 with what to do.
    let out = nobody.run(&["show", "0190a6c4-0000-7000-8000-000000000000"]);
    assert_eq!(code(&out), 5, "{}", show(&out));
    assert!(stderr(&out).contains("login"), "{}", show(&out));

    // The clinic registers two prescriptions for two patients.
    let a = register(
        &base,
        &doctor,
        "7391846",
        "1975-07-07",
        ("2325003B2029", "ガスター散２％", 0.4, "g"),
    )
    .await;
    let b = register(
        &base,
        &doctor,
        "2468",
        "1980-04-01",
        ("1124001F1022", "ユーロジン１ｍｇ錠", 1.0, "錠"),
    )
    .await;
    let a_id = a["prescription_id"].as_str().unwrap().to_string();
    let a_number = a["exchange_number"].as_str().unwrap().to_string();
    let b_id = b["prescription_id"].as_str().unwrap().to_string();
    let b_number = b["exchange_number"].as_str().unwrap().to_string();

    // 事前送付: the clinic forwards `a` to pharmacy one, which lists it and prepares.
    let out = one.run(&["incoming"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("ありません"), "{}", show(&out));
    let (status, sent) = post(
        &base,
        &format!("/v1/prescriptions/{a_id}/presend"),
        &doctor,
        &json!({"pharmacy": "9948000014"}),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let out = one.run(&["incoming"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&a_number)
            && text.contains("髙橋 𠮷子")
            && text.contains("ガスター散２％")
            && text.contains("未準備")
            && text.contains("検証用病院"),
        "{}",
        show(&out)
    );
    assert!(
        !text.contains("7391846"),
        "no insurance number in the presend list"
    );
    let out = two.run(&["--json", "incoming"]);
    assert_eq!(json_list_len(&out, "presends"), 0, "{}", show(&out));
    let out = one.run(&["--json", "incoming"]);
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let presend_id = listed["presends"][0]["id"].as_str().unwrap().to_string();
    let out = one.run(&["incoming", "prepare", &presend_id]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("準備済み"), "{}", show(&out));
    let out = one.run(&["--json", "incoming", "--status", "prepared"]);
    assert_eq!(json_list_len(&out, "presends"), 1, "{}", show(&out));
    let out = one.run(&["--json", "incoming", "--status", "sent"]);
    assert_eq!(json_list_len(&out, "presends"), 0, "{}", show(&out));
    let out = one.run(&["incoming", "prepare", "not-an-id"]);
    assert_ne!(code(&out), 0, "{}", show(&out));

    // A missing field with nothing on stdin: a usage error naming the flag, nothing sent.
    let out = one.run(&["receive", "--number", &a_number]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(stderr(&out).contains("--insurer"), "{}", show(&out));

    // Receive by typed number (hyphenated, as read out): exit 0, Japanese output.
    let typed = format!("{}-{}", &a_number[..3], &a_number[3..]);
    let identity = [
        "--insurer",
        "01130012",
        "--symbol",
        "1234",
        "--insured-number",
        "7391846",
        "--branch",
        "01",
    ];
    let mut args = vec!["receive", "--number", typed.as_str()];
    args.extend(identity);
    let out = one.run(&args);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    for want in [
        "受付しました",
        "髙橋 𠮷子",
        "調剤中",
        "ガスター散２％",
        "7日分",
        &a_id,
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }

    // The second pharmacy is told who holds it: exit 4.
    let mut args = vec!["receive", "--number", a_number.as_str()];
    args.extend(identity);
    let out = two.run(&args);
    assert_eq!(code(&out), 4, "{}", show(&out));
    assert!(
        stderr(&out).contains("エラー HELD_BY_ANOTHER_PHARMACY")
            && stderr(&out).contains("検証用薬局"),
        "{}",
        show(&out)
    );
    // A wrong identity is a 404: exit 3. A malformed insurer number: exit 2 with the field.
    let mut args = vec!["receive", "--number", a_number.as_str()];
    args.extend(["--insurer", "01130012", "--symbol", "1234"]);
    args.extend(["--insured-number", "1111111", "--branch", "01"]);
    let out = two.run(&args);
    assert_eq!(code(&out), 3, "{}", show(&out));
    assert!(
        stderr(&out).contains("PRESCRIPTION_NOT_FOUND"),
        "{}",
        show(&out)
    );
    let mut args = vec!["receive", "--number", a_number.as_str()];
    args.extend(["--insurer", "01130013", "--symbol", "1234"]);
    args.extend(["--insured-number", "7391846", "--branch", "01"]);
    let out = two.run(&args);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("insured.insurer_number:"),
        "field errors are listed:\n{}",
        show(&out)
    );

    // Scan the 控え of B: the relay's PDF rendered at 200 dpi.
    let pdf = http_client()
        .build()
        .expect("client")
        .get(format!("{base}/v1/prescriptions/{b_id}/copy.pdf"))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.status().as_u16(), 200);
    let pdf_path = relay.work.join("hikae.pdf");
    std::fs::write(&pdf_path, pdf.bytes().await.unwrap()).unwrap();
    let png_base = relay.work.join("hikae");
    let out = Command::new("pdftoppm")
        .args(["-r", "200", "-png", "-singlefile"])
        .arg(&pdf_path)
        .arg(&png_base)
        .output()
        .expect("run pdftoppm (poppler-utils)");
    assert!(out.status.success(), "pdftoppm: {}", stderr(&out));
    let png = relay.work.join("hikae.png");
    let png_arg = png.to_str().unwrap();
    let out = one.run(&["scan", png_arg, "--yes"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stderr(&out).contains(&b_number),
        "what was read is shown:\n{}",
        show(&out)
    );
    assert!(
        stdout(&out).contains("受付しました") && stdout(&out).contains("ユーロジン"),
        "{}",
        show(&out)
    );
    // Without --yes and nobody to answer: nothing is sent (B stays held by one, unchanged).
    let out = two.run(&["scan", png_arg]);
    assert_eq!(code(&out), 2, "{}", show(&out));

    // Dispense A from a file (dispensed_on defaults to today).
    let result = relay.work.join("result.json");
    std::fs::write(
        &result,
        json!({"items": [{"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％",
                          "dose": 0.4, "unit": "g", "days": 7}],
               "important_note": "眠気の訴えあり"})
        .to_string(),
    )
    .unwrap();
    let out = one.run(&["dispense", &a_id, "--file", result.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("調剤結果を登録しました"),
        "{}",
        show(&out)
    );
    // Dispensing again conflicts: exit 4.
    let out = one.run(&["dispense", &a_id, "--file", result.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "{}", show(&out));

    // --json prints the relay's JSON.
    let out = one.run(&["--json", "show", &a_id]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let view: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(view["status"], "dispensed");
    assert_eq!(view["has_important_note"], true);

    // Release B; the second pharmacy then asks the clinic for FAX by number + identity.
    let out = one.run(&["release", &b_id, "--reason", "患者都合で他薬局へ"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("受付取消しました"), "{}", show(&out));
    let out = two.run(&[
        "fallback",
        "request",
        "--number",
        &b_number,
        "--insurer",
        "01130012",
        "--symbol",
        "1234",
        "--insured-number",
        "2468",
        "--branch",
        "01",
        "--reason",
        "薬局システム障害",
        "--preferred",
        "fax",
    ]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(stdout(&out).contains("依頼中"), "{}", show(&out));
    let out = two.run(&["--json", "fallback", "list", "--status", "requested"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(list["fallbacks"].as_array().unwrap().len(), 1, "{list}");
    let out = two.run(&["fallback", "list"]);
    assert!(stdout(&out).contains(&b_number), "{}", show(&out));

    // Eligibility: the card path, then the ladder's rule that a notice needs the card.
    let out = one.run(&[
        "--json",
        "eligibility",
        "card",
        "--card-id",
        "CARD-0002",
        "--auth",
        "face",
        "--consent-medication",
    ]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let q: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let qid = q["qualification_id"].as_str().unwrap().to_string();
    let out = one.run(&["outstanding", &qid]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    // The patient asks who looked at their prescriptions: the list just shown is in it, and this
    // look too, in Japan time with the facility's name.
    let out = one.run(&["access-log", &qid]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("閲覧記録"), "{}", show(&out));
    assert!(
        text.contains("この閲覧記録を表示しました"),
        "{}",
        show(&out)
    );
    assert!(text.contains("資格確認をしました"), "{}", show(&out));
    assert!(text.contains("検証用薬局 (9948000014)"), "{}", show(&out));
    let out = one.run(&["--json", "access-log", &qid]);
    let log: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(log["entries"][0]["action"], "access_log_viewed", "{log}");
    let out = one.run(&[
        "eligibility",
        "fallback",
        "--method",
        "eligibility_notice",
        "--insurer",
        "01130012",
        "--symbol",
        "1234",
        "--insured-number",
        "5678",
        "--branch",
        "01",
        "--birth-date",
        "1975-07-07",
    ]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("NOTICE_REQUIRES_CARD"),
        "{}",
        show(&out)
    );

    // The relay stopped: exit 6 and the way out.
    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("relay exits after SIGTERM");
    assert!(exit.success());
    let out = one.run(&["show", &a_id]);
    assert_eq!(code(&out), 6, "{}", show(&out));
    assert!(
        stderr(&out).contains("接続できません") && stderr(&out).contains("fallback request"),
        "{}",
        show(&out)
    );

    // Logout removes the token.
    let out = one.run(&["logout"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(!one.token_path().exists());
}
