//! SQL for `outbox` and `outbox_attachments`: mail written in the transaction of the state change
//! it reports ([`enqueue`]), picked one at a time by the delivery worker with `FOR UPDATE SKIP
//! LOCKED` ([`lock_next_due`]) and marked sent, retried later or dead-lettered in the same
//! transaction; listed and requeued by operators.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{DbError, GenericClient};

/// A message to send. `kind` says what it is about, for operators (`fallback_requested`,
/// `fallback_fax`, `cancellation_applied`, `reminder_original`, `reminder_held`, …).
#[derive(Debug, Clone)]
pub struct Mail {
    /// Recipient addresses (at least one).
    pub to: Vec<String>,
    /// Japanese is fine: it is encoded per RFC 2047 when the message is built.
    pub subject: String,
    /// `text/plain; charset=utf-8`.
    pub body: String,
    pub attachments: Vec<Attachment>,
    pub kind: &'static str,
    /// At most one message per key, ever: a second enqueue with the same key does nothing.
    pub dedupe_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Writes the mail in the caller's transaction (so it exists iff the state change commits).
/// Returns the outbox id, or `None` when `dedupe_key` was already used. A concurrent transaction
/// holding the same key makes this wait for its outcome: committed, this is `None`; rolled back,
/// this one writes the mail.
pub async fn enqueue(c: &impl GenericClient, mail: &Mail) -> Result<Option<Uuid>, DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO outbox (id, kind, recipients, subject, body, dedupe_key)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (dedupe_key) DO NOTHING
             RETURNING id",
        )
        .await?;
    let Some(row) = c
        .query_opt(
            &stmt,
            &[
                &Uuid::now_v7(),
                &mail.kind,
                &mail.to,
                &mail.subject,
                &mail.body,
                &mail.dedupe_key,
            ],
        )
        .await?
    else {
        return Ok(None);
    };
    let id: Uuid = row.get(0);
    if !mail.attachments.is_empty() {
        let stmt = c
            .prepare_cached(
                "INSERT INTO outbox_attachments (outbox_id, position, filename, content_type, bytes)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        for (position, a) in (0i32..).zip(&mail.attachments) {
            c.execute(
                &stmt,
                &[&id, &position, &a.filename, &a.content_type, &a.bytes],
            )
            .await?;
        }
    }
    Ok(Some(id))
}

/// A due message, locked by the worker's transaction until it commits.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: Uuid,
    pub kind: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    pub attachments: Vec<Attachment>,
    /// Attempts before this one.
    pub attempts: i32,
    pub created_at: Timestamp,
    /// Set by the first attempt; every retry uses it again.
    pub message_id: Option<String>,
}

/// Locks the pending message due first, skipping rows other workers hold (`SKIP LOCKED`) and the
/// ids in `exclude` (those this pass already attempted). `None` when nothing is due.
pub async fn lock_next_due(
    c: &impl GenericClient,
    exclude: &[Uuid],
) -> Result<Option<Due>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT id, kind, recipients, subject, body, attempts, created_at, message_id
               FROM outbox
              WHERE status = 'pending' AND next_attempt_at <= now()
                AND id <> ALL($1::uuid[])
              ORDER BY next_attempt_at, id
              LIMIT 1
              FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let Some(r) = c.query_opt(&stmt, &[&exclude]).await? else {
        return Ok(None);
    };
    let id: Uuid = r.get(0);
    let stmt = c
        .prepare_cached(
            "SELECT filename, content_type, bytes FROM outbox_attachments
              WHERE outbox_id = $1 ORDER BY position",
        )
        .await?;
    let attachments = c
        .query(&stmt, &[&id])
        .await?
        .iter()
        .map(|a| Attachment {
            filename: a.get(0),
            content_type: a.get(1),
            bytes: a.get(2),
        })
        .collect();
    Ok(Some(Due {
        id,
        kind: r.get(1),
        recipients: r.get(2),
        subject: r.get(3),
        body: r.get(4),
        attempts: r.get(5),
        created_at: r.get(6),
        message_id: r.get(7),
        attachments,
    }))
}

/// Records a delivered message.
pub async fn mark_sent(c: &impl GenericClient, id: Uuid, message_id: &str) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE outbox
                SET status = 'sent', attempts = attempts + 1, sent_at = clock_timestamp(),
                    last_attempt_at = clock_timestamp(), message_id = COALESCE(message_id, $2)
              WHERE id = $1",
        )
        .await?;
    c.execute(&stmt, &[&id, &message_id]).await?;
    Ok(())
}

/// Records a failed attempt: the message is tried again `retry_in_ms` from now, or, with `None`,
/// it is dead (attempts exhausted or a permanent refusal) until an operator requeues it.
pub async fn mark_failed(
    c: &impl GenericClient,
    id: Uuid,
    message_id: &str,
    error: &str,
    retry_in_ms: Option<i64>,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE outbox
                SET attempts = attempts + 1, last_attempt_at = clock_timestamp(), last_error = $3,
                    message_id = COALESCE(message_id, $2),
                    status = CASE WHEN $4::bigint IS NULL THEN 'dead' ELSE 'pending' END,
                    next_attempt_at = CASE WHEN $4::bigint IS NULL THEN next_attempt_at
                        ELSE clock_timestamp() + $4::bigint * interval '1 millisecond' END
              WHERE id = $1",
        )
        .await?;
    c.execute(&stmt, &[&id, &message_id, &error, &retry_in_ms])
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
// Named apart from the prescription `Status`: one OpenAPI name would document both with one enum.
#[schema(as = OutboxStatus)]
pub enum Status {
    /// Waiting for its (next) delivery attempt.
    Pending,
    /// Accepted by the mail server (or written to the mail directory).
    Sent,
    /// Attempts exhausted or refused for good: waits for an operator's retry.
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Result<Self, DbError> {
        match s {
            "pending" => Ok(Status::Pending),
            "sent" => Ok(Status::Sent),
            "dead" => Ok(Status::Dead),
            other => Err(DbError::Corrupt(format!("outbox status {other:?}"))),
        }
    }
}

/// A message as operators see it: no body, no attachment contents.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub id: Uuid,
    pub kind: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub status: Status,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<Timestamp>,
    /// When a pending message is tried next.
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: Timestamp,
    pub message_id: Option<String>,
    /// File names of the attachments.
    pub attachments: Vec<String>,
}

const ENTRY_COLUMNS: &str = "o.id, o.kind, o.recipients, o.subject, o.status, o.attempts,
    o.last_error, o.created_at, o.sent_at, o.next_attempt_at, o.message_id,
    ARRAY(SELECT a.filename FROM outbox_attachments a WHERE a.outbox_id = o.id
          ORDER BY a.position)";

fn entry(r: &tokio_postgres::Row) -> Result<Entry, DbError> {
    Ok(Entry {
        id: r.get(0),
        kind: r.get(1),
        recipients: r.get(2),
        subject: r.get(3),
        status: Status::parse(r.get(4))?,
        attempts: r.get(5),
        last_error: r.get(6),
        created_at: r.get(7),
        sent_at: r.get(8),
        next_attempt_at: r.get(9),
        message_id: r.get(10),
        attachments: r.get(11),
    })
}

/// Messages with `status` (all when `None`), newest first, at most `limit`.
pub async fn list(
    c: &impl GenericClient,
    status: Option<Status>,
    limit: i64,
) -> Result<Vec<Entry>, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM outbox o
              WHERE $1::text IS NULL OR o.status = $1
              ORDER BY o.created_at DESC, o.id DESC LIMIT $2"
        ))
        .await?;
    c.query(&stmt, &[&status.map(Status::as_str), &limit])
        .await?
        .iter()
        .map(entry)
        .collect()
}

pub enum Requeue {
    Requeued(Box<Entry>),
    /// Only dead messages are requeued; this one is pending or sent.
    NotDead(Status),
    NotFound,
}

/// Gives a dead message a fresh set of attempts, due now. Its `last_error` stays for the record.
pub async fn requeue_dead(c: &impl GenericClient, id: Uuid) -> Result<Requeue, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE outbox o SET status = 'pending', attempts = 0, next_attempt_at = now()
              WHERE o.id = $1 AND o.status = 'dead'
              RETURNING {ENTRY_COLUMNS}"
        ))
        .await?;
    if let Some(r) = c.query_opt(&stmt, &[&id]).await? {
        return Ok(Requeue::Requeued(Box::new(entry(&r)?)));
    }
    let stmt = c
        .prepare_cached("SELECT status FROM outbox WHERE id = $1")
        .await?;
    match c.query_opt(&stmt, &[&id]).await? {
        Some(r) => Ok(Requeue::NotDead(Status::parse(r.get(0))?)),
        None => Ok(Requeue::NotFound),
    }
}

/// What became of the mails queued under `keys` (the reminder state of an aging list): status,
/// queued at, sent at.
pub async fn by_dedupe_keys(
    c: &impl GenericClient,
    keys: &[String],
) -> Result<std::collections::HashMap<String, KeyedMail>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT dedupe_key, status, created_at, sent_at FROM outbox
              WHERE dedupe_key = ANY($1)",
        )
        .await?;
    Ok(c.query(&stmt, &[&keys])
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                KeyedMail {
                    status: r.get(1),
                    queued_at: r.get(2),
                    sent_at: r.get(3),
                },
            )
        })
        .collect())
}

/// A mail found by its dedupe key.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KeyedMail {
    /// `pending`, `sent` or `dead`.
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub queued_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<jiff::Timestamp>,
}
