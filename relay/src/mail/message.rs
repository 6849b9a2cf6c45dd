//! Builds the RFC 5322 message of an outbox row. Everything in it comes from the row and the
//! configured `From`, and the `Date` is the row's creation time, so every attempt sends the same
//! message with the same `Message-ID`.

use std::time::SystemTime;

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};

use super::transport::DeliveryError;
use crate::db::outbox::Due;

/// `<{outbox id}@{domain}>`: the same for every attempt at one message.
pub fn message_id(id: uuid::Uuid, domain: &str) -> String {
    format!("<{id}@{domain}>")
}

/// The message for `due`. A recipient that is not an address is a permanent failure: retrying
/// cannot fix it (the facility registry must).
pub fn build(from: &Mailbox, due: &Due, message_id: &str) -> Result<Message, DeliveryError> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(due.subject.clone())
        .message_id(Some(message_id.to_string()))
        .date(SystemTime::from(due.created_at))
        // RFC 3834: no vacation auto-replies to a machine.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ));
    for (i, to) in due.recipients.iter().enumerate() {
        let mailbox: Mailbox = to.trim().parse().map_err(|_| {
            DeliveryError::permanent(format!(
                "recipient {} of {} is not a mail address",
                i + 1,
                due.recipients.len()
            ))
        })?;
        builder = builder.to(mailbox);
    }
    let built = if due.attachments.is_empty() {
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(due.body.clone())
    } else {
        let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(due.body.clone()));
        for a in &due.attachments {
            let content_type = ContentType::parse(&a.content_type)
                .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("valid"));
            parts = parts.singlepart(
                Attachment::new(a.filename.clone()).body(a.bytes.clone(), content_type),
            );
        }
        builder.multipart(parts)
    };
    built.map_err(|e| DeliveryError::permanent(format!("the message cannot be built: {e}")))
}
