//! The fallback ladder from the counter: one run of `eligibility fallback` per method.

use super::*;

/// `relay serve` with expired 健康保険証 / お知らせ accepted through `legacy_until` (configuration
/// `eligibility.legacy_card_until`, here from the environment).
fn serve_legacy_until(relay: &Relay, legacy_until: &str) -> Serving {
    relay.serve_with(&[("RELAY_ELIGIBILITY__LEGACY_CARD_UNTIL", legacy_until)])
}

/// SIGTERM, and the relay exits cleanly.
async fn stop(mut server: Serving) {
    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("relay exits after SIGTERM");
    assert!(exit.success());
}

/// The value of one `label  value` line of the client's human output.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(label).filter(|v| v.starts_with(' ')))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label} line in:\n{text}"))
}

/// `eligibility fallback --method M ARGS…`.
fn fallback(counter: &Counter, json: bool, method: &str, args: &[&str]) -> Output {
    let mut all = if json { vec!["--json"] } else { vec![] };
    all.extend(["eligibility", "fallback", "--method", method]);
    all.extend(args);
    counter.run(&all)
}

/// `base` followed by `extra`.
fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

/// A confirmed qualification, once for people and once as `--json`: the human text and the
/// JSON, both for method `method`.
fn confirm(counter: &Counter, method: &str, args: &[&str]) -> (String, Value) {
    let out = fallback(counter, false, method, args);
    assert_eq!(code(&out), 0, "{method}: {}", show(&out));
    let text = stdout(&out);
    assert!(text.starts_with("資格を確認しました。"), "{method}: {text}");
    assert!(
        field(&text, "方法").ends_with(&format!("({method})")),
        "{method}: {text}"
    );
    let qid = field(&text, "資格確認ID");
    assert_eq!(qid.len(), 36, "{method}: {text}");
    assert!(
        text.contains(&format!(
            "pharmacy-client receive --number <引換番号> … --qualification {qid}"
        )),
        "{method}: the next step names the qualification:\n{text}"
    );
    let out = fallback(counter, true, method, args);
    assert_eq!(code(&out), 0, "{method} --json: {}", show(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(v["method"], method, "{v}");
    assert_eq!(v["facility_code"], "9948000014", "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    let json_qid = v["qualification_id"].as_str().expect("qualification_id");
    assert_eq!(json_qid.len(), 36, "{v}");
    assert_ne!(json_qid, qid, "each run is its own qualification");
    (text, v)
}

/// A refusal by the relay's rules (422, recorded): exit 2 and the code on stderr.
fn refuse(counter: &Counter, method: &str, args: &[&str], refusal: &str) -> String {
    let out = fallback(counter, false, method, args);
    assert_eq!(code(&out), 2, "{method} → {refusal}: {}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("エラー {refusal}: ")),
        "{method} → {refusal}: {}",
        show(&out)
    );
    assert!(stdout(&out).is_empty(), "nothing confirmed: {}", show(&out));
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn pharmacy_client_fallback_ladder_every_method() {
    let relay = Relay::new("pharmacyladder");
    relay.migrate_and_seed();
    let doctor = relay.token("9918000010", "doctor", "doctor-1");
    let admin = relay.token("9918000010", "admin", "admin-1");
    let pharmacist = relay.token("9948000014", "pharmacist", "pharmacist-1");
    let today = relay::domain::time::today();
    let (yesterday, tomorrow) = (
        today.yesterday().unwrap().to_string(),
        today.tomorrow().unwrap().to_string(),
    );
    let today = today.to_string();

    // Expired 健康保険証 still accepted today (the policy date is configuration).
    let server = serve_legacy_until(&relay, &today);
    let base = relay.base_url();
    let one = Counter::new(&relay, "ladder");
    let out = one.run(&["login", "--token", &pharmacist]);
    assert_eq!(code(&out), 0, "{}", show(&out));

    // Two prescriptions for 髙橋 𠮷子 (demo registry: 01130012 / 1234 / 5678 / 01, 1975-07-07).
    let mut registered = Vec::new();
    for drug in [
        ("2325003B2029", "ガスター散２％", 0.4, "g"),
        ("1124001F1022", "ユーロジン１ｍｇ錠", 1.0, "錠"),
    ] {
        let (status, p) = post(
            &base,
            "/v1/prescriptions",
            &doctor,
            &prescription("5678", "1975-07-07", drug),
        )
        .await;
        assert_eq!(status, 201, "{p}");
        registered.push((
            p["prescription_id"].as_str().unwrap().to_string(),
            p["exchange_number"].as_str().unwrap().to_string(),
        ));
    }
    let (a_id, a_number) = registered[0].clone();
    let (b_id, b_number) = registered[1].clone();

    let takahashi = [
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
    ];

    // ① マイナポータルの資格情報画面: only with the card.
    let err = refuse(
        &one,
        "mynaportal_screen",
        &takahashi,
        "PORTAL_SCREEN_REQUIRES_CARD",
    );
    assert!(
        err.contains("マイナンバーカード")
            && err.contains("[--method eligibility_notice]")
            && err.contains("[--method self_declaration]"),
        "the refusal lists the ladder:\n{err}"
    );
    let (text, v) = confirm(
        &one,
        "mynaportal_screen",
        &with(&takahashi, &["--card-presented"]),
    );
    assert!(field(&text, "方法").contains("マイナポータル"), "{text}");
    assert!(field(&text, "患者").starts_with("髙橋　𠮷子"), "{text}");
    assert_eq!(field(&text, "請求区分"), "A 現資格 (current)", "{text}");
    assert_eq!(
        field(&text, "請求する番号"),
        "保険者番号 01130012  記号 1234  番号 5678  枝番 01",
        "{text}"
    );
    assert_eq!(
        field(&text, "情報共有"),
        "不可",
        "no sharing without the card reader:\n{text}"
    );
    assert!(
        !text.contains("pharmacy-client outstanding"),
        "a fallback does not hand over prescriptions:\n{text}"
    );
    assert_eq!(v["claim_basis"], "current", "{v}");
    assert_eq!(v["claim"]["number"], "5678", "{v}");
    assert_eq!(v["insured"]["name"], "髙橋　𠮷子", "{v}");
    assert_eq!(v["info_sharing"], false, "{v}");
    assert_eq!(v["warnings"], json!([]), "{v}");
    let portal_qid = v["qualification_id"].as_str().unwrap().to_string();

    // ② 資格情報のお知らせ: the notice alone is refused (and, before the policy date, pointed at
    // legacy_insurance_card); with the card, an old notice is claimed under the new insurance.
    let err = refuse(
        &one,
        "eligibility_notice",
        &takahashi,
        "NOTICE_REQUIRES_CARD",
    );
    assert!(
        err.contains("お知らせだけでは受付できません")
            && err.contains(&format!("{today}までは"))
            && err.contains("legacy_insurance_card"),
        "{err}"
    );
    let sato_old = [
        "--insurer",
        "01130012",
        "--symbol",
        "5555",
        "--insured-number",
        "0001",
        "--branch",
        "01",
        "--birth-date",
        "1988-05-05",
        "--card-presented",
    ];
    let (text, v) = confirm(&one, "eligibility_notice", &sato_old);
    assert!(
        field(&text, "方法").contains("資格情報のお知らせ"),
        "{text}"
    );
    assert!(field(&text, "患者").starts_with("佐藤　花子"), "{text}");
    assert_eq!(
        field(&text, "請求する番号"),
        "保険者番号 01270016  記号 7777  番号 0002  枝番 01",
        "the current coverage is claimed:\n{text}"
    );
    assert!(text.contains("注意 INSURANCE_CHANGED: "), "{text}");
    assert_eq!(v["claim_basis"], "current", "{v}");
    assert_eq!(v["claim"]["insurer_number"], "01270016", "{v}");
    assert_eq!(v["warnings"][0]["code"], "INSURANCE_CHANGED", "{v}");

    // 資格確認書: valid alone, but not once its own 有効期限 has passed.
    let ito = [
        "--insurer",
        "01130012",
        "--symbol",
        "8888",
        "--insured-number",
        "0005",
        "--branch",
        "01",
        "--birth-date",
        "1960-01-15",
    ];
    let err = refuse(
        &one,
        "qualification_certificate",
        &with(&ito, &["--document-valid-until", yesterday.as_str()]),
        "QUALIFICATION_CERTIFICATE_EXPIRED",
    );
    assert!(err.contains(&format!("有効期限（{yesterday}）")), "{err}");
    let mut wrong_birth = ito.to_vec();
    *wrong_birth.last_mut().unwrap() = "1999-09-09";
    refuse(
        &one,
        "qualification_certificate",
        &wrong_birth,
        "IDENTITY_MISMATCH",
    );
    let (text, v) = confirm(
        &one,
        "qualification_certificate",
        &with(&ito, &["--document-valid-until", tomorrow.as_str()]),
    );
    assert!(field(&text, "方法").starts_with("資格確認書"), "{text}");
    assert!(field(&text, "患者").starts_with("伊藤　健"), "{text}");
    assert_eq!(field(&text, "請求区分"), "A 現資格 (current)", "{text}");
    assert_eq!(field(&text, "情報共有"), "不可", "{text}");
    assert_eq!(v["claim"]["number"], "0005", "{v}");
    assert_eq!(v["info_sharing"], false, "{v}");
    let certificate_qid = v["qualification_id"].as_str().unwrap().to_string();

    // ③ 再診・口頭確認: only for a patient this pharmacy has seen (髙橋 was qualified above;
    // 山﨑 never came here).
    let err = refuse(
        &one,
        "verbal_revisit",
        &[
            "--insurer",
            "39131156",
            "--symbol",
            "",
            "--insured-number",
            "12345678",
            "--branch",
            "01",
            "--birth-date",
            "1940-02-29",
        ],
        "VERBAL_REQUIRES_PRIOR_VISIT",
    );
    assert!(
        err.contains("再診") && err.contains("self_declaration"),
        "{err}"
    );
    let (text, v) = confirm(&one, "verbal_revisit", &takahashi);
    assert!(field(&text, "方法").contains("口頭確認"), "{text}");
    assert_eq!(field(&text, "請求区分"), "A 現資格 (current)", "{text}");
    assert_eq!(v["claim_basis"], "current", "{v}");
    assert_eq!(v["claim"]["number"], "5678", "{v}");
    let verbal_qid = v["qualification_id"].as_str().unwrap().to_string();

    // ④ 被保険者資格申立書: address and contact are required; without numbers the claim is 不詳.
    let newcomer = [
        "--name",
        "初診 花子",
        "--birth-date",
        "1990-09-09",
        "--sex",
        "female",
    ];
    let err = refuse(&one, "self_declaration", &newcomer, "VALIDATION_FAILED");
    assert!(
        err.contains("  declaration: ") && err.contains("(REQUIRED)"),
        "the missing address is named:\n{err}"
    );
    // A contact without an address is refused by the client itself, naming the flag.
    let out = fallback(
        &one,
        false,
        "self_declaration",
        &with(&newcomer, &["--contact", "090-0000-0000"]),
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(stderr(&out).contains("--address"), "{}", show(&out));
    let err = refuse(
        &one,
        "self_declaration",
        &with(&newcomer, &["--address", "東京都港区芝公園1-1-1"]),
        "VALIDATION_FAILED",
    );
    assert!(err.contains("  declaration.contact: "), "{err}");
    let (text, v) = confirm(
        &one,
        "self_declaration",
        &with(
            &newcomer,
            &[
                "--address",
                "東京都港区芝公園1-1-1",
                "--contact",
                "090-0000-0000",
            ],
        ),
    );
    assert!(
        field(&text, "方法").contains("被保険者資格申立書"),
        "{text}"
    );
    assert!(field(&text, "患者").starts_with("初診 花子"), "{text}");
    assert_eq!(field(&text, "請求区分"), "C 不詳 (unknown)", "{text}");
    assert_eq!(
        field(&text, "請求する番号"),
        "保険者番号 77777779  記号 なし  番号 77777777  枝番 77",
        "{text}"
    );
    assert_eq!(
        field(&text, "摘要"),
        "住所: 東京都港区芝公園1-1-1／連絡先: 090-0000-0000",
        "{text}"
    );
    assert!(text.contains("注意 CLAIM_UNKNOWN: "), "{text}");
    assert_eq!(v["claim_basis"], "unknown", "{v}");
    assert_eq!(v["claim"]["insurer_number"], "77777779", "{v}");
    assert_eq!(v["claim"]["number"], "77777777", "{v}");
    assert_eq!(v["insured"]["name"], "初診 花子", "{v}");

    // Expired 健康保険証 alone: accepted through the configured date (today, in this relay).
    let (text, v) = confirm(
        &one,
        "legacy_insurance_card",
        &with(&takahashi, &["--legacy-document", "health_insurance_card"]),
    );
    assert!(field(&text, "方法").contains("経過措置"), "{text}");
    assert_eq!(field(&text, "請求区分"), "A 現資格 (current)", "{text}");
    assert_eq!(field(&text, "情報共有"), "不可", "{text}");
    assert_eq!(v["claim"]["number"], "5678", "{v}");
    assert_eq!(v["info_sharing"], false, "{v}");

    // 災害時モード: refused until a disaster is declared for the pharmacy's municipality, then
    // by name, birth date, sex and address with verbal consent — and it hands over prescriptions.
    let statement = [
        "--name",
        "髙橋𠮷子",
        "--birth-date",
        "1975-07-07",
        "--sex",
        "female",
        "--address",
        "東京都千代田区霞が関1-2-2",
    ];
    let out = fallback(
        &one,
        true,
        "disaster",
        &with(&statement, &["--verbal-consent"]),
    );
    assert_eq!(code(&out), 2, "{}", show(&out));
    let problem: Value = serde_json::from_str(&stdout(&out)).expect("problem JSON on stdout");
    assert_eq!(problem["code"], "NO_DISASTER_DECLARED", "{problem}");
    assert_eq!(
        problem["fallback_ladder"].as_array().map(Vec::len),
        Some(4),
        "{problem}"
    );
    assert!(
        problem["qualification_id"].is_string(),
        "recorded: {problem}"
    );
    assert!(
        stderr(&out).contains("エラー NO_DISASTER_DECLARED: "),
        "{}",
        show(&out)
    );
    let (status, d) = post(
        &base,
        "/v1/admin/disasters",
        &admin,
        &json!({"name": "テスト地震", "municipalities": ["991007"], "starts_on": today}),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    refuse(&one, "disaster", &statement, "VERBAL_CONSENT_REQUIRED");
    let (text, v) = confirm(&one, "disaster", &with(&statement, &["--verbal-consent"]));
    assert!(field(&text, "方法").starts_with("災害時モード"), "{text}");
    assert_eq!(field(&text, "災害"), "テスト地震", "{text}");
    assert!(field(&text, "患者").starts_with("髙橋　𠮷子"), "{text}");
    assert_eq!(field(&text, "情報共有"), "可", "{text}");
    assert!(
        text.contains("  pharmacy-client outstanding "),
        "disaster mode lists the patient's prescriptions:\n{text}"
    );
    assert_eq!(v["disaster"]["name"], "テスト地震", "{v}");
    assert_eq!(v["claim"]["disaster"]["name"], "テスト地震", "{v}");
    assert_eq!(v["claim_basis"], "current", "{v}");
    assert_eq!(v["claim"]["number"], "5678", "{v}");
    assert_eq!(v["info_sharing"], true, "{v}");
    assert_eq!(v["consent"]["medication"], true, "{v}");
    let disaster_qid = v["qualification_id"].as_str().unwrap().to_string();

    // The ladder's qualifications are usable. Another patient's is refused at receive...
    let receive_a = |qid: &str| {
        one.run(&[
            "receive",
            "--number",
            &a_number,
            "--insurer",
            "01130012",
            "--symbol",
            "1234",
            "--insured-number",
            "5678",
            "--branch",
            "01",
            "--qualification",
            qid,
        ])
    };
    let out = receive_a(&certificate_qid);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("エラー QUALIFICATION_MISMATCH: "),
        "{}",
        show(&out)
    );
    // ...the patient's own (③ verbal) receives by 引換番号 and stays with the prescription.
    let out = receive_a(&verbal_qid);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    for want in [
        "受付しました",
        "検証用薬局",
        "ガスター散２％",
        a_id.as_str(),
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let out = one.run(&["--json", "show", &a_id]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let view: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(view["status"], "dispensing", "{view}");
    assert_eq!(
        view["qualification"]["qualification_id"],
        verbal_qid.as_str()
    );
    assert_eq!(view["qualification"]["method"], "verbal_revisit", "{view}");
    assert_eq!(view["qualification"]["claim_basis"], "current", "{view}");
    // A fallback qualification is not the card: no list without the 引換番号...
    let out = one.run(&["outstanding", &portal_qid]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("エラー CARD_PATH_REQUIRED: "),
        "{}",
        show(&out)
    );
    // ...but disaster mode lists B and receives it by prescription id.
    let out = one.run(&["outstanding", &disaster_qid]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains(&b_number))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{b_number} not listed:\n{}", show(&out)));
    assert!(
        line.contains("ユーロジン") && line.contains(&b_id),
        "{line}"
    );
    let out = one.run(&[
        "receive",
        "--prescription-id",
        &b_id,
        "--qualification",
        &disaster_qid,
    ]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        stdout(&out).contains("受付しました") && stdout(&out).contains("ユーロジン"),
        "{}",
        show(&out)
    );

    // The operator moves the policy date to yesterday: expired cards alone are refused, and a
    // notice alone is no longer pointed at them.
    stop(server).await;
    let mut server = serve_legacy_until(&relay, &yesterday);
    let err = refuse(
        &one,
        "legacy_insurance_card",
        &with(&takahashi, &["--legacy-document", "eligibility_notice"]),
        "LEGACY_CARD_NOT_ACCEPTED",
    );
    assert!(
        err.contains(&format!("{yesterday}までです")) && err.contains("資格確認書"),
        "{err}"
    );
    let err = refuse(
        &one,
        "eligibility_notice",
        &takahashi,
        "NOTICE_REQUIRES_CARD",
    );
    assert!(!err.contains("legacy_insurance_card"), "{err}");

    let exit = tokio::task::spawn_blocking(move || terminate(&mut server, Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("relay exits after SIGTERM");
    assert!(exit.success());
}
