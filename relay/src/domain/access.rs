//! The patient's access log (閲覧記録): every look at a patient's prescriptions, in words the patient
//! reads. Writes come from the prescription event log, eligibility confirmations from
//! `qualifications`, revealed check details from `check_consents`; reads that change nothing are
//! recorded as [`ReadAction`]s. The patient sees which facility, which role, when and what — not the
//! staff member's account id (an operator can trace that from the same rows).

use serde::{Deserialize, Serialize};

/// A read of a patient's data that changes nothing, recorded in `access_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadAction {
    /// A prescription opened by its issuer or holder.
    Viewed,
    /// Listed by a pharmacy from the patient's マイナ保険証 (the card path).
    Listed,
    /// Found by the clinic's search by insurance identity (the lost-控え lookup).
    Searched,
    /// Printed or downloaded as a document (控え, paper prescription, SJ1 CSV).
    Document,
    /// The patient's own look at this log, through a facility.
    AccessLogViewed,
}

impl ReadAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReadAction::Viewed => "viewed",
            ReadAction::Listed => "listed",
            ReadAction::Searched => "searched",
            ReadAction::Document => "document",
            ReadAction::AccessLogViewed => "access_log_viewed",
        }
    }
}

/// Where an entry of the patient's log comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessSource {
    /// A change to a prescription (`prescription_events`).
    Event,
    /// A read that changed nothing (`access_log`).
    Read,
    /// An eligibility confirmation (`qualifications`).
    Qualification,
    /// A duplicate/contraindication check run, or its details revealed with consent.
    Check,
}

/// The patient-facing wording of an action code from any source; unknown codes are shown as
/// they are rather than hidden.
pub fn label(source: AccessSource, action: &str) -> &'static str {
    match (source, action) {
        (AccessSource::Event, "registered") => "電子処方箋を登録しました",
        (AccessSource::Event, "received") => "電子処方箋を受け付けました（調剤のため取得）",
        (AccessSource::Event, "released") => "受付を取り消し、電子処方箋を戻しました",
        (AccessSource::Event, "dispensed") => "調剤結果を登録しました",
        (AccessSource::Event, "cancelled") => "電子処方箋を取り消しました",
        (AccessSource::Event, "cancellation_requested") => "電子処方箋の取消しを依頼しました",
        (AccessSource::Event, "cancellation_applied") => "電子処方箋の取消しを反映しました",
        (AccessSource::Event, "cancellation_rejected") => {
            "取消し依頼を受けられませんでした（調剤済み）"
        }
        (AccessSource::Event, "expired") => "使用期限切れになりました",
        (AccessSource::Event, "presend") => "薬局へ事前送付しました",
        (AccessSource::Event, "presend_prepared") => "事前送付を受けて準備しました",
        (AccessSource::Read, "viewed") => "電子処方箋を閲覧しました",
        (AccessSource::Read, "listed") => "マイナ保険証で電子処方箋の一覧を閲覧しました",
        (AccessSource::Read, "searched") => "被保険者番号で電子処方箋を検索しました",
        (AccessSource::Read, "document") => "処方内容の書類を出力しました",
        (AccessSource::Read, "access_log_viewed") => "この閲覧記録を表示しました",
        (AccessSource::Qualification, _) => "資格確認をしました",
        (AccessSource::Check, "checked") => {
            "重複投薬等チェックをしました（過去の薬の詳細は非表示）"
        }
        (AccessSource::Check, "revealed") => {
            "同意を得て、重複投薬等チェックの詳細（過去の薬）を閲覧しました"
        }
        _ => "その他の操作",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_action_and_event_has_its_own_wording() {
        for a in [
            ReadAction::Viewed,
            ReadAction::Listed,
            ReadAction::Searched,
            ReadAction::Document,
            ReadAction::AccessLogViewed,
        ] {
            assert_ne!(
                label(AccessSource::Read, a.as_str()),
                "その他の操作",
                "{a:?}"
            );
        }
        use crate::domain::lifecycle::EventAction as E;
        for e in [
            E::Registered,
            E::Received,
            E::Released,
            E::Dispensed,
            E::Cancelled,
            E::CancellationRequested,
            E::CancellationApplied,
            E::CancellationRejected,
            E::Expired,
            E::Presend,
            E::PresendPrepared,
        ] {
            assert_ne!(
                label(AccessSource::Event, e.as_str()),
                "その他の操作",
                "{e:?}"
            );
        }
        assert_eq!(label(AccessSource::Read, "nonsense"), "その他の操作");
    }
}
