//! Offline mode: the directory cache (`directory sync|list`), a fallback request made while the
//! relay is unreachable (mailed straight to the clinic and queued), `sync` (uploading the queue
//! with the records' own idempotency keys), `status`, `queue retry|discard`, and the reminder
//! line every other command prints while records wait.
//!
//! The rule throughout: nothing done offline is reported as done on the relay. A queued request
//! ends with exit code 7, `status` and the reminder show what waits and when `sync` last reached
//! the relay, and a record the relay refuses waits for a person (`要確認`) instead of being
//! retried for ever or dropped.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::{Conditional, Failure, exit};
use crate::commands::{Ctx, jwt_claims, print_json, prompt};
use crate::config::{self, Settings};
use crate::mailer::{self, DirectMail};
use crate::offline::{
    CachedDirectory, ClinicRef, KIND_FALLBACK_REQUEST, MailRecord, QueueStatus, Queued, State,
    SyncRecord,
};
use crate::output::{self, fields, s, table};
use crate::{FacilityKind, QueueCommand};

fn jst_opt(t: Option<Timestamp>, none: &str) -> String {
    t.map(output::jst_minutes)
        .unwrap_or_else(|| none.to_string())
}

// ---------------------------------------------------------------------------------------------
// The directory cache
// ---------------------------------------------------------------------------------------------

/// Fetches the directory unless the cached one is current; returns it and whether it changed.
fn refresh_directory(ctx: &Ctx, state: &State) -> Result<(CachedDirectory, bool), Failure> {
    let cached = state.directory()?;
    let etag = cached.as_ref().and_then(|c| c.etag.clone());
    match ctx.api.get_conditional("/v1/directory", etag.as_deref())? {
        Conditional::NotModified => {
            let mut c = cached.ok_or_else(|| {
                Failure::Other("リレーが 304 を返しましたが、保存した施設一覧がありません".into())
            })?;
            c.fetched_at = Timestamp::now();
            state.save_directory(&c)?;
            Ok((c, false))
        }
        Conditional::Fresh { body, etag } => {
            let c = CachedDirectory {
                fetched_at: Timestamp::now(),
                etag,
                directory: body,
            };
            state.save_directory(&c)?;
            Ok((c, true))
        }
    }
}

pub fn directory_sync(ctx: &Ctx) -> Result<i32, Failure> {
    let state = State::new(&ctx.settings.state_dir);
    let (d, changed) = refresh_directory(ctx, &state)?;
    if ctx.json {
        print_json(&json!({
            "changed": changed,
            "version": d.directory.get("version"),
            "facilities": d.facilities().len(),
            "fetched_at": d.fetched_at,
            "path": state.dir().join("directory.json"),
        }));
        return Ok(exit::OK);
    }
    println!(
        "施設一覧を{}: {} 施設 (版 {})。\n保存先: {}\nリレーに接続できないときも、医療機関のメール・FAX送信先をここから使います。",
        if changed {
            "保存しました"
        } else {
            "確認しました (変更なし)"
        },
        d.facilities().len(),
        s(&d.directory, "/version"),
        state.dir().join("directory.json").display()
    );
    Ok(exit::OK)
}

pub fn directory_list(
    settings: &Settings,
    kind: Option<FacilityKind>,
    search: Option<&str>,
    json: bool,
) -> Result<i32, Failure> {
    let state = State::new(&settings.state_dir);
    let Some(d) = state.directory()? else {
        return Err(Failure::Usage(
            "施設一覧がこの端末にありません。リレーに接続できるときに pharmacy-client directory sync を実行してください".into(),
        ));
    };
    let kind = kind.map(|k| match k {
        FacilityKind::Clinic => "clinic",
        FacilityKind::Pharmacy => "pharmacy",
    });
    let list: Vec<Value> = d
        .facilities()
        .into_iter()
        .filter(|f| kind.is_none_or(|k| s(f, "/kind") == k))
        .filter(|f| {
            search.is_none_or(|q| {
                s(f, "/name").contains(q.trim()) || s(f, "/code").contains(q.trim())
            })
        })
        .collect();
    if json {
        print_json(
            &json!({"fetched_at": d.fetched_at, "version": d.directory.get("version"), "facilities": list}),
        );
        return Ok(exit::OK);
    }
    println!(
        "施設一覧 (取得 {}、版 {}): {} 件\n",
        output::jst_minutes(d.fetched_at),
        s(&d.directory, "/version"),
        list.len()
    );
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            vec![
                s(f, "/code"),
                match s(f, "/kind").as_str() {
                    "clinic" => "医療機関".into(),
                    "pharmacy" => "薬局".into(),
                    other => other.to_string(),
                },
                s(f, "/name"),
                s(f, "/phone"),
                s(f, "/email"),
                s(f, "/fax_email"),
                if f.get("accepts_e_prescriptions") == Some(&Value::Bool(true)) {
                    "可".into()
                } else {
                    "不可".into()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "コード",
                "種別",
                "名称",
                "電話",
                "メール",
                "FAX送信先",
                "電子処方箋"
            ],
            &rows
        )
    );
    Ok(exit::OK)
}

/// The clinic named by `query`: its code, or a part of its name matching one clinic only.
fn find_clinic(d: &CachedDirectory, query: &str) -> Result<Value, Failure> {
    let q = query.trim();
    let clinics: Vec<Value> = d
        .facilities()
        .into_iter()
        .filter(|f| s(f, "/kind") == "clinic")
        .collect();
    if let Some(c) = clinics.iter().find(|f| s(f, "/code") == q) {
        return Ok(c.clone());
    }
    let by_name: Vec<&Value> = clinics
        .iter()
        .filter(|f| !q.is_empty() && s(f, "/name").contains(q))
        .collect();
    match by_name.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Usage(format!(
            "--clinic「{q}」に当たる医療機関が施設一覧 (取得 {}) にありません。医療機関コードで指定するか、pharmacy-client directory list --kind clinic で確認してください",
            output::jst_minutes(d.fetched_at)
        ))),
        many => Err(Failure::Usage(format!(
            "--clinic「{q}」に当たる医療機関が複数あります: {}。医療機関コードで指定してください",
            many.iter()
                .map(|f| format!("{} ({})", s(f, "/name"), s(f, "/code")))
                .collect::<Vec<_>>()
                .join("、")
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// A fallback request while the relay is unreachable
// ---------------------------------------------------------------------------------------------

/// The relay did not answer `POST /v1/fallbacks` (`down`): mail the clinic from the pharmacy's own
/// SMTP server and queue the request for `sync`. The record is written before the mail goes, so
/// a crash in between leaves it queued with its mail marked unsent.
pub fn request_offline(
    ctx: &Ctx,
    body: Value,
    clinic: Option<&str>,
    down: &Failure,
) -> Result<i32, Failure> {
    let why = output::plain(down);
    let state = State::new(&ctx.settings.state_dir);
    let Some(directory) = state.directory()? else {
        return Err(Failure::OfflineNotPossible(format!(
            "{why}\n施設一覧がこの端末にないため、医療機関の連絡先が分かりません。医療機関へ電話・FAXで連絡してください。\n\
             (平常時に pharmacy-client directory sync を実行しておくと、障害時も直接メールで依頼できます)"
        )));
    };
    let query = match clinic {
        Some(c) => c.to_string(),
        None if std::io::stdin().is_terminal() => {
            eprintln!(
                "{why}\nリレーに接続できないため、処方元の医療機関へ直接メールで依頼します。"
            );
            prompt("処方元の医療機関 (コードまたは名称)", None, "--clinic")?
        }
        None => {
            return Err(Failure::OfflineNotPossible(format!(
                "{why}\nリレーに接続できないため、処方元の医療機関へ直接メールで依頼できます: --clinic <医療機関コードまたは名称> を付けて再実行してください。"
            )));
        }
    };
    let clinic = find_clinic(&directory, &query)?;
    let token = config::read_token(&ctx.settings)?.ok_or(Failure::NoToken)?;
    let claims = jwt_claims(&token)?;
    let facility = s(&claims, "/facility");
    let me = directory.by_code(&facility).unwrap_or(Value::Null);

    let local_id = Uuid::now_v7().to_string();
    let mut q = Queued {
        local_id: local_id.clone(),
        kind: KIND_FALLBACK_REQUEST.into(),
        created_at: Timestamp::now(),
        facility: facility.clone(),
        staff: s(&claims, "/sub"),
        clinic: ClinicRef {
            code: s(&clinic, "/code"),
            name: s(&clinic, "/name"),
            email: clinic
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_string),
            phone: clinic
                .get("phone")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        exchange_number: s(&body, "/exchange_number"),
        body,
        mail: MailRecord::default(),
        status: QueueStatus::Waiting,
        attempts: 0,
        last_attempt_at: None,
        problem: None,
        fallback_id: None,
        uploaded_at: None,
        note: None,
    };
    state.save(&q)?;

    let mail = clinic_mail(&q, &me, ctx.settings.mail_from.as_deref());
    q.mail.to = q.clinic.email.clone();
    let sent = match (&ctx.settings.smtp_url, mail) {
        (None, _) => Err(
            "smtp_url が設定されていません (設定ファイルの smtp_url または PHARMACY_SMTP_URL)"
                .to_string(),
        ),
        (Some(_), Err(e)) => Err(e),
        (Some(url), Ok(m)) => {
            q.mail.message_id = Some(m.message_id.clone());
            mailer::send(url, &m, ctx.settings.timeout)
        }
    };
    match &sent {
        Ok(()) => q.mail.sent_at = Some(Timestamp::now()),
        Err(e) => q.mail.error = Some(e.clone()),
    }
    state.save(&q)?;
    let counts = state.counts()?;

    if ctx.json {
        print_json(&json!({
            "on_relay": false,
            "queued": true,
            "local_id": q.local_id,
            "exchange_number": q.exchange_number,
            "clinic": q.clinic.code,
            "clinic_mailed": sent.is_ok(),
            "mail": q.mail,
            "waiting": counts.waiting,
            "reason_offline": why,
        }));
        return Ok(exit::QUEUED);
    }
    println!("{why}");
    println!("この依頼はまだリレーに登録されていません。\n");
    match &sent {
        Ok(()) => println!(
            "処方元の医療機関 {}（{}）に、紙・FAXでの発行の依頼を直接メールで送りました: {}",
            q.clinic.name,
            q.clinic.code,
            q.mail.to.as_deref().unwrap_or_default()
        ),
        Err(e) => println!(
            "医療機関へのメールは送れませんでした: {e}\n→ {}（{}）へ電話{}またはFAXで、引換番号 {} の紙・FAXでの発行を依頼してください。",
            q.clinic.name,
            q.clinic.code,
            q.clinic
                .phone
                .as_deref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default(),
            q.exchange_number
        ),
    }
    print!(
        "{}",
        fields(&[
            ("記録番号", q.local_id.clone()),
            ("引換番号", q.exchange_number.clone()),
            ("状態", "未送信 (この端末に保存)".into()),
            ("保存先", state.dir().join("queue").display().to_string()),
        ])
    );
    println!(
        "\nリレーの復旧後に pharmacy-client sync を実行すると、この依頼がリレーに一度だけ登録されます。\n\
         オフライン待ち: 未送信 {} 件・要確認 {} 件 (pharmacy-client status)",
        counts.waiting, counts.needs_attention
    );
    Ok(exit::QUEUED)
}

fn domain_of(address: &str) -> String {
    let addr = address
        .rsplit_once('<')
        .map_or(address, |(_, a)| a)
        .trim_end_matches('>');
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "pharmacy-client.invalid".into())
}

/// Everything the clinic needs to act without the relay: who asks and how to reach them, the
/// 引換番号 with the insurance identity to find the prescription, the reason and the mode.
fn clinic_mail(q: &Queued, me: &Value, mail_from: Option<&str>) -> Result<DirectMail, String> {
    let to = q
        .clinic
        .email
        .clone()
        .ok_or_else(|| format!("{} のメールアドレスが施設一覧にありません", q.clinic.name))?;
    let own_email = me.get("email").and_then(Value::as_str).map(str::to_string);
    let from = match (mail_from, &own_email) {
        (Some(f), _) => f.to_string(),
        (None, Some(e)) => e.clone(),
        (None, None) => {
            return Err(
                "送信元がありません (設定ファイルの mail_from または PHARMACY_MAIL_FROM)".into(),
            );
        }
    };
    let pharmacy_name = match s(me, "/name") {
        n if n.is_empty() => format!("薬局 {}", q.facility),
        n => n,
    };
    let b = &q.body;
    let preferred = match s(b, "/preferred").as_str() {
        "fax" => "FAXでの送付（原本は後日郵送）",
        _ => "紙の処方箋の再発行",
    };
    let symbol = s(b, "/insured/symbol");
    let text = format!(
        "{clinic} 御中\n\n\
         {pharmacy}（医療機関等コード {code}）です。\n\
         電子処方箋のリレーに接続できないため、下記の電子処方箋を受け付けられません。\n\
         電子処方箋を取り消し、紙の処方箋の交付またはFAXでの送付をお願いします。\n\n\
         引換番号: {number}\n\
         保険者番号: {insurer}\n\
         記号・番号・枝番: {symbol}・{insured}・{branch}\n\
         理由: {reason}\n\
         希望: {preferred}\n\
         {note}\
         依頼日時: {at}（日本時間）\n\n\
         薬局: {pharmacy}（{code}）\n\
         {phone}{fax}{address}\
         薬局側の記録番号: {local_id}\n\n\
         リレーの復旧後、この依頼は同じ記録番号でリレーにも登録され、リレーから通知が届きます。\n\
         それはこの依頼の記録です。すでに紙またはFAXで対応いただいた場合は、二重に発行せず、\n\
         対応した方法をリレーに記録してください。\n\n\
         -- \npharmacy-client（リレー障害時の直接連絡）",
        clinic = q.clinic.name,
        pharmacy = pharmacy_name,
        code = q.facility,
        number = q.exchange_number,
        insurer = s(b, "/insured/insurer_number"),
        symbol = if symbol.is_empty() {
            "（なし）"
        } else {
            &symbol
        },
        insured = s(b, "/insured/number"),
        branch = s(b, "/insured/branch"),
        reason = s(b, "/reason"),
        note = match s(b, "/note") {
            n if n.is_empty() => String::new(),
            n => format!("補足: {n}\n"),
        },
        at = output::jst_minutes(q.created_at),
        phone = match s(me, "/phone") {
            p if p.is_empty() => String::new(),
            p => format!("電話: {p}\n"),
        },
        fax = match s(me, "/fax_email") {
            f if f.is_empty() => String::new(),
            f => format!("FAX送信先（メール）: {f}\n"),
        },
        address = match s(me, "/address") {
            a if a.is_empty() => String::new(),
            a => format!("住所: {a}\n"),
        },
        local_id = q.local_id,
    );
    Ok(DirectMail {
        message_id: format!("{}@{}", q.local_id, domain_of(&from)),
        from,
        reply_to: own_email,
        to,
        subject: format!(
            "【電子処方箋】紙・FAXでの発行のお願い（リレー障害のため薬局から直接連絡）：{}（引換番号 {}）",
            pharmacy_name, q.exchange_number
        ),
        body: text,
    })
}

// ---------------------------------------------------------------------------------------------
// sync
// ---------------------------------------------------------------------------------------------

enum Upload {
    Uploaded,
    NeedsAttention,
    /// The relay is down or will not take requests from this token now: stop, keep the rest.
    Stop(Failure),
}

fn upload(ctx: &Ctx, q: &mut Queued) -> Upload {
    q.attempts += 1;
    q.last_attempt_at = Some(Timestamp::now());
    let uploaded = |q: &mut Queued, id: String, note: Option<String>| {
        q.status = QueueStatus::Uploaded;
        q.fallback_id = Some(id);
        q.uploaded_at = Some(Timestamp::now());
        q.problem = None;
        q.note = note;
        Upload::Uploaded
    };
    match ctx
        .api
        .post_keyed("/v1/fallbacks", &q.upload_body(), &q.idempotency_key())
    {
        Ok(v) => uploaded(q, s(&v, "/fallback_id"), None),
        Err(Failure::Problem(p)) if p.code == "FALLBACK_EXISTS" => {
            // Already on the relay: this record (its first upload's answer was lost), or a case
            // this pharmacy opened for the same prescription once the relay was back.
            let existing = s(&p.raw, "/fallback_id");
            match ctx.api.get(&format!("/v1/fallbacks/{existing}")) {
                Ok(case) if s(&case, "/offline/local_id") == q.local_id => {
                    uploaded(q, existing, None)
                }
                Ok(_) => uploaded(
                    q,
                    existing.clone(),
                    Some(format!(
                        "この処方箋には、この薬局の依頼 {existing} がすでにリレーにあります (同じ依頼として扱いました)"
                    )),
                ),
                Err(e) if e.relay_down() => Upload::Stop(e),
                // Another pharmacy's case: a person must sort it out.
                Err(_) => {
                    q.status = QueueStatus::NeedsAttention;
                    q.problem = Some(p.raw.clone());
                    Upload::NeedsAttention
                }
            }
        }
        Err(e) if e.relay_down() => Upload::Stop(e),
        Err(Failure::Problem(p)) if matches!(p.status, 401 | 403 | 429) || p.status >= 500 => {
            Upload::Stop(Failure::Problem(p))
        }
        Err(Failure::Problem(p)) => {
            q.status = QueueStatus::NeedsAttention;
            q.problem = Some(p.raw.clone());
            Upload::NeedsAttention
        }
        Err(other) => Upload::Stop(other),
    }
}

pub fn sync(ctx: &Ctx) -> Result<i32, Failure> {
    let state = State::new(&ctx.settings.state_dir);
    let _lock = state.lock()?;
    let mut record = state.sync_record()?;
    record.last_attempt_at = Some(Timestamp::now());
    let stop = |record: &mut SyncRecord, e: Failure| -> Result<i32, Failure> {
        record.last_error = Some(output::plain(&e));
        state.save_sync_record(record)?;
        Err(e)
    };
    let directory = match refresh_directory(ctx, &state) {
        Ok((d, _)) => d,
        Err(e) => return stop(&mut record, e),
    };

    let waiting: Vec<Queued> = state
        .pending()?
        .into_iter()
        .filter(|q| q.status == QueueStatus::Waiting)
        .collect();
    let bar = ProgressBar::with_draw_target(
        Some(waiting.len() as u64),
        if ctx.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("送信中 {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut uploaded = Vec::new();
    let mut attention = Vec::new();
    let mut stopped = None;
    for mut q in waiting {
        bar.set_message(format!("引換番号 {}", q.exchange_number));
        let outcome = upload(ctx, &mut q);
        // The record is saved whatever happened: attempts and the relay's answer are kept.
        state.save(&q)?;
        match outcome {
            Upload::Uploaded => uploaded.push(q),
            Upload::NeedsAttention => attention.push(q),
            Upload::Stop(e) => {
                stopped = Some(e);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let counts = state.counts()?;
    if stopped.is_none() {
        record.last_sync_at = Some(Timestamp::now());
        record.last_error = None;
    }
    if let Some(e) = &stopped {
        record.last_error = Some(output::plain(e));
    }
    state.save_sync_record(&record)?;

    if ctx.json {
        let brief = |q: &Queued| {
            json!({"local_id": q.local_id, "exchange_number": q.exchange_number,
                   "fallback_id": q.fallback_id, "note": q.note, "problem": q.problem})
        };
        print_json(&json!({
            "uploaded": uploaded.iter().map(brief).collect::<Vec<_>>(),
            "needs_attention": attention.iter().map(brief).collect::<Vec<_>>(),
            "waiting": counts.waiting,
            "needs_attention_total": counts.needs_attention,
            "last_sync_at": record.last_sync_at,
            "directory_version": directory.directory.get("version"),
            "error": stopped.as_ref().map(|e| json!({"code": e.code(), "detail": output::plain(e)})),
        }));
        return Ok(match &stopped {
            Some(e) => e.exit_code(),
            None if counts.needs_attention > 0 => exit::CONFLICT,
            None => exit::OK,
        });
    }
    println!(
        "施設一覧: {} 施設 (版 {})",
        directory.facilities().len(),
        s(&directory.directory, "/version")
    );
    if uploaded.is_empty() && attention.is_empty() && stopped.is_none() {
        println!("送信する記録はありません。");
    }
    for q in &uploaded {
        println!(
            "送信済み: 引換番号 {} → リレーの依頼 {}{}",
            q.exchange_number,
            q.fallback_id.as_deref().unwrap_or_default(),
            q.note
                .as_deref()
                .map(|n| format!("\n  {n}"))
                .unwrap_or_default()
        );
    }
    for q in &attention {
        println!(
            "要確認: 引換番号 {} — リレーが受け付けませんでした: {} {}",
            q.exchange_number,
            s(q.problem.as_ref().unwrap_or(&Value::Null), "/code"),
            s(q.problem.as_ref().unwrap_or(&Value::Null), "/detail")
        );
    }
    println!(
        "\nオフライン待ち: 未送信 {} 件・要確認 {} 件。最終同期: {}",
        counts.waiting,
        counts.needs_attention,
        jst_opt(record.last_sync_at, "まだ同期していません")
    );
    if counts.needs_attention > 0 {
        println!(
            "要確認の記録は内容を確かめてから pharmacy-client queue retry <番号> または queue discard <番号> --reason \"…\" で扱ってください (pharmacy-client status で一覧)。"
        );
    }
    match stopped {
        Some(e) => {
            println!("送信を途中で止めました。残りはこの端末に保存されたままです。");
            Err(e)
        }
        None if counts.needs_attention > 0 => Ok(exit::CONFLICT),
        None => Ok(exit::OK),
    }
}

// ---------------------------------------------------------------------------------------------
// status, queue, the reminder
// ---------------------------------------------------------------------------------------------

pub fn status(settings: &Settings, json: bool) -> Result<i32, Failure> {
    let state = State::new(&settings.state_dir);
    let pending = state.pending()?;
    let counts = state.counts()?;
    let record = state.sync_record()?;
    let directory = state.directory()?;
    let done = state.done()?;
    let uploaded = done
        .iter()
        .filter(|q| q.status == QueueStatus::Uploaded)
        .count();
    if json {
        print_json(&json!({
            "relay": settings.relay_url,
            "waiting": counts.waiting,
            "needs_attention": counts.needs_attention,
            "last_sync_at": record.last_sync_at,
            "last_attempt_at": record.last_attempt_at,
            "last_error": record.last_error,
            "directory": directory.as_ref().map(|d| json!({
                "fetched_at": d.fetched_at,
                "version": d.directory.get("version"),
                "facilities": d.facilities().len(),
            })),
            "records": pending,
            "uploaded_total": uploaded,
            "discarded_total": done.len() - uploaded,
        }));
        return Ok(exit::OK);
    }
    print!(
        "{}",
        fields(&[
            ("リレー", settings.relay_url.clone()),
            (
                "オフライン待ち",
                format!(
                    "未送信 {} 件・要確認 {} 件",
                    counts.waiting, counts.needs_attention
                )
            ),
            (
                "最終同期",
                jst_opt(record.last_sync_at, "まだ同期していません")
            ),
            (
                "最後の失敗",
                match (&record.last_error, record.last_attempt_at) {
                    (Some(e), Some(at)) => format!("{} {e}", output::jst_minutes(at)),
                    _ => String::new(),
                }
            ),
            (
                "施設一覧",
                match &directory {
                    Some(d) => format!(
                        "{} 施設、取得 {} (版 {})",
                        d.facilities().len(),
                        output::jst_minutes(d.fetched_at),
                        s(&d.directory, "/version")
                    ),
                    None => "未取得 (pharmacy-client directory sync)".into(),
                }
            ),
            (
                "送信済みの記録",
                format!("{uploaded} 件 (取りやめ {} 件)", done.len() - uploaded)
            ),
            ("保存先", state.dir().display().to_string()),
        ])
    );
    if pending.is_empty() {
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = pending
        .iter()
        .map(|q| {
            vec![
                q.local_id.clone(),
                q.status.label().to_string(),
                q.exchange_number.clone(),
                format!("{} ({})", q.clinic.name, q.clinic.code),
                output::jst_minutes(q.created_at),
                match (&q.mail.sent_at, &q.mail.error) {
                    (Some(at), _) => format!("送信 {}", output::jst_minutes(*at)),
                    (None, Some(_)) => "送れず (電話・FAXで連絡)".into(),
                    (None, None) => "未送信".into(),
                },
                q.problem
                    .as_ref()
                    .map(|p| format!("{} {}", s(p, "/code"), s(p, "/detail")))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(
            &[
                "記録番号",
                "状態",
                "引換番号",
                "医療機関",
                "依頼日時",
                "医療機関へのメール",
                "リレーの応答"
            ],
            &rows
        )
    );
    if counts.waiting > 0 {
        println!("\n未送信の記録は、リレーに接続できるときに pharmacy-client sync で送信します。");
    }
    if counts.needs_attention > 0 {
        println!(
            "要確認の記録は、リレーの応答を確かめてから pharmacy-client queue retry <記録番号> で送り直すか、\n\
             queue discard <記録番号> --reason \"…\" で取りやめてください。"
        );
    }
    Ok(exit::OK)
}

pub fn queue(settings: &Settings, command: QueueCommand, json: bool) -> Result<i32, Failure> {
    let state = State::new(&settings.state_dir);
    let mut q = match &command {
        QueueCommand::Retry { id } | QueueCommand::Discard { id, .. } => state.find_pending(id)?,
    };
    match command {
        QueueCommand::Retry { .. } => {
            if q.status == QueueStatus::Waiting {
                return Err(Failure::Usage(format!(
                    "記録 {} はすでに送信待ちです。pharmacy-client sync で送信します",
                    q.local_id
                )));
            }
            q.status = QueueStatus::Waiting;
            q.problem = None;
        }
        QueueCommand::Discard { reason, .. } => {
            if reason.trim().is_empty() {
                return Err(Failure::Usage(
                    "--reason に取りやめる理由を書いてください".into(),
                ));
            }
            q.status = QueueStatus::Discarded;
            q.note = Some(format!(
                "{} (取りやめ {})",
                reason.trim(),
                output::jst_minutes(Timestamp::now())
            ));
        }
    }
    state.save(&q)?;
    if json {
        print_json(&serde_json::to_value(&q).unwrap_or_default());
        return Ok(exit::OK);
    }
    match q.status {
        QueueStatus::Waiting => println!(
            "記録 {} (引換番号 {}) を送信待ちに戻しました。pharmacy-client sync で送信します。",
            q.local_id, q.exchange_number
        ),
        _ => println!(
            "記録 {} (引換番号 {}) を取りやめました。リレーには送りません (記録は {} に残ります)。",
            q.local_id,
            q.exchange_number,
            state.dir().join("done").display()
        ),
    }
    Ok(exit::OK)
}

/// One line for stderr while records wait, or None.
pub fn reminder(settings: &Settings) -> Option<String> {
    let state = State::new(&settings.state_dir);
    let counts = match state.counts() {
        Ok(c) => c,
        Err(e) => {
            return Some(format!(
                "注意: オフラインの記録を読めません: {}",
                output::plain(&e)
            ));
        }
    };
    if counts.waiting == 0 && counts.needs_attention == 0 {
        return None;
    }
    let last = state
        .sync_record()
        .ok()
        .and_then(|r| r.last_sync_at)
        .map(output::jst_minutes)
        .unwrap_or_else(|| "まだ同期していません".into());
    Some(format!(
        "注意: リレーに未登録のオフライン記録があります — 未送信 {} 件・要確認 {} 件 (最終同期: {})。pharmacy-client status / sync",
        counts.waiting, counts.needs_attention, last
    ))
}
