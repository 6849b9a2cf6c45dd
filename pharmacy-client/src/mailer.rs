//! The direct mail to a clinic while the relay is unreachable, through the pharmacy's own SMTP
//! server (`smtp_url`): lettre's blocking transport, one connection per message.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{Message, SmtpTransport, Transport};

/// A message ready to send.
pub struct DirectMail {
    pub from: String,
    pub reply_to: Option<String>,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Without angle brackets; fixed by the caller so the queued record can name it.
    pub message_id: String,
}

fn mailbox(field: &str, raw: &str) -> Result<Mailbox, String> {
    raw.parse::<Mailbox>()
        .map_err(|e| format!("{field} のアドレス「{raw}」が正しくありません: {e}"))
}

/// The host part of `smtp_url`, for messages (never the user or password).
pub fn smtp_host(smtp_url: &str) -> String {
    let rest = smtp_url.split_once("://").map_or(smtp_url, |(_, r)| r);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host_port
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends `m` through `smtp_url`; the error is a sentence for the pharmacist.
pub fn send(smtp_url: &str, m: &DirectMail, timeout: Duration) -> Result<(), String> {
    let mut builder = Message::builder()
        .from(mailbox("送信元 (mail_from)", &m.from)?)
        .to(mailbox("宛先", &m.to)?)
        .subject(m.subject.clone())
        .message_id(Some(format!("<{}>", m.message_id)))
        .header(ContentType::TEXT_PLAIN);
    if let Some(r) = &m.reply_to {
        builder = builder.reply_to(mailbox("返信先", r)?);
    }
    let message = builder
        .body(m.body.clone())
        .map_err(|e| format!("メールを作れません: {e}"))?;
    let host = smtp_host(smtp_url);
    let transport = SmtpTransport::from_url(smtp_url)
        .map_err(|_| {
            format!(
                "smtp_url が正しくありません (例: smtp://user:pass@{host}:587?tls=required, smtps://…)"
            )
        })?
        .timeout(Some(timeout))
        .build();
    transport
        .send(&message)
        .map(|_| ())
        .map_err(|e| format!("SMTP サーバー {host} に送れませんでした: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_shown_without_the_credentials() {
        assert_eq!(
            smtp_host("smtp://rx:s3cret@mail.example.jp:587?tls=required"),
            "mail.example.jp:587"
        );
        assert_eq!(smtp_host("smtps://mail.example.jp"), "mail.example.jp");
        assert_eq!(smtp_host("smtp://127.0.0.1:2525/ehlo"), "127.0.0.1:2525");
    }

    #[test]
    fn a_bad_address_names_the_field() {
        let m = DirectMail {
            from: "not an address".into(),
            reply_to: None,
            to: "clinic@example.jp".into(),
            subject: "s".into(),
            body: "b".into(),
            message_id: "x@example.jp".into(),
        };
        let e = send("smtp://127.0.0.1:9", &m, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("mail_from"), "{e}");
    }
}
