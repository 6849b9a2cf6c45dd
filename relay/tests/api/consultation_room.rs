//! The consultation-room screen (診察室画面) in a real headless Chromium, driven through
//! chromedriver: a duplicate from another institution shown masked, revealed after the patient's
//! verbal consent (drug only, never the other institution), then registered with the doctor's
//! reason. Screenshots go to `target/test-artifacts/consultation-room/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long an element may take to appear.
const WAIT: Duration = Duration::from_secs(10);
/// What the page must never show: the other institution of the history.
const OTHER_SIDE: [&str; 2] = ["検証用病院", CLINIC];

#[tokio::test]
async fn consultation_room_page_is_self_contained_with_strict_headers() {
    let app = TestApp::spawn().await;
    let r = app.get_anon("/consultation-room").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let csp = r.header("content-security-policy").expect("CSP");
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(r.text.contains("<html lang=\"ja\">") && r.text.contains("重複・禁忌チェック"));
    for external in ["http://", "https://"] {
        assert!(
            !r.text.contains(external),
            "the page loads nothing from elsewhere"
        );
    }
}

#[tokio::test]
async fn consultation_room_masks_reveals_on_verbal_consent_and_registers_with_a_reason() {
    let app = TestApp::spawn().await;
    // The history: ユーロジン (エスタゾラム, 内服 14 days) prescribed today at 検証用病院.
    app.register(&prescription()).await;
    // Clinic 2 prescribes the same for the same patient: a duplicate from another institution.
    let draft = prescription().to_string();
    let shots = artifacts_dir();
    let browser = Browser::start(&shots, "chromedriver-consent.log").await;
    let c = &browser.client;
    let page = format!("{}/consultation-room", app.address);

    // 1. The token from the fragment, which leaves the address bar at once.
    c.goto(&format!("{page}#token={}", app.doctor_2()))
        .await
        .expect("open the page");
    let who = visible(c, "[data-testid=who]").await;
    assert!(
        text(&who).await.contains("doctor-2"),
        "{}",
        text(&who).await
    );
    assert!(
        !c.current_url()
            .await
            .expect("url")
            .as_str()
            .contains("token"),
        "the token stays out of the address bar"
    );
    let styled: Value = c
        .execute(
            "return getComputedStyle(document.querySelector('.bar')).position",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        styled, "sticky",
        "the inline style is allowed by the CSP hash"
    );

    // 2. The draft pasted from the clinic's system fills the form.
    paste_draft(c, &draft).await;
    assert_eq!(
        value(c, "[data-testid=patient-name]").await,
        "電処　有効五二"
    );

    // 3. The check: one duplicate for ユーロジン, its other side masked.
    click(c, "[data-testid=check]").await;
    let first_check = text(&visible(c, "[data-testid=check-id]").await).await;
    let card = hit_card(c, "ユーロジン１ｍｇ錠").await;
    assert_eq!(
        card.attr("data-kind").await.expect("attr").as_deref(),
        Some("duplicate")
    );
    assert_eq!(
        text(&inside(&card, "[data-testid=hit-kind]").await).await,
        "重複投薬"
    );
    assert_eq!(
        text(&inside(&card, "[data-testid=hit-ingredient]").await).await,
        "エスタゾラム"
    );
    let other = inside(&card, "[data-testid=hit-other]").await;
    assert_eq!(
        text(&other).await,
        "詳細は患者の同意がないため表示できません"
    );
    assert_eq!(
        other.attr("data-revealed").await.expect("attr").as_deref(),
        Some("false")
    );
    let others = c
        .find_all(Locator::Css("[data-testid=hit-other]"))
        .await
        .expect("find");
    for o in &others {
        assert!(
            !text(o).await.contains("エスタゾラム"),
            "no causing drug before consent"
        );
    }
    let body = page_text(c).await;
    assert!(body.contains("同意がないため表示できません"), "{body}");
    never_the_other_side(c).await;
    let count = c
        .find_all(Locator::Css("[data-testid=hit]"))
        .await
        .expect("hits")
        .len();
    println!("first check {first_check}: {count} hit card(s)");
    screenshot(c, &shots, "01-hits-masked.png").await;

    // 4. 「処方を修正」 goes back to the draft, still filled; checking again gives a new check.
    click(c, "[data-testid=edit]").await;
    visible(c, "[data-testid=draft]").await;
    assert_eq!(
        value(c, "[data-testid=patient-name]").await,
        "電処　有効五二"
    );
    assert_eq!(
        value(c, "[data-testid=drug] [data-f=code]").await,
        "1124001F1022"
    );
    assert!(
        !displayed(c, "[data-testid=result]").await,
        "portrait: the draft replaces the result"
    );
    screenshot(c, &shots, "01b-draft-kept.png").await;
    click(c, "[data-testid=check]").await;
    let second_check = wait_until(c, "a new check", async || {
        let id = text(&visible(c, "[data-testid=check-id]").await).await;
        (id != first_check).then_some(id)
    })
    .await;

    // 5. 「患者が口頭で同意」 → the in-page confirmation → the causing drug, never its institution.
    click(c, "[data-testid=verbal-consent]").await;
    visible(c, "[data-testid=consent-dialog]").await;
    screenshot(c, &shots, "02a-consent-dialog.png").await;
    click(c, "[data-testid=consent-confirm]").await;
    visible(c, "[data-testid=consents]").await;
    let card = hit_card(c, "ユーロジン１ｍｇ錠").await;
    let other = inside(&card, "[data-testid=hit-other][data-revealed=true]").await;
    assert_eq!(
        text(&inside(&other, "[data-testid=other-drug-name]").await).await,
        "ユーロジン１ｍｇ錠"
    );
    assert_eq!(
        text(&inside(&other, "[data-testid=other-days]").await).await,
        "14日"
    );
    let started = inside(&other, "[data-testid=other-started-on]").await;
    let t = today();
    assert_eq!(
        started.attr("data-date").await.expect("attr"),
        Some(t.to_string())
    );
    assert_eq!(
        text(&started).await,
        format!("{}年{}月{}日（本日）", t.year(), t.month(), t.day())
    );
    assert_eq!(
        text(&inside(&other, "[data-testid=other-status]").await).await,
        "処方のみ"
    );
    let consent = text(&visible(c, "[data-testid=consent]").await).await;
    assert!(
        consent.contains("記録者 doctor-2") && consent.contains("有効期限"),
        "{consent}"
    );
    never_the_other_side(c).await;
    screenshot(c, &shots, "02-revealed.png").await;
    assert_eq!(
        app.sql_one::<i64>("SELECT count(*) FROM check_consents")
            .await,
        1,
        "exactly one verbal consent recorded"
    );
    let stored: String = app
        .sql_one("SELECT check_id::text FROM check_consents")
        .await;
    assert_eq!(stored, second_check);

    // 6. 「理由を入力して処方」 → override, then registration naming the check.
    let reason = "前医の処方は本日で終了と患者に確認済み";
    click(c, "[data-testid=override]").await;
    visible(c, "[data-testid=override-panel]").await;
    visible(c, "[data-testid=override-reason]")
        .await
        .send_keys(reason)
        .await
        .expect("type the reason");
    click(c, "[data-testid=override-submit]").await;
    let number = visible(c, "[data-testid=exchange-number]").await;
    let digits = text(&number).await.replace(char::is_whitespace, "");
    assert!(
        digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()),
        "引換番号 {digits:?}"
    );
    assert_eq!(
        number.attr("data-value").await.expect("attr"),
        Some(digits.clone())
    );
    assert_eq!(
        text(&visible(c, "[data-testid=registered-override-reason]").await).await,
        reason
    );
    assert!(page_text(c).await.contains("重複等あり・医師許可"));
    never_the_other_side(c).await;
    screenshot(c, &shots, "03-registered.png").await;
    assert_eq!(
        app.sql_one::<i64>("SELECT count(*) FROM prescriptions")
            .await,
        2
    );
    let id = text(&visible(c, "[data-testid=prescription-id]").await).await;
    let r = app
        .get(&format!("/v1/prescriptions/{id}"), &app.doctor_2())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["exchange_number"], digits.as_str());
    assert_eq!(
        r.body["check"]["override"]["reason"], reason,
        "the registered prescription carries the override: {}",
        r.body["check"]
    );

    // 7. Landscape: the draft and the result side by side.
    c.set_window_size(1180, 820).await.expect("resize");
    click(c, "[data-testid=new-draft]").await;
    paste_draft(c, &draft).await;
    click(c, "[data-testid=check]").await;
    hit_card(c, "ユーロジン１ｍｇ錠").await;
    assert!(
        displayed(c, "[data-testid=draft]").await,
        "landscape keeps the draft visible"
    );
    screenshot(c, &shots, "04-landscape.png").await;
    c.set_window_size(820, 1180).await.expect("resize");

    // 8. Tokens: one that is not a JWT, and one the relay refuses (401) — both ask for a token
    //    again; the relay's 401 keeps what is on the screen.
    c.goto("about:blank").await.expect("leave the page");
    c.goto(&format!("{page}#token=not-a-token"))
        .await
        .expect("open");
    let login = text(&visible(c, "[data-testid=login-message]").await).await;
    assert!(login.contains("形式が正しくありません"), "{login}");
    // Same document, new fragment: the page takes the token on `hashchange`.
    let forged = forge(&app.doctor_2());
    c.goto(&format!("{page}#token={forged}"))
        .await
        .expect("open");
    visible(c, "[data-testid=who]").await;
    paste_draft(c, &draft).await;
    click(c, "[data-testid=check]").await;
    let login = text(&visible(c, "[data-testid=login-message]").await).await;
    assert!(login.contains("トークンが無効か期限切れ"), "{login}");
    assert_eq!(
        value(c, "[data-testid=patient-name]").await,
        "電処　有効五二"
    );
    visible(c, "[data-testid=token]")
        .await
        .send_keys(&app.doctor_2())
        .await
        .expect("type the token");
    click(c, "[data-testid=login-submit]").await;
    wait_until(c, "the login prompt to close", async || {
        (!displayed(c, "[data-testid=login]").await).then_some(())
    })
    .await;
    // 「チェックIDで開く」: the earlier check, with its consent still revealing.
    click(c, "[data-testid=open-check-open]").await;
    visible(c, "[data-testid=open-check-id]")
        .await
        .send_keys(&second_check)
        .await
        .expect("type");
    click(c, "[data-testid=open-check]").await;
    visible(c, "[data-testid=override-record]").await;
    assert_eq!(
        text(&visible(c, "[data-testid=check-id]").await).await,
        second_check
    );
    never_the_other_side(c).await;

    browser.close().await;
}

#[tokio::test]
async fn consultation_room_shows_the_check_a_registration_refuses_with_409() {
    let app = TestApp::spawn().await;
    let draft = prescription().to_string();
    let shots = artifacts_dir();
    let browser = Browser::start(&shots, "chromedriver-409.log").await;
    let c = &browser.client;
    c.goto(&format!(
        "{}/consultation-room#token={}",
        app.address,
        app.doctor_2()
    ))
    .await
    .expect("open the page");
    paste_draft(c, &draft).await;
    click(c, "[data-testid=check]").await;
    let outcome = visible(c, "[data-testid=outcome]").await;
    assert_eq!(
        outcome.attr("data-outcome").await.expect("attr").as_deref(),
        Some("clear")
    );
    assert_eq!(text(&outcome).await, "重複・併用禁忌はありません");
    // Meanwhile another clinic registers the same drugs: the check inside registration finds them.
    app.register(&prescription()).await;
    click(c, "[data-testid=register]").await;
    let code = text(&visible(c, "[data-testid=error-code]").await).await;
    assert_eq!(code, "UNRESOLVED_CHECK_HITS");
    let card = hit_card(c, "ユーロジン１ｍｇ錠").await;
    assert_eq!(
        text(&inside(&card, "[data-testid=hit-other]").await).await,
        "詳細は患者の同意がないため表示できません"
    );
    never_the_other_side(c).await;
    screenshot(c, &shots, "05-registration-409.png").await;
    // The carried check is overridden like any other, and registration then goes through.
    click(c, "[data-testid=override]").await;
    visible(c, "[data-testid=override-reason]")
        .await
        .send_keys("他院処方は確認済み")
        .await
        .expect("type the reason");
    click(c, "[data-testid=override-submit]").await;
    visible(c, "[data-testid=exchange-number]").await;
    assert_eq!(
        app.sql_one::<i64>("SELECT count(*) FROM prescriptions")
            .await,
        2
    );
    browser.close().await;
}

// -------------------------------------------------------------------------------------------------
// The browser
// -------------------------------------------------------------------------------------------------

/// `<workspace>/target/test-artifacts/consultation-room/`, created.
fn artifacts_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let dir = target.join("test-artifacts").join("consultation-room");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// chromedriver (in its own process group, with the Chromium it starts) and a session on it. Drop
/// kills the group and removes the profile, also when the test panics.
struct Browser {
    client: Client,
    driver: Driver,
}

struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is chromedriver's pid: it and the browser it started, nothing else.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// `log` names chromedriver's log file in `logs` (tests run in parallel).
    async fn start(logs: &std::path::Path, log: &str) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
            listener.local_addr().expect("port").port()
        };
        let profile =
            std::env::temp_dir().join(format!("relay-chromium-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&profile).expect("profile directory");
        let log = std::fs::File::create(logs.join(log)).expect("driver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{CHROMEDRIVER}: {e} (apt-get install chromium chromium-driver)")
            });
        let driver = Driver { child, profile };
        let url = format!("http://127.0.0.1:{port}");
        let http = crate::helpers::http_client().build().expect("client");
        let started = Instant::now();
        loop {
            let ready = http
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(r) = ready {
                let status: Value = r.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                started.elapsed() < WAIT,
                "chromedriver did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=820,1180",
                    format!("--user-data-dir={}", driver.profile.display()),
                ],
            }),
        );
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let client = builder
            .connect(&url)
            .await
            .expect("a Chromium session through chromedriver");
        Browser { client, driver }
    }

    async fn close(self) {
        let Browser { client, driver } = self;
        let _ = client.close().await;
        drop(driver);
    }
}

// -------------------------------------------------------------------------------------------------
// Waiting and reading
// -------------------------------------------------------------------------------------------------

/// Polls `probe` until it gives a value, for at most [`WAIT`].
async fn wait_until<T>(c: &Client, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if started.elapsed() > WAIT {
            let body = page_text(c).await;
            panic!("waited {WAIT:?} for {what}; the page shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn first_displayed(els: Vec<Element>) -> Option<Element> {
    for el in els {
        if el.is_displayed().await.unwrap_or(false) {
            return Some(el);
        }
    }
    None
}

/// The first displayed element matching `css`.
async fn visible(c: &Client, css: &str) -> Element {
    wait_until(c, css, async || {
        first_displayed(c.find_all(Locator::Css(css)).await.ok()?).await
    })
    .await
}

/// The first displayed element matching `css` inside `parent`.
async fn inside(parent: &Element, css: &str) -> Element {
    let started = Instant::now();
    loop {
        if let Ok(els) = parent.find_all(Locator::Css(css)).await
            && let Some(el) = first_displayed(els).await
        {
            return el;
        }
        assert!(started.elapsed() < WAIT, "waited {WAIT:?} for {css}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn displayed(c: &Client, css: &str) -> bool {
    match c.find_all(Locator::Css(css)).await {
        Ok(els) => first_displayed(els).await.is_some(),
        Err(_) => false,
    }
}

/// Clicks like a finger: the element scrolled into view; a click the sticky header intercepts is
/// dispatched to the element itself.
async fn click(c: &Client, css: &str) {
    let el = visible(c, css).await;
    let arg = serde_json::to_value(&el).expect("element reference");
    let _ = c
        .execute(
            "arguments[0].scrollIntoView({block: 'center'})",
            vec![arg.clone()],
        )
        .await;
    if el.click().await.is_err() {
        c.execute("arguments[0].click()", vec![arg])
            .await
            .expect("click");
    }
}

async fn text(el: &Element) -> String {
    el.text().await.expect("element text").trim().to_string()
}

async fn value(c: &Client, css: &str) -> String {
    visible(c, css)
        .await
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

/// What a person sees on the page.
async fn page_text(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(e) => format!("(no body: {e})"),
    }
}

/// Neither in what is shown nor anywhere in the document.
async fn never_the_other_side(c: &Client) {
    let source = c.source().await.expect("page source");
    for s in OTHER_SIDE {
        assert!(!source.contains(s), "the page names the other side ({s})");
    }
}

/// The hit card about `new_drug`; exactly one.
async fn hit_card(c: &Client, new_drug: &str) -> Element {
    wait_until(c, &format!("the hit card of {new_drug}"), async || {
        let mut found = Vec::new();
        for card in c.find_all(Locator::Css("[data-testid=hit]")).await.ok()? {
            let name = card
                .find(Locator::Css("[data-testid=hit-new-drug]"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            if name == new_drug {
                found.push(card);
            }
        }
        assert!(found.len() <= 1, "one card per new drug and kind");
        found.pop()
    })
    .await
}

async fn paste_draft(c: &Client, draft: &str) {
    if !displayed(c, "[data-testid=paste]").await {
        click(c, "[data-testid=paste-open]").await;
    }
    let area = visible(c, "[data-testid=paste]").await;
    area.clear().await.expect("clear");
    area.send_keys(draft).await.expect("paste");
    click(c, "[data-testid=paste-apply]").await;
    wait_until(c, "the form to be filled", async || {
        (value(c, "[data-testid=patient-name]").await == "電処　有効五二").then_some(())
    })
    .await;
}

/// The token with a signature the relay did not make (its claims still decode).
fn forge(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').expect("a JWT");
    let flipped: String = sig
        .chars()
        .map(|ch| if ch == 'A' { 'B' } else { 'A' })
        .collect();
    format!("{rest}.{flipped}")
}

async fn screenshot(c: &Client, dir: &std::path::Path, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
}
