//! Outgoing mail. Handlers write messages to the outbox table in their own transaction
//! ([`crate::db::outbox::enqueue`]); the [`Worker`] delivers them later through the configured
//! [`Transport`] (SMTP through lettre, or `.eml` files for local use), at least once, each with a
//! stable `Message-ID` so a repeated delivery is recognisably the same message.
//!
//! - [`message`]: an outbox row → an RFC 5322 message (Japanese subject and body, attachments).
//! - [`transport`]: SMTP from `RELAY_SMTP_URL`, or the mail directory; the production check.
//! - [`worker`]: picks due messages (`FOR UPDATE SKIP LOCKED`), delivers, retries with backoff,
//!   dead-letters after `[mail] max_attempts`.

pub mod message;
pub mod transport;
pub mod worker;

pub use transport::{DeliveryError, SetupError, Transport};
pub use worker::{Pass, Worker};
