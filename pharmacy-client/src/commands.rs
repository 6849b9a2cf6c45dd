//! One function per subcommand: build the request, call the relay, print for people (or the
//! relay's JSON with `--json`).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use base64::Engine;
use clap::ValueEnum;
use serde_json::{Map, Value, json};

use crate::api::{Api, Failure, exit};
use crate::config::{self, Settings};
use crate::output::{self, fields, s, table};
use crate::{
    Cli, Command, DirectoryCommand, EligibilityCommand, FallbackCommand, FallbackEligibility,
    Identity, IncomingCommand, PresendStatus, ReceiveArgs,
};
use crate::{scan, sync};

pub fn run(cli: Cli) -> Result<i32, Failure> {
    let settings = config::load(cli.relay, cli.config)?;
    let json = cli.json;
    let done = |r: Result<(), Failure>| r.map(|()| exit::OK);
    let remind = !json
        && !matches!(
            cli.command,
            Command::Status | Command::Sync | Command::Queue(_) | Command::Login { .. }
        );
    let result = match cli.command {
        Command::Login { token } => done(login(&settings, token, json)),
        Command::Logout => done(logout(&settings, json)),
        Command::Whoami => done(whoami(&settings, json)),
        Command::Status => sync::status(&settings, json),
        Command::Queue(q) => sync::queue(&settings, q, json),
        Command::Directory(DirectoryCommand::List { kind, search }) => {
            sync::directory_list(&settings, kind, search.as_deref(), json)
        }
        command => {
            let api = Api::new(
                &settings.relay_url,
                config::read_token(&settings)?,
                settings.timeout,
            )?;
            let ctx = Ctx {
                api,
                json,
                settings: settings.clone(),
            };
            match command {
                Command::Receive(a) => done(ctx.receive(a)),
                Command::Scan(a) => done(ctx.scan(&a.image, a.yes, a.qualification)),
                Command::Show { id } => done(ctx.show(&id)),
                Command::Release { id, reason } => done(ctx.release(&id, &reason)),
                Command::Dispense(a) => done(ctx.dispense(&a.id, a.file.as_deref(), a.yes)),
                Command::Eligibility(e) => done(ctx.eligibility(e)),
                Command::Outstanding { qualification_id } => {
                    done(ctx.outstanding(&qualification_id))
                }
                Command::AccessLog { qualification_id } => done(ctx.access_log(&qualification_id)),
                Command::Check { file } => done(ctx.check(&file)),
                Command::Fallback(f) => ctx.fallback(f),
                Command::Incoming { action, status } => done(ctx.incoming(action, status)),
                Command::Directory(DirectoryCommand::Sync) => sync::directory_sync(&ctx),
                Command::Sync => sync::sync(&ctx),
                Command::Login { .. }
                | Command::Logout
                | Command::Whoami
                | Command::Status
                | Command::Queue(_)
                | Command::Directory(DirectoryCommand::List { .. }) => unreachable!(),
            }
        }
    };
    // Whatever happened, a counter with records not on the relay is told so.
    if remind && let Some(line) = sync::reminder(&settings) {
        eprintln!("{line}");
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------------------------

/// The payload of a JWT, decoded for display only (the relay verifies the signature).
pub(crate) fn jwt_claims(token: &str) -> Result<Value, Failure> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(Failure::Usage(
            "トークンの形式が違います (JWT: xxx.yyy.zzz)".into(),
        ));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .map_err(|e| Failure::Usage(format!("トークンを読めません: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::Usage(format!("トークンを読めません: {e}")))
}

pub(crate) fn tokyo(secs: i64) -> String {
    let tz = output::tokyo_tz();
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t
            .to_zoned(tz)
            .strftime("%Y-%m-%d %H:%M:%S (日本時間)")
            .to_string(),
        Err(_) => secs.to_string(),
    }
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn today() -> String {
    let tz = output::tokyo_tz();
    jiff::Timestamp::now().to_zoned(tz).date().to_string()
}

fn login(settings: &Settings, token: Option<String>, json: bool) -> Result<(), Failure> {
    let token = match token {
        Some(t) => t,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("トークン (JWT) を貼り付けて Enter: ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| Failure::Usage(format!("標準入力を読めません: {e}")))?;
            line
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::Usage(
            "トークンがありません: --token JWT で指定するか、標準入力から渡してください".into(),
        ));
    }
    let claims = jwt_claims(&token)?;
    config::save_token(&settings.token_file, &token)?;
    if json {
        println!(
            "{}",
            json!({"saved": settings.token_file, "claims": claims})
        );
        return Ok(());
    }
    println!(
        "トークンを保存しました: {} (この利用者だけが読めます)",
        settings.token_file.display()
    );
    print!("{}", claims_text(&claims));
    let role = s(&claims, "/role");
    if role != "pharmacist" && role != "pharmacy_clerk" {
        eprintln!(
            "注意: このトークンの役割は「{}」です。薬局の操作には pharmacist か pharmacy_clerk のトークンが必要です。",
            output::role_label(&role)
        );
    }
    Ok(())
}

fn claims_text(claims: &Value) -> String {
    let exp = claims.get("exp").and_then(Value::as_i64);
    let exp_text = match exp {
        Some(e) if e <= now_secs() => format!("{}  ← 期限切れ。login し直してください", tokyo(e)),
        Some(e) => tokyo(e),
        None => String::new(),
    };
    fields(&[
        ("職員ID", s(claims, "/sub")),
        ("施設コード", s(claims, "/facility")),
        (
            "役割",
            format!(
                "{} ({})",
                output::role_label(&s(claims, "/role")),
                s(claims, "/role")
            ),
        ),
        ("有効期限", exp_text),
    ])
}

fn logout(settings: &Settings, json: bool) -> Result<(), Failure> {
    let removed = config::remove_token(&settings.token_file)?;
    if json {
        println!("{}", json!({"removed": removed}));
    } else if removed {
        println!(
            "ログアウトしました (トークン {} を削除)",
            settings.token_file.display()
        );
    } else {
        println!("保存されたトークンはありません");
    }
    Ok(())
}

fn whoami(settings: &Settings, json: bool) -> Result<(), Failure> {
    let token = config::read_token(settings)?.ok_or(Failure::NoToken)?;
    let claims = jwt_claims(&token)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&claims).unwrap_or_default()
        );
        return Ok(());
    }
    print!("{}", claims_text(&claims));
    print!(
        "{}",
        fields(&[
            ("リレー", settings.relay_url.clone()),
            ("トークン", settings.token_file.display().to_string()),
            ("設定ファイル", settings.config_file.display().to_string()),
        ])
    );
    println!("（表示のみ: 署名と期限はリレーが確認します）");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prompts
// ---------------------------------------------------------------------------------------------

/// Asks on stderr, reads one line from stdin. End of input is a usage error naming the flag.
pub(crate) fn prompt(label: &str, default: Option<&str>, flag: &str) -> Result<String, Failure> {
    match default {
        Some(d) if !d.is_empty() => eprint!("{label} [{d}]: "),
        _ => eprint!("{label}: "),
    }
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Usage(format!("標準入力を読めません: {e}")))?;
    if n == 0 {
        eprintln!();
        return Err(Failure::Usage(format!(
            "{label} が入力されませんでした ({flag} で指定できます)"
        )));
    }
    let v = line.trim().to_string();
    Ok(match (v.is_empty(), default) {
        (true, Some(d)) => d.to_string(),
        _ => v,
    })
}

fn required(value: Option<String>, label: &str, flag: &str) -> Result<String, Failure> {
    match value {
        Some(v) => Ok(v),
        None => loop {
            let v = prompt(label, None, flag)?;
            if !v.is_empty() {
                return Ok(v);
            }
        },
    }
}

fn confirm(question: &str) -> Result<(), Failure> {
    let answer = prompt(&format!("{question} [y/N]"), None, "--yes")?;
    match answer.to_lowercase().as_str() {
        "y" | "yes" | "はい" => Ok(()),
        _ => Err(Failure::Declined),
    }
}

fn read_json_file(path: &Path) -> Result<Value, Failure> {
    let text = if path == Path::new("-") {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map_err(|e| Failure::Usage(format!("標準入力を読めません: {e}")))?;
        t
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("{} を読めません: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{} は JSON ではありません: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// Commands that talk to the relay
// ---------------------------------------------------------------------------------------------

pub(crate) struct Ctx {
    pub api: Api,
    pub json: bool,
    pub settings: Settings,
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

impl Ctx {
    fn receive(&self, a: ReceiveArgs) -> Result<(), Failure> {
        if let Some(id) = a.prescription_id {
            let qid = a.qualification.unwrap_or_default();
            let v = self.api.post(
                &format!("/v1/prescriptions/{id}/receive"),
                &json!({"qualification_id": qid}),
            )?;
            return self.received(&v);
        }
        let number = required(a.number, "引換番号", "--number")?;
        let insured = self.identity(a.identity, None)?;
        self.receive_by_number(&number, insured, a.birth_date, a.qualification)
    }

    /// Asks for what `i` lacks (記号 may be empty), filling from `from` (a scanned 控え) first.
    fn identity(&self, i: Identity, from: Option<&scan::CopyData>) -> Result<Value, Failure> {
        let pick = |flag: Option<String>, scanned: Option<&Option<String>>| {
            flag.or_else(|| scanned.and_then(|s| s.clone()))
        };
        let insurer = required(
            pick(i.insurer, from.map(|d| &d.insurer_number)),
            "保険者番号",
            "--insurer",
        )?;
        let symbol = match pick(i.symbol, from.map(|d| &d.symbol)) {
            Some(s) => s,
            None => prompt("記号 (なければ空のまま Enter)", None, "--symbol")?,
        };
        let number = required(
            pick(i.insured_number, from.map(|d| &d.number)),
            "番号",
            "--insured-number",
        )?;
        let branch = required(pick(i.branch, from.map(|d| &d.branch)), "枝番", "--branch")?;
        let mut insured = json!({"insurer_number": insurer, "number": number, "branch": branch});
        if !symbol.is_empty() {
            insured["symbol"] = json!(symbol);
        }
        Ok(insured)
    }

    fn receive_by_number(
        &self,
        number: &str,
        insured: Value,
        birth_date: Option<String>,
        qualification: Option<String>,
    ) -> Result<(), Failure> {
        let mut body = json!({"exchange_number": number, "insured": insured});
        if let Some(b) = birth_date.filter(|b| !b.is_empty()) {
            body["birth_date"] = json!(b);
        }
        if let Some(q) = qualification {
            body["qualification_id"] = json!(q);
        }
        let v = self.api.post("/v1/prescriptions/receive", &body)?;
        self.received(&v)
    }

    fn received(&self, v: &Value) -> Result<(), Failure> {
        if self.json {
            print_json(v);
            return Ok(());
        }
        println!(
            "受付しました。この薬局 ({}) が調剤中として保持しています。\n",
            output::facility(v, "/holder")
        );
        print!("{}", prescription_text(v));
        let id = s(v, "/prescription_id");
        println!("\n次の操作:");
        print!(
            "{}",
            table(
                &["", ""],
                &[
                    vec![
                        "調剤結果の登録".into(),
                        format!("pharmacy-client dispense {id} --file result.json")
                    ],
                    vec![
                        "受付取消".into(),
                        format!("pharmacy-client release {id} --reason \"…\"")
                    ],
                ]
            )
            .lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
        );
        Ok(())
    }

    fn scan(&self, image: &Path, yes: bool, qualification: Option<String>) -> Result<(), Failure> {
        let (raw, data) = scan::read_image(image)?;
        let shown = |o: &Option<String>| match o {
            None => "（読み取れず: 入力してください）".to_string(),
            Some(v) if v.is_empty() => "（なし）".to_string(),
            Some(v) => v.clone(),
        };
        eprintln!("控えのQRコードを読み取りました: {raw}");
        eprint!(
            "{}",
            fields(&[
                ("引換番号", shown(&data.exchange_number)),
                ("保険者番号", shown(&data.insurer_number)),
                ("記号", shown(&data.symbol)),
                ("番号", shown(&data.number)),
                ("枝番", shown(&data.branch)),
                ("生年月日", shown(&data.birth_date)),
            ])
        );
        let number = required(data.exchange_number.clone(), "引換番号", "--number")?;
        let empty = Identity {
            insurer: None,
            symbol: None,
            insured_number: None,
            branch: None,
        };
        let insured = self.identity(empty, Some(&data))?;
        if !yes {
            confirm("この内容で受付しますか？")?;
        }
        self.receive_by_number(&number, insured, data.birth_date.clone(), qualification)
    }

    fn show(&self, id: &str) -> Result<(), Failure> {
        let v = self.api.get(&format!("/v1/prescriptions/{id}"))?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        print!("{}", prescription_text(&v));
        Ok(())
    }

    fn release(&self, id: &str, reason: &str) -> Result<(), Failure> {
        let v = self.api.post(
            &format!("/v1/prescriptions/{id}/release"),
            &json!({"reason": reason}),
        )?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        println!(
            "受付取消しました。状態: {}",
            output::status_label(&s(&v, "/status"))
        );
        println!("他の薬局が同じ引換番号で受付できるようになりました。");
        Ok(())
    }

    fn dispense(&self, id: &str, file: Option<&Path>, yes: bool) -> Result<(), Failure> {
        let mut body = match file {
            Some(f) => read_json_file(f)?,
            None => self.dispense_prompts(id, yes)?,
        };
        let Some(obj) = body.as_object_mut() else {
            return Err(Failure::Usage(
                "調剤結果は JSON オブジェクトにしてください ({\"items\": […]})".into(),
            ));
        };
        obj.entry("dispensed_on").or_insert_with(|| json!(today()));
        let v = self
            .api
            .post(&format!("/v1/prescriptions/{id}/dispense"), &body)?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        println!(
            "調剤結果を登録しました。状態: {}",
            output::status_label(&s(&v, "/status"))
        );
        let next = s(&v, "/next_refill_date");
        if !next.is_empty() {
            println!("次回調剤予定日 (リフィル): {next}");
        }
        Ok(())
    }

    /// Walks the prescription's drugs: the dispensed amount and days for each (Enter keeps
    /// the prescribed ones), then an optional 重要な伝達事項.
    fn dispense_prompts(&self, id: &str, yes: bool) -> Result<Value, Failure> {
        let v = self.api.get(&format!("/v1/prescriptions/{id}"))?;
        print!("{}", prescription_text(&v));
        eprintln!("\n調剤した内容を入力してください (Enter で処方どおり)。");
        let mut items = Vec::new();
        for rp in v
            .pointer("/prescription/rps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let form = s(&rp, "/dosage_form");
            let quantity = s(&rp, "/quantity");
            for d in rp
                .get("drugs")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let name = s(&d, "/name");
                let unit = s(&d, "/unit");
                let dose = prompt(
                    &format!("{name} の量 ({unit})"),
                    Some(&s(&d, "/dose")),
                    "--file",
                )?;
                // Kept as typed (0.4 stays 0.4): the relay stores doses as exact decimals.
                let dose = match serde_json::from_str::<Value>(dose.trim()) {
                    Ok(n @ Value::Number(_)) => n,
                    _ => return Err(Failure::Usage(format!("量「{dose}」は数値ではありません"))),
                };
                let days_label = if form == "as_needed" {
                    "回数"
                } else {
                    "日数"
                };
                let days = prompt(&format!("{name} の{days_label}"), Some(&quantity), "--file")?;
                let mut item = json!({
                    "code_system": s(&d, "/code_system"), "code": s(&d, "/code"),
                    "name": name, "dose": dose, "unit": unit,
                });
                if !days.is_empty() {
                    let n: i64 = days.parse().map_err(|_| {
                        Failure::Usage(format!("{days_label}「{days}」は整数ではありません"))
                    })?;
                    item["days"] = json!(n);
                }
                items.push(item);
            }
        }
        let mut body = Map::new();
        body.insert("dispensed_on".into(), json!(today()));
        body.insert("items".into(), Value::Array(items));
        let note = prompt("重要な伝達事項 (なければ Enter)", None, "--file")?;
        if !note.is_empty() {
            body.insert("important_note".into(), json!(note));
        }
        if v.pointer("/prescription/refill_count")
            .is_some_and(|r| !r.is_null())
        {
            let next = prompt(
                "次回調剤予定日 YYYY-MM-DD (リフィル、最終回なら Enter)",
                None,
                "--file",
            )?;
            if !next.is_empty() {
                body.insert("next_refill_date".into(), json!(next));
            }
        }
        if !yes {
            confirm("この内容で調剤結果を登録しますか？")?;
        }
        Ok(Value::Object(body))
    }

    fn eligibility(&self, e: EligibilityCommand) -> Result<(), Failure> {
        let v = match e {
            EligibilityCommand::Card {
                card_id,
                auth,
                consent_medication,
                consent_diagnosis,
                consent_checkups,
                pin_locked,
            } => {
                let auth = match auth {
                    crate::Auth::Face => "face",
                    crate::Auth::Pin => "pin",
                    crate::Auth::Visual => "visual",
                };
                self.api.post(
                    "/v1/qualifications/card",
                    &json!({
                        "card_id": card_id, "auth": auth, "pin_locked": pin_locked,
                        "consent": {"medication": consent_medication, "diagnosis": consent_diagnosis,
                                    "checkups": consent_checkups},
                    }),
                )?
            }
            EligibilityCommand::Fallback(f) => {
                self.api.post("/v1/qualifications", &fallback_body(f))?
            }
        };
        if self.json {
            print_json(&v);
            return Ok(());
        }
        let qid = s(&v, "/qualification_id");
        let method = s(&v, "/method");
        let method_label = match method.as_str() {
            "card" => "マイナ保険証",
            "mynaportal_screen" => "① マイナポータルの資格情報画面",
            "eligibility_notice" => "② 資格情報のお知らせ",
            "verbal_revisit" => "③ 再診・口頭確認",
            "self_declaration" => "④ 被保険者資格申立書",
            "qualification_certificate" => "資格確認書",
            "legacy_insurance_card" => "期限切れの健康保険証等（経過措置）",
            "disaster" => "災害時モード",
            _ => "",
        };
        println!("資格を確認しました。\n");
        let patient = format!(
            "{} {} {}",
            s(&v, "/insured/name"),
            paren(&s(&v, "/insured/name_kana")),
            output::sex_label(&s(&v, "/insured/sex"))
        );
        print!(
            "{}",
            fields(&[
                ("資格確認ID", qid.clone()),
                (
                    "方法",
                    if method_label.is_empty() {
                        method.clone()
                    } else {
                        format!("{method_label} ({method})")
                    }
                ),
                ("災害", s(&v, "/disaster/name")),
                ("患者", patient.trim().to_string()),
                ("生年月日", s(&v, "/insured/birth_date")),
                (
                    "請求区分",
                    output::claim_basis_label(&s(&v, "/claim_basis"))
                ),
                ("請求する番号", identity_text(&v, "/claim")),
                ("摘要", s(&v, "/claim/remarks")),
                (
                    "情報共有",
                    if v.get("info_sharing") == Some(&Value::Bool(true)) {
                        "可".into()
                    } else {
                        "不可".into()
                    }
                ),
                ("有効期限", output::jst(&s(&v, "/expires_at"))),
            ])
        );
        for w in v
            .get("warnings")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            println!("注意 {}: {}", s(&w, "/code"), s(&w, "/message"));
        }
        println!("\n次の操作:");
        // The card and disaster mode hand over the patient's prescriptions without a 引換番号.
        if method == "card" || method == "disaster" {
            println!("  pharmacy-client outstanding {qid}");
        }
        println!("  pharmacy-client receive --number <引換番号> … --qualification {qid}");
        Ok(())
    }

    fn outstanding(&self, qid: &str) -> Result<(), Failure> {
        let v = self
            .api
            .get(&format!("/v1/qualifications/{qid}/prescriptions"))?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        let list = v
            .get("prescriptions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            println!("未受付の処方箋はありません。");
            let note = s(&v, "/note");
            if !note.is_empty() {
                println!("{note}");
            }
            return Ok(());
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| {
                let receivable = if p.get("receivable") == Some(&Value::Bool(true)) {
                    "可".to_string()
                } else {
                    let from = s(p, "/receivable_from");
                    let holder = output::facility(p, "/holder");
                    if !from.is_empty() {
                        format!("{from} から")
                    } else if !holder.is_empty() {
                        format!("不可 ({holder})")
                    } else {
                        "不可".to_string()
                    }
                };
                let drugs: Vec<String> = p
                    .get("drugs")
                    .and_then(Value::as_array)
                    .map(|d| {
                        d.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    s(p, "/exchange_number"),
                    output::facility(p, "/issuer"),
                    s(p, "/issued_on"),
                    output::status_label(&s(p, "/status")),
                    receivable,
                    drugs.join("、"),
                    s(p, "/prescription_id"),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "引換番号",
                    "発行元",
                    "交付日",
                    "状態",
                    "受付",
                    "薬品",
                    "処方箋ID"
                ],
                &rows
            )
        );
        println!(
            "\n受付: pharmacy-client receive --prescription-id <処方箋ID> --qualification {qid}"
        );
        Ok(())
    }

    fn access_log(&self, qid: &str) -> Result<(), Failure> {
        let v = self
            .api
            .get(&format!("/v1/qualifications/{qid}/access-log"))?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        let entries = v
            .get("entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        println!("あなたの処方箋・お薬の情報の閲覧記録（新しい順、日本時間）");
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                let at = s(e, "/at")
                    .parse::<jiff::Timestamp>()
                    .map(output::jst_minutes)
                    .unwrap_or_else(|_| s(e, "/at"));
                vec![
                    at,
                    output::facility(e, "/facility"),
                    output::role_label(&s(e, "/role")).to_string(),
                    s(e, "/description"),
                    s(e, "/issued_on"),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["日時", "施設", "職種", "内容", "処方箋の交付日"], &rows)
        );
        if v.get("truncated") == Some(&Value::Bool(true)) {
            println!("（新しい 500 件を表示しています）");
        }
        let note = s(&v, "/note");
        if !note.is_empty() {
            println!("\n{note}");
        }
        Ok(())
    }

    fn check(&self, file: &Path) -> Result<(), Failure> {
        let mut body = read_json_file(file)?;
        if let Some(o) = body.as_object_mut() {
            o.entry("context").or_insert_with(|| json!("dispensing"));
        }
        let v = self.api.post("/v1/checks", &body)?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        let hits = v
            .get("hits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        println!("チェックID: {}", s(&v, "/check_id"));
        if hits.is_empty() {
            println!("重複投薬・併用禁忌はありません。");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = hits
            .iter()
            .map(|h| {
                let kind = match s(h, "/kind").as_str() {
                    "duplicate" => "重複投薬".to_string(),
                    "contraindication" => "併用禁忌".to_string(),
                    k => k.to_string(),
                };
                let other = match h.get("other") {
                    Some(Value::Null) | None => "（同意がないため非表示）".to_string(),
                    Some(o) => [s(o, "/drug_name"), s(o, "/name"), s(o, "/date")]
                        .into_iter()
                        .filter(|x| !x.is_empty())
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                vec![
                    s(h, "/hit_id"),
                    kind,
                    s(h, "/new_drug/name"),
                    s(h, "/ingredient"),
                    other,
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["ID", "種類", "薬品", "成分", "相手の薬"], &rows)
        );
        Ok(())
    }

    /// 事前送付: what clinics sent to this pharmacy ahead of the patient, with the RPs to prepare.
    fn incoming(
        &self,
        action: Option<IncomingCommand>,
        status: Option<PresendStatus>,
    ) -> Result<(), Failure> {
        if let Some(IncomingCommand::Prepare { id }) = action {
            let v = self
                .api
                .post(&format!("/v1/presends/{id}/prepared"), &json!({}))?;
            if self.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "準備済みを記録しました（{}）。患者が来局したら、控えまたは保険情報で受付してください。",
                s(&v, "/prepared_at")
            );
            return Ok(());
        }
        let query: Vec<(&str, String)> = status
            .map(|st| {
                vec![(
                    "status",
                    st.to_possible_value()
                        .map(|p| p.get_name().to_string())
                        .unwrap_or_default(),
                )]
            })
            .unwrap_or_default();
        let v = self.api.get_query("/v1/presends", &query)?;
        if self.json {
            print_json(&v);
            return Ok(());
        }
        let list = v
            .get("presends")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            println!("事前送付された処方箋はありません。");
            return Ok(());
        }
        println!("事前送付された処方箋: {} 件\n", list.len());
        for p in &list {
            let status = match s(p, "/status").as_str() {
                "sent" => "未準備",
                "prepared" => "準備済み",
                "received" => "受付済み",
                other => other,
            }
            .to_string();
            print!(
                "{}",
                fields(&[
                    ("送付ID", s(p, "/id")),
                    ("状態", status),
                    ("引換番号", s(p, "/exchange_number")),
                    (
                        "患者",
                        format!(
                            "{} {}",
                            s(p, "/patient/name"),
                            paren(&s(p, "/patient/name_kana"))
                        )
                        .trim()
                        .to_string()
                    ),
                    ("生年月日", s(p, "/patient/birth_date")),
                    ("医療機関", output::facility(p, "/clinic")),
                    ("交付日", s(p, "/issued_on")),
                    ("使用期限", s(p, "/valid_until")),
                    ("送付日時", s(p, "/presented_at").chars().take(16).collect()),
                    ("備考", s(p, "/remarks")),
                ])
            );
            let rps = p
                .get("rps")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            print!("{}", rps_table(&rps));
            println!();
        }
        println!(
            "次にできること: 準備したら pharmacy-client incoming prepare <送付ID>。\n\
             来局したら控えを読むか (pharmacy-client scan 画像)、引換番号と保険情報で受付します \
             (pharmacy-client receive --number <引換番号> …)。事前送付は受付の代わりにはなりません。"
        );
        Ok(())
    }

    fn fallback(&self, f: FallbackCommand) -> Result<i32, Failure> {
        match f {
            FallbackCommand::Request {
                number,
                identity,
                prescription_id,
                reason,
                preferred,
                note,
                clinic,
            } => {
                let preferred = match preferred {
                    crate::Preferred::Fax => "fax",
                    crate::Preferred::PaperReissue => "paper_reissue",
                };
                let mut body = json!({"reason": reason, "preferred": preferred});
                let by_number = prescription_id.is_none();
                if let Some(id) = prescription_id {
                    body["prescription_id"] = json!(id);
                } else {
                    body["exchange_number"] = json!(number.unwrap_or_default());
                    body["insured"] = self.identity(identity, None)?;
                }
                if let Some(n) = note {
                    body["note"] = json!(n);
                }
                let v = match self.api.post("/v1/fallbacks", &body) {
                    Ok(v) => v,
                    // The relay is down: ask the clinic directly and keep the request for `sync`.
                    Err(down) if down.relay_down() && by_number => {
                        return sync::request_offline(self, body, clinic.as_deref(), &down);
                    }
                    Err(down) if down.relay_down() => {
                        return Err(Failure::OfflineNotPossible(format!(
                            "{}\nリレーに接続できないときは、処方箋IDではなく引換番号と保険情報、--clinic で依頼してください。",
                            crate::output::plain(&down)
                        )));
                    }
                    Err(e) => return Err(e),
                };
                if self.json {
                    print_json(&v);
                    return Ok(exit::OK);
                }
                println!(
                    "処方元の医療機関に紙・FAXでの発行を依頼しました（医療機関にはメールで通知されます）。\n"
                );
                print!("{}", fallback_text(&v));
                Ok(exit::OK)
            }
            FallbackCommand::List { status } => {
                let query: Vec<(&str, String)> =
                    status.map(|s| vec![("status", s)]).unwrap_or_default();
                let v = self.api.get_query("/v1/fallbacks", &query)?;
                if self.json {
                    print_json(&v);
                    return Ok(exit::OK);
                }
                let list = v
                    .get("fallbacks")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    println!("該当する依頼はありません。");
                    return Ok(exit::OK);
                }
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            s(c, "/fallback_id"),
                            output::status_label(&s(c, "/status")),
                            s(c, "/exchange_number"),
                            output::facility(c, "/clinic"),
                            mode_label(&s(c, "/preferred")).to_string(),
                            s(c, "/requested_at").chars().take(16).collect(),
                            s(c, "/reason"),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "依頼ID",
                            "状態",
                            "引換番号",
                            "医療機関",
                            "希望",
                            "依頼日時",
                            "理由"
                        ],
                        &rows
                    )
                );
                Ok(exit::OK)
            }
            FallbackCommand::Dispensed { id, dispensed_on } => {
                let v = self.api.post(
                    &format!("/v1/fallbacks/{id}/dispensed"),
                    &json!({"dispensed_on": dispensed_on.unwrap_or_else(today)}),
                )?;
                if self.json {
                    print_json(&v);
                    return Ok(exit::OK);
                }
                println!("FAXで調剤したことを記録しました。原本の郵送を待ってください。\n");
                print!("{}", fallback_text(&v));
                Ok(exit::OK)
            }
            FallbackCommand::Received {
                id,
                matches,
                differs: _,
                note,
                received_on,
            } => {
                let mut body = json!({
                    "received_on": received_on.unwrap_or_else(today),
                    "matches": matches,
                });
                if let Some(n) = note {
                    body["note"] = json!(n);
                }
                let v = self
                    .api
                    .post(&format!("/v1/fallbacks/{id}/original-received"), &body)?;
                if self.json {
                    print_json(&v);
                    return Ok(exit::OK);
                }
                println!(
                    "原本の受領を記録しました（照合: {}）。\n",
                    if matches {
                        "FAXと一致"
                    } else {
                        "FAXと相違"
                    }
                );
                print!("{}", fallback_text(&v));
                Ok(exit::OK)
            }
        }
    }
}

fn paren(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("（{s}）")
    }
}

fn mode_label(mode: &str) -> &str {
    match mode {
        "fax" => "FAX",
        "paper_reissue" => "紙で再発行",
        other => other,
    }
}

fn identity_text(v: &Value, at: &str) -> String {
    let insurer = s(v, &format!("{at}/insurer_number"));
    if insurer.is_empty() {
        return String::new();
    }
    let symbol = s(v, &format!("{at}/symbol"));
    format!(
        "保険者番号 {insurer}  記号 {}  番号 {}  枝番 {}",
        if symbol.is_empty() {
            "なし".into()
        } else {
            symbol
        },
        s(v, &format!("{at}/number")),
        s(v, &format!("{at}/branch"))
    )
}

fn fallback_body(f: Box<FallbackEligibility>) -> Value {
    let method = f
        .method
        .to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default();
    let mut insured = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            insured.insert(k.into(), json!(v));
        }
    };
    put("insurer_number", f.identity.insurer);
    put("symbol", f.identity.symbol);
    put("number", f.identity.insured_number);
    put("branch", f.identity.branch);
    put("name", f.name);
    put("name_kana", f.name_kana);
    put("birth_date", f.birth_date);
    put(
        "sex",
        f.sex.map(|s| match s {
            crate::Sex::Male => "male".into(),
            crate::Sex::Female => "female".into(),
        }),
    );
    let mut body = json!({"method": method, "card_presented": f.card_presented});
    if !insured.is_empty() {
        body["insured"] = Value::Object(insured);
    }
    if let Some(address) = f.address {
        body["declaration"] = json!({"address": address, "contact": f.contact});
    }
    if let Some(d) = f.legacy_document {
        body["legacy_document"] = json!(match d {
            crate::LegacyDocument::HealthInsuranceCard => "health_insurance_card",
            crate::LegacyDocument::EligibilityNotice => "eligibility_notice",
        });
    }
    if let Some(d) = f.document_valid_until {
        body["document_valid_until"] = json!(d);
    }
    if f.verbal_consent {
        body["verbal_consent"] = json!(true);
    }
    body
}

fn fallback_text(v: &Value) -> String {
    fields(&[
        ("依頼ID", s(v, "/fallback_id")),
        ("状態", output::status_label(&s(v, "/status"))),
        ("引換番号", s(v, "/exchange_number")),
        ("処方箋ID", s(v, "/prescription_id")),
        ("医療機関", output::facility(v, "/clinic")),
        ("希望", mode_label(&s(v, "/preferred")).to_string()),
        ("理由", s(v, "/reason")),
        ("補足", s(v, "/note")),
        ("原本受領日", s(v, "/original_received_on")),
        ("照合メモ", s(v, "/original_note")),
    ])
}

/// A prescription view (receive / show) for people.
fn prescription_text(v: &Value) -> String {
    let p = v.get("prescription").cloned().unwrap_or(Value::Null);
    let patient = format!(
        "{} {} {}",
        s(&p, "/patient/name"),
        paren(&s(&p, "/patient/name_kana")),
        output::sex_label(&s(&p, "/patient/sex"))
    );
    let relationship = match s(&p, "/insurance/relationship").as_str() {
        "insured" => "本人",
        "dependent" => "家族",
        _ => "",
    };
    let copay = s(&p, "/insurance/copay_rate");
    let insurance = format!(
        "{}{}{}",
        identity_text(&p, "/insurance"),
        paren(relationship),
        if copay.is_empty() {
            String::new()
        } else {
            format!(" 負担割合 {copay}%")
        }
    );
    let refill = s(&p, "/refill_count");
    let mut out = fields(&[
        ("処方箋ID", s(v, "/prescription_id")),
        ("引換番号", s(v, "/exchange_number")),
        ("状態", output::status_label(&s(v, "/status"))),
        ("発行元", output::facility(v, "/issuer")),
        ("受付薬局", output::facility(v, "/holder")),
        ("交付日", s(&p, "/issued_on")),
        ("使用期限", s(&p, "/valid_until")),
        (
            "リフィル",
            if refill.is_empty() {
                String::new()
            } else {
                format!("{refill} 回 (調剤済 {} 回)", s(v, "/uses_dispensed"))
            },
        ),
        ("患者", patient.trim().to_string()),
        ("生年月日", s(&p, "/patient/birth_date")),
        ("保険", insurance),
        ("備考", s(&p, "/remarks")),
        (
            "請求区分",
            match s(v, "/qualification/claim_basis") {
                b if b.is_empty() => String::new(),
                b => output::claim_basis_label(&b),
            },
        ),
        (
            "重複等",
            match s(v, "/check/override/label") {
                l if l.is_empty() => String::new(),
                l => format!("{l}: {}", s(v, "/check/override/reason")),
            },
        ),
    ]);
    let rps = p
        .get("rps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rp_table = rps_table(&rps);
    if !rp_table.is_empty() {
        out += "\n";
        out += &rp_table;
    }
    if let Some(ds) = v.get("dispensings").and_then(Value::as_array)
        && !ds.is_empty()
    {
        out += &format!("\n  調剤結果: {} 件", ds.len());
        if v.get("has_important_note") == Some(&Value::Bool(true)) {
            out += "（重要な伝達事項あり）";
        }
        out += "\n";
    }
    out
}

/// The RPs of a prescription as a table (empty when there are none).
fn rps_table(rps: &[Value]) -> String {
    let mut rows = Vec::new();
    for (i, rp) in rps.iter().enumerate() {
        let form = s(rp, "/dosage_form");
        for (j, d) in rp
            .get("drugs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let first = j == 0;
            let mut name = s(d, "/name");
            if d.get("no_substitution") == Some(&Value::Bool(true)) {
                name += " 【変更不可】";
            }
            rows.push(vec![
                if first {
                    format!("{}", i + 1)
                } else {
                    String::new()
                },
                if first {
                    output::dosage_form_label(&form).to_string()
                } else {
                    String::new()
                },
                name,
                format!("{} {}", s(d, "/dose"), s(d, "/unit")),
                if first {
                    s(rp, "/usage/text")
                } else {
                    String::new()
                },
                if first {
                    output::quantity_label(&form, &s(rp, "/quantity"))
                } else {
                    String::new()
                },
            ]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    table(
        &["Rp", "剤形", "薬品名", "用量", "用法", "日数・回数"],
        &rows,
    )
}
