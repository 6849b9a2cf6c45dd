//! What the client keeps on disk for when the relay cannot be reached (`state_dir`):
//!
//! - `directory.json` — the facility directory from `GET /v1/directory` (clinic mail and FAX
//!   addresses), with its `ETag` and when it was fetched;
//! - `queue/<local_id>.json` — fallback requests made while the relay was unreachable, waiting for
//!   `sync` or for a person (the relay refused them);
//! - `done/<local_id>.json` — the same records once uploaded or discarded, kept for the record;
//! - `sync.json` — when `sync` last reached the relay; `sync.lock` — one `sync` at a time.
//!
//! Every file is written to a temporary beside it (mode 0600, directory 0700) and renamed, so a
//! crash leaves the old or the new version, never half of one. Nothing here is ever deleted by the
//! client: a queued record leaves `queue/` only by being moved to `done/`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::Failure;
use crate::config;

/// The facility directory as last fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedDirectory {
    pub fetched_at: Timestamp,
    pub etag: Option<String>,
    /// The relay's answer as it was (`{version, generated_at, facilities: [...]}`).
    pub directory: Value,
}

impl CachedDirectory {
    pub fn facilities(&self) -> Vec<Value> {
        self.directory
            .get("facilities")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The facility with this code.
    pub fn by_code(&self, code: &str) -> Option<Value> {
        self.facilities()
            .into_iter()
            .find(|f| f.get("code").and_then(Value::as_str) == Some(code))
    }
}

/// Where a queued record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    /// Not on the relay yet; `sync` will upload it.
    Waiting,
    /// The relay refused it (e.g. the prescription was dispensed meanwhile): a person decides.
    NeedsAttention,
    /// On the relay as `fallback_id`.
    Uploaded,
    /// A person decided it is not to be uploaded (`queue discard`).
    Discarded,
}

impl QueueStatus {
    pub fn label(self) -> &'static str {
        match self {
            QueueStatus::Waiting => "未送信",
            QueueStatus::NeedsAttention => "要確認",
            QueueStatus::Uploaded => "送信済み",
            QueueStatus::Discarded => "取りやめ",
        }
    }

    fn pending(self) -> bool {
        matches!(self, QueueStatus::Waiting | QueueStatus::NeedsAttention)
    }
}

/// The clinic a queued request went to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClinicRef {
    pub code: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

/// What happened to the direct mail to the clinic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MailRecord {
    pub to: Option<String>,
    pub message_id: Option<String>,
    pub sent_at: Option<Timestamp>,
    pub error: Option<String>,
}

/// One fallback request made while the relay was unreachable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    /// Also the upload's `Idempotency-Key` (prefixed) and the relay's `offline.local_id`.
    pub local_id: String,
    pub kind: String,
    pub created_at: Timestamp,
    /// The pharmacy and staff member whose token made it.
    pub facility: String,
    pub staff: String,
    pub clinic: ClinicRef,
    pub exchange_number: String,
    /// The `POST /v1/fallbacks` body, without `offline` (added at upload).
    pub body: Value,
    pub mail: MailRecord,
    pub status: QueueStatus,
    #[serde(default)]
    pub attempts: u32,
    pub last_attempt_at: Option<Timestamp>,
    /// The relay's problem when it refused the upload.
    pub problem: Option<Value>,
    pub fallback_id: Option<String>,
    pub uploaded_at: Option<Timestamp>,
    /// Why it was discarded, or that it joined a case already on the relay.
    pub note: Option<String>,
}

pub const KIND_FALLBACK_REQUEST: &str = "fallback_request";

impl Queued {
    /// The body `sync` uploads: the original request plus what the relay keeps of its offline life.
    pub fn upload_body(&self) -> Value {
        let mut body = self.body.clone();
        body["offline"] = serde_json::json!({
            "local_id": self.local_id,
            "requested_at": self.created_at,
            "clinic_mailed_at": self.mail.sent_at,
        });
        body
    }

    pub fn idempotency_key(&self) -> String {
        format!("offline-{}", self.local_id)
    }
}

/// When `sync` last ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The last `sync` that reached the relay and went through the whole queue.
    pub last_sync_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// Counts for the reminder line and `status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub waiting: usize,
    pub needs_attention: usize,
}

pub struct State {
    dir: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::Other(format!("{what} {}: {e}", path.display()))
}

impl State {
    pub fn new(dir: &Path) -> State {
        State {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), Failure> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("ディレクトリを作れません", dir, e))
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Failure> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| Failure::Other(format!("保存する内容を作れません: {e}")))?;
        config::write_private(path, &text)
    }

    fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, Failure> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io("読めません", path, std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("読めません", path, e)),
        }
    }

    pub fn directory(&self) -> Result<Option<CachedDirectory>, Failure> {
        self.read_json(&self.dir.join("directory.json"))
    }

    pub fn save_directory(&self, d: &CachedDirectory) -> Result<(), Failure> {
        self.write_json(&self.dir.join("directory.json"), d)
    }

    pub fn sync_record(&self) -> Result<SyncRecord, Failure> {
        Ok(self
            .read_json(&self.dir.join("sync.json"))?
            .unwrap_or_default())
    }

    pub fn save_sync_record(&self, r: &SyncRecord) -> Result<(), Failure> {
        self.write_json(&self.dir.join("sync.json"), r)
    }

    fn path_of(&self, q: &Queued) -> PathBuf {
        let sub = if q.status.pending() { "queue" } else { "done" };
        self.dir.join(sub).join(format!("{}.json", q.local_id))
    }

    /// Writes `q` where its status says (`queue/` or `done/`) and removes it from the other place;
    /// the new file is in place before the old one goes.
    pub fn save(&self, q: &Queued) -> Result<(), Failure> {
        let path = self.path_of(q);
        self.write_json(&path, q)?;
        for sub in ["queue", "done"] {
            let other = self.dir.join(sub).join(format!("{}.json", q.local_id));
            if other != path {
                match fs::remove_file(&other) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("古い記録を片付けられません", &other, e)),
                }
            }
        }
        Ok(())
    }

    fn records(&self, sub: &str) -> Result<Vec<Queued>, Failure> {
        let dir = self.dir.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("読めません", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io("読めません", &dir, e))?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            // An unreadable record stops the listing with its name: it is never skipped silently
            // (it may be a request the relay has not seen).
            if let Some(q) = self.read_json::<Queued>(&path)? {
                out.push(q);
            }
        }
        // local ids are UUIDv7: their order is the order of the requests.
        out.sort_by(|a, b| a.local_id.cmp(&b.local_id));
        Ok(out)
    }

    /// Records waiting or needing a person, oldest first.
    pub fn pending(&self) -> Result<Vec<Queued>, Failure> {
        self.records("queue")
    }

    /// Uploaded and discarded records, oldest first.
    pub fn done(&self) -> Result<Vec<Queued>, Failure> {
        self.records("done")
    }

    /// The record `id` (or a unique prefix of it) in `queue/`.
    pub fn find_pending(&self, id: &str) -> Result<Queued, Failure> {
        let matching: Vec<Queued> = self
            .pending()?
            .into_iter()
            .filter(|q| q.local_id.starts_with(id.trim()))
            .collect();
        match matching.len() {
            1 => Ok(matching.into_iter().next().expect("one")),
            0 => Err(Failure::Usage(format!(
                "オフライン待ちの記録「{id}」はありません (pharmacy-client status で確認できます)"
            ))),
            _ => Err(Failure::Usage(format!(
                "「{id}」に当てはまる記録が複数あります。番号をもっと長く指定してください"
            ))),
        }
    }

    pub fn counts(&self) -> Result<Counts, Failure> {
        let mut c = Counts::default();
        for q in self.pending()? {
            match q.status {
                QueueStatus::Waiting => c.waiting += 1,
                QueueStatus::NeedsAttention => c.needs_attention += 1,
                _ => {}
            }
        }
        Ok(c)
    }

    /// An exclusive lock for the length of a `sync` (released when the file is dropped).
    pub fn lock(&self) -> Result<fs::File, Failure> {
        self.ensure_dir(&self.dir)?;
        let path = self.dir.join("sync.lock");
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("ロックファイルを開けません", &path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => Err(Failure::Other(
                "別の pharmacy-client sync が実行中です。終わってからもう一度実行してください"
                    .into(),
            )),
            Err(fs::TryLockError::Error(e)) => Err(io("ロックできません", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(local_id: &str, status: QueueStatus) -> Queued {
        Queued {
            local_id: local_id.into(),
            kind: KIND_FALLBACK_REQUEST.into(),
            created_at: Timestamp::from_second(1_800_000_000).unwrap(),
            facility: "9948000014".into(),
            staff: "p-1".into(),
            clinic: ClinicRef {
                code: "9918000010".into(),
                name: "検証用クリニック".into(),
                email: Some("clinic@example.jp".into()),
                phone: None,
            },
            exchange_number: "048213".into(),
            body: serde_json::json!({"reason": "障害", "preferred": "fax"}),
            mail: MailRecord::default(),
            status,
            attempts: 0,
            last_attempt_at: None,
            problem: None,
            fallback_id: None,
            uploaded_at: None,
            note: None,
        }
    }

    fn temp_state() -> State {
        let dir = std::env::temp_dir().join(format!("pc-state-{}", uuid::Uuid::now_v7()));
        State::new(&dir)
    }

    #[test]
    fn a_record_moves_from_queue_to_done_and_is_never_in_both() {
        let s = temp_state();
        let mut q = record("0190-b", QueueStatus::Waiting);
        s.save(&q).unwrap();
        s.save(&record("0190-a", QueueStatus::NeedsAttention))
            .unwrap();
        let pending = s.pending().unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|q| q.local_id.as_str())
                .collect::<Vec<_>>(),
            ["0190-a", "0190-b"]
        );
        let c = s.counts().unwrap();
        assert_eq!((c.waiting, c.needs_attention), (1, 1));
        q.status = QueueStatus::Uploaded;
        s.save(&q).unwrap();
        assert_eq!(s.pending().unwrap().len(), 1);
        assert_eq!(s.done().unwrap()[0].local_id, "0190-b");
        assert!(s.find_pending("0190-b").is_err());
        assert_eq!(s.find_pending("0190-a").unwrap().local_id, "0190-a");
        assert!(s.find_pending("0190").is_ok());
        let _ = fs::remove_dir_all(s.dir());
    }

    #[test]
    fn the_upload_body_carries_the_offline_facts_and_a_stable_key() {
        let mut q = record("0190-c", QueueStatus::Waiting);
        q.mail.sent_at = Some(Timestamp::from_second(1_800_000_060).unwrap());
        let b = q.upload_body();
        assert_eq!(b["reason"], "障害");
        assert_eq!(b["offline"]["local_id"], "0190-c");
        assert_eq!(b["offline"]["requested_at"], "2027-01-15T08:00:00Z");
        assert_eq!(b["offline"]["clinic_mailed_at"], "2027-01-15T08:01:00Z");
        assert_eq!(q.idempotency_key(), "offline-0190-c");
    }

    #[test]
    fn a_second_sync_cannot_take_the_lock() {
        let s = temp_state();
        let held = s.lock().unwrap();
        assert!(s.lock().is_err());
        drop(held);
        assert!(s.lock().is_ok());
        let _ = fs::remove_dir_all(s.dir());
    }

    #[test]
    fn an_unreadable_record_is_reported_not_skipped() {
        let s = temp_state();
        fs::create_dir_all(s.dir().join("queue")).unwrap();
        fs::write(s.dir().join("queue/broken.json"), b"{not json").unwrap();
        let err = s.pending().unwrap_err();
        assert!(matches!(err, Failure::Other(m) if m.contains("broken.json")));
        let _ = fs::remove_dir_all(s.dir());
    }
}
