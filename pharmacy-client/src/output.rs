//! Output for people: Japanese labels, tables aligned by display width (full-width characters
//! take two columns), and errors with their code and what to do next.

use serde_json::Value;
use unicode_width::UnicodeWidthStr;

use crate::api::{Failure, Problem};

pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

fn pad(s: &str, w: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(width(s))));
    out
}

/// `label  value` lines with the values aligned.
pub fn fields(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(l, _)| width(l)).max().unwrap_or(0);
    rows.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(l, v)| format!("  {}  {v}\n", pad(l, w)))
        .collect()
}

/// A table with a header and a rule, columns as wide as their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(width(c));
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&pad(c, widths[i]));
                s.push_str("  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out += &line(widths.iter().map(|w| "─".repeat(*w)).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

/// The string at a JSON pointer ("" when absent or null); numbers and booleans as text.
pub fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Japan time (bundled tzdb; UTC only if it were missing).
pub fn tokyo_tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Asia/Tokyo").unwrap_or(jiff::tz::TimeZone::UTC)
}

/// `2026-05-01 10:15` in Japan time.
pub fn jst_minutes(t: jiff::Timestamp) -> String {
    t.to_zoned(tokyo_tz())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

/// An RFC 3339 time from the relay in Japan time (as given when it does not parse).
pub fn jst(raw: &str) -> String {
    match raw.parse::<jiff::Timestamp>() {
        Ok(t) => format!("{} (日本時間)", jst_minutes(t)),
        Err(_) => raw.to_string(),
    }
}

pub fn status_label(status: &str) -> String {
    let ja = match status {
        "registered" => "未受付",
        "dispensing" => "調剤中",
        "dispensed" => "調剤済",
        "cancelled" => "取消",
        "expired" => "期限切れ",
        "pending_cancellation" => "取消待ち（受付取消で取消されます）",
        "requested" => "依頼中",
        "withdrawn" => "取り下げ",
        "paper_reissued" => "紙で再発行済",
        "faxed" => "FAX送信済",
        "dispensed_from_fax" => "FAXで調剤済",
        "original_mailed" => "原本郵送済",
        "closed" => "完了（原本受領）",
        other => return other.to_string(),
    };
    format!("{ja} ({status})")
}

pub fn sex_label(sex: &str) -> &str {
    match sex {
        "male" => "男",
        "female" => "女",
        other => other,
    }
}

pub fn dosage_form_label(form: &str) -> &str {
    match form {
        "oral" => "内服",
        "as_needed" => "頓服",
        "external" => "外用",
        "oral_drops" => "内服滴剤",
        "injection" => "注射",
        "material" => "材料",
        other => other,
    }
}

pub fn quantity_label(form: &str, quantity: &str) -> String {
    match form {
        "oral" | "oral_drops" => format!("{quantity}日分"),
        "as_needed" => format!("{quantity}回分"),
        _ => quantity.to_string(),
    }
}

pub fn claim_basis_label(basis: &str) -> String {
    let ja = match basis {
        "current" => "A 現資格",
        "previous" => "B 旧資格",
        "unknown" => "C 不詳",
        other => return other.to_string(),
    };
    format!("{ja} ({basis})")
}

pub fn role_label(role: &str) -> &str {
    match role {
        "pharmacist" => "薬剤師",
        "pharmacy_clerk" => "薬局事務",
        "doctor" => "医師",
        "clinic_clerk" => "医療機関事務",
        "admin" => "管理者",
        other => other,
    }
}

pub fn facility(v: &Value, pointer: &str) -> String {
    let code = s(v, &format!("{pointer}/code"));
    let name = s(v, &format!("{pointer}/name"));
    match (name.is_empty(), code.is_empty()) {
        (_, true) => String::new(),
        (true, false) => code,
        (false, false) => format!("{name} ({code})"),
    }
}

/// Prints a failure for people on stderr (and, with `--json`, a JSON body on stdout).
pub fn report(f: &Failure, json: bool) {
    if json {
        let body = match f {
            Failure::Problem(p) => p.raw.clone(),
            other => serde_json::json!({"code": other.code(), "detail": plain(other)}),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    eprint!("{}", human(f));
}

pub fn plain(f: &Failure) -> String {
    match f {
        Failure::Usage(m) | Failure::Other(m) | Failure::OfflineNotPossible(m) => m.clone(),
        Failure::NoToken => "ログインしていません".into(),
        Failure::Problem(p) => p.detail.clone(),
        Failure::Http { status, text } => format!("HTTP {status}: {text}"),
        Failure::Unreachable { url, detail } => {
            format!("リレー ({url}) に接続できません: {detail}")
        }
        Failure::Declined => "中止しました".into(),
    }
}

pub fn human(f: &Failure) -> String {
    match f {
        Failure::Usage(m) => format!("エラー: {m}\n"),
        Failure::Other(m) => format!("エラー: {m}\n"),
        Failure::Declined => "中止しました。リレーには何も送っていません。\n".into(),
        Failure::OfflineNotPossible(m) => format!(
            "エラー OFFLINE_NOT_POSSIBLE: {m}\nリレーにも医療機関にも何も送っていません。\n"
        ),
        Failure::NoToken => "エラー: ログインしていません。\n次にできること: pharmacy-client login --token <JWT> でトークンを保存してください（トークンは薬局の管理者から受け取ります）。\n".into(),
        Failure::Unreachable { url, detail } => format!(
            "エラー RELAY_UNREACHABLE: リレー ({url}) に接続できません: {detail}\n\
             リレーには何も記録されていません。\n\
             次にできること:\n  \
             - ネットワークと --relay / PHARMACY_RELAY_URL の URL を確認し、しばらくして再実行してください。\n  \
             - 処方箋を受け取れない場合は、処方元の医療機関に紙またはFAXでの発行を依頼できます。\n    \
             リレーが使えない間も、医療機関へ直接メールで依頼し、この端末に保存します（復旧後に sync）:\n    \
             pharmacy-client fallback request --clinic <医療機関コード> --number <引換番号> --insurer … --insured-number … --branch … --reason \"…\" --preferred fax\n"
        ),
        Failure::Http { status, text } => {
            let mut out = format!("エラー HTTP {status}: {text}\n");
            if (502..=504).contains(status) {
                out += "次にできること: リレーが応答していません。しばらくして再実行するか、pharmacy-client fallback request で紙・FAXを依頼してください。\n";
            }
            out
        }
        Failure::Problem(p) => problem(p),
    }
}

fn problem(p: &Problem) -> String {
    let mut out = format!("エラー {}: {}\n", p.code, p.detail);
    for e in &p.errors {
        out += &format!("  {}: {}", e.field, e.message);
        if !e.code.is_empty() {
            out += &format!(" ({})", e.code);
        }
        out += "\n";
    }
    let holder = facility(&p.raw, "/holder");
    if !holder.is_empty() {
        out += &format!("  受付済みの薬局: {holder}\n");
    }
    for (key, label) in [
        ("current_status", "現在の状態"),
        ("fallback_id", "既存の依頼ID"),
    ] {
        let v = s(&p.raw, &format!("/{key}"));
        if !v.is_empty() {
            let v = if key == "current_status" {
                status_label(&v)
            } else {
                v
            };
            out += &format!("  {label}: {v}\n");
        }
    }
    if let Some(steps) = p.raw.get("next_steps").and_then(Value::as_array) {
        out += "次の手順:\n";
        for step in steps.iter().filter_map(Value::as_str) {
            out += &format!("  - {step}\n");
        }
    }
    if let Some(ladder) = p.raw.get("fallback_ladder").and_then(Value::as_array) {
        out += "資格確認の代替手段 (pharmacy-client eligibility fallback --method …):\n";
        for step in ladder {
            out += &format!(
                "  {}  [--method {}]\n",
                s(step, "/label"),
                s(step, "/method")
            );
        }
    }
    let hint = match (p.status, p.code.as_str()) {
        (_, "HELD_BY_ANOTHER_PHARMACY") => {
            "他の薬局がすでに受付しています。その薬局が受付取消するまで、この薬局では受付できません。".to_string()
        }
        (_, "PRESCRIPTION_NOT_FOUND") => "引換番号と、保険者番号・記号・番号・枝番を患者さんの控えや資格確認の結果と照らして確認してください（失敗は回数制限に数えられます）。".to_string(),
        (410, _) => "この処方箋はもう使えません。処方元の医療機関に連絡してください。".to_string(),
        (429, _) => format!(
            "受付の失敗が続いたため一時的に制限されています。{}再実行してください。",
            p.retry_after.map(|s| format!("{s} 秒後に")).unwrap_or_default()
        ),
        (401, _) => "トークンが無効か期限切れです。pharmacy-client login --token <JWT> で新しいトークンを保存してください。".to_string(),
        (403, _) => "この操作の権限がありません（調剤結果の登録と受付取消は薬剤師のみ）。pharmacy-client whoami でログイン中の施設と役割を確認してください。".to_string(),
        (400 | 422, _) if !p.errors.is_empty() => "上の項目を直して、もう一度実行してください。".to_string(),
        (503, _) => format!(
            "リレーが一時的に利用できません。{}再実行するか、pharmacy-client fallback request で紙・FAXを依頼してください。",
            p.retry_after.map(|s| format!("{s} 秒後に")).unwrap_or_default()
        ),
        (500, _) => "リレー内部のエラーです。同じ操作をもう一度実行してください。".to_string(),
        _ => String::new(),
    };
    if !hint.is_empty() {
        out += &format!("次にできること: {hint}\n");
    }
    out
}
