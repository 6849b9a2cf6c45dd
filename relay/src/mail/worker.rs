//! The delivery worker. Each message is delivered in its own transaction: lock the pending row due
//! first (`FOR UPDATE SKIP LOCKED`, so concurrent workers on any number of relays never hold the
//! same row), deliver, record the outcome, commit. A worker that dies before its commit leaves the
//! row pending and unlocked: the message is delivered again (at least once), with the same
//! `Message-ID`, and at most that one message is repeated.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use rand::Rng;
use uuid::Uuid;

use super::message;
use super::transport::{DeliveryError, SetupError, Transport, from_mailbox};
use crate::config::{MailSettings, Settings};
use crate::db::outbox::{self, Due};
use crate::db::{DbError, Pool};
use crate::jobs::Shutdown;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub sent: usize,
    /// Failed attempts that will be retried.
    pub retrying: usize,
    /// Messages dead-lettered by this pass.
    pub dead: usize,
}

impl Pass {
    pub fn attempted(&self) -> usize {
        self.sent + self.retrying + self.dead
    }
}

#[derive(Clone)]
pub struct Worker {
    pool: Pool,
    transport: Arc<Transport>,
    from: Mailbox,
    /// The right-hand side of every `Message-ID`: the domain of `[mail] from`.
    domain: String,
    settings: MailSettings,
    shutdown: Option<Shutdown>,
}

impl Worker {
    /// A worker with the transport the settings describe (see [`Transport::from_settings`]).
    pub fn new(pool: Pool, settings: &Settings) -> Result<Self, SetupError> {
        let transport = Transport::from_settings(settings)?;
        Self::with_transport(pool, settings, Arc::new(transport))
    }

    pub fn with_transport(
        pool: Pool,
        settings: &Settings,
        transport: Arc<Transport>,
    ) -> Result<Self, SetupError> {
        let from = from_mailbox(settings)?;
        let domain = from.email.domain().to_string();
        Ok(Self {
            pool,
            transport,
            from,
            domain,
            settings: settings.mail.clone(),
            shutdown: None,
        })
    }

    /// Stop between two deliveries once `shutdown` is triggered (the delivery under way finishes).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn stopping(&self) -> bool {
        self.shutdown.as_ref().is_some_and(Shutdown::is_triggered)
    }

    /// One pass: delivers up to `[mail] batch_size` due messages, each attempted at most once.
    pub async fn run_once(&self) -> Result<Pass, DbError> {
        let mut pass = Pass::default();
        let mut attempted: Vec<Uuid> = Vec::new();
        let limit = usize::try_from(self.settings.batch_size.max(1)).unwrap_or(1);
        while attempted.len() < limit && !self.stopping() {
            if !self.deliver_next(&mut attempted, &mut pass).await? {
                break;
            }
        }
        Ok(pass)
    }

    /// Passes until nothing more is due now (or shutdown): what the periodic job runs.
    pub async fn drain(&self) -> Result<Pass, DbError> {
        let mut total = Pass::default();
        let limit = usize::try_from(self.settings.batch_size.max(1)).unwrap_or(1);
        loop {
            let pass = self.run_once().await?;
            total.sent += pass.sent;
            total.retrying += pass.retrying;
            total.dead += pass.dead;
            if pass.attempted() < limit || self.stopping() {
                return Ok(total);
            }
        }
    }

    /// Locks, delivers and records the next due message; `false` when none is due.
    async fn deliver_next(
        &self,
        attempted: &mut Vec<Uuid>,
        pass: &mut Pass,
    ) -> Result<bool, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(due) = outbox::lock_next_due(&tx, attempted).await? else {
            return Ok(false);
        };
        attempted.push(due.id);
        let message_id = due
            .message_id
            .clone()
            .unwrap_or_else(|| message::message_id(due.id, &self.domain));
        let attempt = due.attempts + 1;
        match self.deliver(&due, &message_id).await {
            Ok(()) => {
                outbox::mark_sent(&tx, due.id, &message_id).await?;
                commit(tx, &due).await?;
                pass.sent += 1;
                tracing::info!(outbox_id = %due.id, kind = %due.kind, attempt, "mail delivered");
            }
            Err(e) if e.permanent || attempt >= self.settings.max_attempts => {
                outbox::mark_failed(&tx, due.id, &message_id, &e.message, None).await?;
                commit(tx, &due).await?;
                pass.dead += 1;
                tracing::error!(
                    outbox_id = %due.id, kind = %due.kind, attempt, permanent = e.permanent,
                    error = %e, "mail dead-lettered: see GET /v1/admin/outbox?status=dead"
                );
            }
            Err(e) => {
                let delay = backoff(&self.settings, attempt);
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                outbox::mark_failed(&tx, due.id, &message_id, &e.message, Some(delay_ms)).await?;
                commit(tx, &due).await?;
                pass.retrying += 1;
                tracing::warn!(
                    outbox_id = %due.id, kind = %due.kind, attempt, retry_in_ms = delay_ms,
                    error = %e, "mail delivery failed; will retry"
                );
            }
        }
        Ok(true)
    }

    async fn deliver(&self, due: &Due, message_id: &str) -> Result<(), DeliveryError> {
        let message = message::build(&self.from, due, message_id)?;
        self.transport.send(due.id, &message).await
    }
}

/// The wait after `failed` failed attempts: `backoff_base_ms · 2^(failed − 1)`, capped at
/// `backoff_max_ms`, of which a random half is waited ("equal jitter"), so messages that failed
/// together do not all come back together.
fn backoff(settings: &MailSettings, failed: i32) -> Duration {
    let exp = u32::try_from(failed.saturating_sub(1)).unwrap_or(0).min(32);
    let full = settings
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(settings.backoff_max_ms);
    let half = full / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=full - half))
}

/// Commits an attempt's outcome. A message delivered but not committed goes out again later:
/// delivery is at least once.
async fn commit(tx: deadpool_postgres::Transaction<'_>, due: &Due) -> Result<(), DbError> {
    tx.commit().await.map_err(|e| {
        tracing::error!(
            outbox_id = %due.id, kind = %due.kind, error = %e,
            "the outcome of a delivery attempt was not recorded; the message will be attempted again"
        );
        DbError::from(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let settings = MailSettings {
            backoff_base_ms: 1_000,
            backoff_max_ms: 10_000,
            ..MailSettings::default()
        };
        for failed in 1..=40 {
            let full = 1_000u64
                .saturating_mul(1 << (failed - 1).min(32))
                .min(10_000);
            for _ in 0..20 {
                let d = u64::try_from(backoff(&settings, failed).as_millis()).expect("small");
                assert!(
                    full / 2 <= d && d <= full,
                    "after {failed} failures: {d} not in {}..={full}",
                    full / 2
                );
            }
        }
        let none = MailSettings {
            backoff_base_ms: 0,
            ..MailSettings::default()
        };
        assert_eq!(backoff(&none, 3), Duration::ZERO);
    }
}
