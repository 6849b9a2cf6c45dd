//! Configuration (TOML file, then environment variables, then flags) and the stored token.
//!
//! File: `$XDG_CONFIG_HOME/pharmacy-client/config.toml` (else `~/.config/…`), or `--config PATH`.
//! Token: `token` beside it by default, written with mode 0600 in a 0700 directory.
//! Offline state (the directory cache and the queue): `$XDG_STATE_HOME/pharmacy-client` (else
//! `~/.local/state/…`), or `state_dir`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::Failure;

pub const DEFAULT_RELAY: &str = "http://127.0.0.1:8080";

/// What `config.toml` may contain.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The relay's base URL, e.g. `https://relay.example.jp`.
    pub relay_url: Option<String>,
    /// Where `login` stores the token (default: `token` in the configuration directory).
    pub token_file: Option<PathBuf>,
    /// Per-request timeout in seconds (default 30).
    pub timeout_secs: Option<u64>,
    /// Where the directory cache and the offline queue live.
    pub state_dir: Option<PathBuf>,
    /// The pharmacy's own SMTP server, for mailing a clinic directly while the relay is down:
    /// `smtp://user:pass@host:587?tls=required`, `smtps://host`, `smtp://127.0.0.1:25`.
    pub smtp_url: Option<String>,
    /// The sender of those mails, e.g. `○○薬局 <rx@pharmacy.example>` (default: the pharmacy's
    /// address in the directory).
    pub mail_from: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub relay_url: String,
    pub config_file: PathBuf,
    pub token_file: PathBuf,
    pub timeout: Duration,
    pub state_dir: PathBuf,
    pub smtp_url: Option<String>,
    pub mail_from: Option<String>,
}

/// `$<xdg_var>/pharmacy-client` (absolute values only, as the XDG spec says), else
/// `$HOME/<home_fallback>/pharmacy-client`.
fn xdg_dir(xdg_var: &str, home_fallback: &str, setting: &str) -> Result<PathBuf, Failure> {
    if let Some(x) = std::env::var_os(xdg_var).map(PathBuf::from)
        && x.is_absolute()
    {
        return Ok(x.join("pharmacy-client"));
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => {
            Ok(PathBuf::from(h).join(home_fallback).join("pharmacy-client"))
        }
        _ => Err(Failure::Usage(format!(
            "ディレクトリが決められません: {xdg_var} も HOME も設定されていません ({setting} で指定できます)"
        ))),
    }
}

/// The configuration directory: `$XDG_CONFIG_HOME/pharmacy-client`, else `~/.config/…`.
pub fn config_dir() -> Result<PathBuf, Failure> {
    xdg_dir("XDG_CONFIG_HOME", ".config", "--config PATH")
}

/// The offline state: `$XDG_STATE_HOME/pharmacy-client`, else `~/.local/state/…`.
fn state_dir() -> Result<PathBuf, Failure> {
    xdg_dir(
        "XDG_STATE_HOME",
        ".local/state",
        "設定ファイルの state_dir か PHARMACY_STATE_DIR",
    )
}

fn env_or(name: &str, file: Option<String>) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or(file)
        .map(|v| v.trim().to_string())
}

/// Loads the settings: `--relay`/`PHARMACY_RELAY_URL` (clap merges the two) over the file over
/// the default. `explicit_config` is `--config`/`PHARMACY_CLIENT_CONFIG`: it must exist.
pub fn load(
    relay_flag: Option<String>,
    explicit_config: Option<PathBuf>,
) -> Result<Settings, Failure> {
    let dir = config_dir()?;
    let (config_file, must_exist) = match explicit_config {
        Some(p) => (p, true),
        None => (dir.join("config.toml"), false),
    };
    let file = match fs::read_to_string(&config_file) {
        Ok(text) => toml::from_str::<FileConfig>(&text).map_err(|e| {
            Failure::Usage(format!(
                "設定ファイル {} を読めません: {e}",
                config_file.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => FileConfig::default(),
        Err(e) => {
            return Err(Failure::Usage(format!(
                "設定ファイル {} を読めません: {e}",
                config_file.display()
            )));
        }
    };
    let relay_url = relay_flag
        .filter(|s| !s.trim().is_empty())
        .or(file.relay_url)
        .unwrap_or_else(|| DEFAULT_RELAY.to_string());
    let relay_url = relay_url.trim().trim_end_matches('/').to_string();
    if !(relay_url.starts_with("http://") || relay_url.starts_with("https://")) {
        return Err(Failure::Usage(format!(
            "リレーのURL「{relay_url}」は http:// または https:// で始めてください"
        )));
    }
    let token_file = std::env::var_os("PHARMACY_TOKEN_FILE")
        .map(PathBuf::from)
        .or(file.token_file)
        .unwrap_or_else(|| dir.join("token"));
    let timeout_secs = std::env::var("PHARMACY_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .or(file.timeout_secs)
        .unwrap_or(30);
    let state_dir = match std::env::var_os("PHARMACY_STATE_DIR")
        .map(PathBuf::from)
        .or(file.state_dir)
    {
        Some(d) => d,
        None => state_dir()?,
    };
    Ok(Settings {
        relay_url,
        config_file,
        token_file,
        timeout: Duration::from_secs(timeout_secs.max(1)),
        state_dir,
        smtp_url: env_or("PHARMACY_SMTP_URL", file.smtp_url),
        mail_from: env_or("PHARMACY_MAIL_FROM", file.mail_from),
    })
}

/// The token to send: `PHARMACY_TOKEN` if set, else the stored file (None when neither).
pub fn read_token(s: &Settings) -> Result<Option<String>, Failure> {
    if let Ok(t) = std::env::var("PHARMACY_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_string()));
    }
    match fs::read_to_string(&s.token_file) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::Other(format!(
            "トークンファイル {} を読めません: {e}",
            s.token_file.display()
        ))),
    }
}

/// Writes the token readable by the user only (see [`write_private`]).
pub fn save_token(path: &Path, token: &str) -> Result<(), Failure> {
    write_private(path, format!("{token}\n").as_bytes())
}

/// Writes `bytes` to `path` readable by the user only: the directory is created 0700, the file is
/// written to a 0600 temporary beside it, synced and renamed over the old one — a crash leaves the
/// old or the new version, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let io =
        |what: &str, e: std::io::Error| Failure::Other(format!("{what} {}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("ディレクトリを作れません", e))?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("書けません", e))?;
    // The mode above applies only to a new file; make sure of it either way.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all())
        .map_err(|e| io("書けません", e))?;
    fs::rename(&tmp, path).map_err(|e| io("保存できません", e))
}

/// Removes the stored token; Ok(false) when there was none.
pub fn remove_token(path: &Path) -> Result<bool, Failure> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Failure::Other(format!(
            "トークン {} を削除できません: {e}",
            path.display()
        ))),
    }
}
