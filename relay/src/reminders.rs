//! Reminder jobs of the outage fallback (issue 7): originals by post not posted, or not recorded
//! as received, `[fallbacks] original_reminder_days` after the FAX (resp. the posting), and
//! prescriptions held `dispensing` without a result for longer than `[fallbacks]
//! held_reminder_hours` (the "調剤中 forever" problem). Each reminder is written to the mail outbox
//! with a dedupe key, so it is sent exactly once however often, and on however many relays, the
//! job runs. The mails carry no patient names: the 引換番号 and dates identify the prescription.

use crate::config::Settings;
use crate::db::outbox::{self, Mail};
use crate::db::{DbError, GenericClient, Pool, facilities, fallbacks, prescriptions};
use crate::domain::fallback::FallbackStatus;
use crate::domain::identifiers::FacilityCode;

const FOOTER: &str = "\n\n--\n電子処方箋リレー（自動送信）\nこのメールに返信しても届きません。";

/// The dedupe key of the held reminder: one per holding episode (a prescription released and
/// received again is a new episode).
pub fn held_reminder_key(id: uuid::Uuid, held_since: jiff::Timestamp) -> String {
    format!("reminder_held:{id}:{}", held_since.as_microsecond())
}

/// One pass of every reminder job; returns how many reminders were newly queued.
pub async fn run_once(pool: &Pool, settings: &Settings) -> anyhow::Result<usize> {
    let client = pool.get().await.map_err(DbError::from)?;
    let mut queued = 0;
    queued += held(&client, settings.fallbacks.held_reminder_hours).await?;
    queued += originals(&client, settings.fallbacks.original_reminder_days).await?;
    if queued > 0 {
        tracing::info!(queued, "reminders queued");
    }
    Ok(queued)
}

async fn email_of(c: &impl GenericClient, code: &str) -> Result<Option<(String, String)>, DbError> {
    let Ok(code) = FacilityCode::parse(code) else {
        return Ok(None);
    };
    Ok(facilities::get(c, &code).await?.map(|f| (f.name, f.email)))
}

async fn held(c: &impl GenericClient, hours: i64) -> Result<usize, DbError> {
    let mut queued = 0;
    for p in prescriptions::held_longer_than(c, None, hours).await? {
        let (Some(holder), Some(since)) = (&p.holder_code, p.held_since) else {
            continue;
        };
        let Some((name, email)) = email_of(c, holder).await? else {
            continue;
        };
        let mail = Mail {
            to: vec![email],
            subject: format!(
                "【電子処方箋】調剤結果が未登録です（引換番号 {}）",
                p.exchange_number
            ),
            body: format!(
                "{name} 御中\n\n次の電子処方箋は {hours} 時間以上「調剤中」のままです。\n\
                 調剤済みであれば調剤結果を登録し、調剤しない場合は受付を取り消して（release）ください。\n\n\
                 引換番号: {}\n受付日時: {}\n処方ID: {}{FOOTER}",
                p.exchange_number, since, p.id
            ),
            attachments: Vec::new(),
            kind: "reminder_held",
            dedupe_key: Some(held_reminder_key(p.id, since)),
        };
        if outbox::enqueue(c, &mail).await?.is_some() {
            queued += 1;
        }
    }
    Ok(queued)
}

async fn originals(c: &impl GenericClient, days: i32) -> Result<usize, DbError> {
    let mut queued = 0;
    for f in fallbacks::originals_overdue(c, days).await? {
        let not_posted = f.status != FallbackStatus::OriginalMailed;
        let to = if not_posted {
            &f.clinic_code
        } else {
            &f.pharmacy_code
        };
        let Some((name, email)) = email_of(c, to).await? else {
            continue;
        };
        let (subject, what, key) = if not_posted {
            (
                format!(
                    "【処方箋原本】FAX送付分の原本が未送付です（引換番号 {}）",
                    f.exchange_number
                ),
                format!(
                    "FAXで送付した処方箋の原本が {days} 日以上郵送されていません。\n\
                     原本を郵送し、送付を記録してください（POST /v1/fallbacks/{}/original-mailed）。",
                    f.id
                ),
                format!("reminder_original_mail:{}", f.id),
            )
        } else {
            (
                format!(
                    "【処方箋原本】原本の受領が未記録です（引換番号 {}）",
                    f.exchange_number
                ),
                format!(
                    "{} に郵送された処方箋原本の受領が {days} 日以上記録されていません。\n\
                     到着していればFAXと照合し、受領を記録してください（POST /v1/fallbacks/{}/original-received）。",
                    f.original_mailed_on
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    f.id
                ),
                format!("reminder_original_receipt:{}", f.id),
            )
        };
        let mail = Mail {
            to: vec![email],
            subject,
            body: format!(
                "{name} 御中\n\n{what}\n\n引換番号: {}\n交付年月日: {}{FOOTER}",
                f.exchange_number, f.issued_on
            ),
            attachments: Vec::new(),
            kind: if not_posted {
                "reminder_original_mail"
            } else {
                "reminder_original_receipt"
            },
            dedupe_key: Some(key),
        };
        if outbox::enqueue(c, &mail).await?.is_some() {
            queued += 1;
        }
    }
    Ok(queued)
}
