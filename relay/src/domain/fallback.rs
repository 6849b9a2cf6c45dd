//! The outage fallback case (domain.md §8, seed 000 Point 5) as a state machine. Pure: the HTTP
//! layer loads a case, asks [`FallbackStatus::apply`] whether a step is allowed, and writes the
//! result with its event.
//!
//! ```text
//! requested ──resolve(paper_reissue)──▶ paper_reissued            (final)
//!     │     ──resolve(fax)──▶ faxed ──dispensed──▶ dispensed_from_fax
//!     │                                   ──original_mailed──▶ original_mailed
//!     │                                   ──original_received──▶ closed (final)
//!     └──withdraw (pharmacy)──▶ withdrawn                          (final)
//! ```
//! The original may be posted before the pharmacy has dispensed from the FAX (clinics batch their
//! post), so `original_mailed` is allowed from `faxed` as well; `original_received` needs it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackStatus {
    Requested,
    Withdrawn,
    PaperReissued,
    Faxed,
    DispensedFromFax,
    OriginalMailed,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackMode {
    /// The clinic gives the patient a paper prescription.
    PaperReissue,
    /// The clinic FAXes the contents to the pharmacy and posts the paper original later.
    Fax,
}

impl FallbackMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackMode::PaperReissue => "paper_reissue",
            FallbackMode::Fax => "fax",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "paper_reissue" => Some(FallbackMode::PaperReissue),
            "fax" => Some(FallbackMode::Fax),
            _ => None,
        }
    }
}

/// A step of the case, and who may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Resolve(FallbackMode),
    Withdraw,
    Dispensed,
    OriginalMailed,
    OriginalReceived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Clinic,
    Pharmacy,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Resolve(_) => "resolved",
            Step::Withdraw => "withdrawn",
            Step::Dispensed => "dispensed_from_fax",
            Step::OriginalMailed => "original_mailed",
            Step::OriginalReceived => "original_received",
        }
    }

    /// The issuing clinic resolves and posts the original; the requesting pharmacy withdraws,
    /// dispenses from the FAX and records the original's arrival.
    pub fn taken_by(self) -> Side {
        match self {
            Step::Resolve(_) | Step::OriginalMailed => Side::Clinic,
            Step::Withdraw | Step::Dispensed | Step::OriginalReceived => Side::Pharmacy,
        }
    }
}

impl FallbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackStatus::Requested => "requested",
            FallbackStatus::Withdrawn => "withdrawn",
            FallbackStatus::PaperReissued => "paper_reissued",
            FallbackStatus::Faxed => "faxed",
            FallbackStatus::DispensedFromFax => "dispensed_from_fax",
            FallbackStatus::OriginalMailed => "original_mailed",
            FallbackStatus::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            FallbackStatus::Requested,
            FallbackStatus::Withdrawn,
            FallbackStatus::PaperReissued,
            FallbackStatus::Faxed,
            FallbackStatus::DispensedFromFax,
            FallbackStatus::OriginalMailed,
            FallbackStatus::Closed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// The status after `step`, or `None` when the step is out of order from here.
    pub fn apply(self, step: Step) -> Option<FallbackStatus> {
        use FallbackStatus::*;
        match (self, step) {
            (Requested, Step::Resolve(FallbackMode::PaperReissue)) => Some(PaperReissued),
            (Requested, Step::Resolve(FallbackMode::Fax)) => Some(Faxed),
            (Requested, Step::Withdraw) => Some(Withdrawn),
            (Faxed, Step::Dispensed) => Some(DispensedFromFax),
            (Faxed | DispensedFromFax, Step::OriginalMailed) => Some(OriginalMailed),
            (OriginalMailed, Step::OriginalReceived) => Some(Closed),
            _ => None,
        }
    }

    /// Whether the case still needs someone to act.
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            FallbackStatus::Withdrawn | FallbackStatus::PaperReissued | FallbackStatus::Closed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FallbackStatus::*;

    const ALL_STEPS: [Step; 6] = [
        Step::Resolve(FallbackMode::PaperReissue),
        Step::Resolve(FallbackMode::Fax),
        Step::Withdraw,
        Step::Dispensed,
        Step::OriginalMailed,
        Step::OriginalReceived,
    ];

    #[test]
    fn the_fax_path_runs_to_closed_and_the_paper_path_ends_at_once() {
        let mut s = Requested;
        for step in [
            Step::Resolve(FallbackMode::Fax),
            Step::Dispensed,
            Step::OriginalMailed,
            Step::OriginalReceived,
        ] {
            s = s.apply(step).expect("allowed");
        }
        assert_eq!(s, Closed);
        assert_eq!(
            Requested.apply(Step::Resolve(FallbackMode::PaperReissue)),
            Some(PaperReissued)
        );
        // The original may be posted before the FAX was dispensed from.
        assert_eq!(Faxed.apply(Step::OriginalMailed), Some(OriginalMailed));
    }

    #[test]
    fn final_states_accept_nothing_and_every_other_step_is_out_of_order() {
        for s in [Withdrawn, PaperReissued, Closed] {
            assert!(!s.is_open());
            for step in ALL_STEPS {
                assert_eq!(s.apply(step), None, "{s:?} {step:?}");
            }
        }
        // Exactly the documented edges, nothing else.
        let allowed: usize = [Requested, Faxed, DispensedFromFax, OriginalMailed]
            .iter()
            .map(|s| {
                ALL_STEPS
                    .iter()
                    .filter(|st| s.apply(**st).is_some())
                    .count()
            })
            .sum();
        assert_eq!(allowed, 3 + 2 + 1 + 1);
        assert_eq!(Requested.apply(Step::OriginalReceived), None);
        assert_eq!(DispensedFromFax.apply(Step::Withdraw), None);
    }

    #[test]
    fn statuses_round_trip_and_steps_know_their_side() {
        for s in [
            Requested,
            Withdrawn,
            PaperReissued,
            Faxed,
            DispensedFromFax,
            OriginalMailed,
            Closed,
        ] {
            assert_eq!(FallbackStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::OriginalMailed.taken_by(), Side::Clinic);
        assert_eq!(Step::OriginalReceived.taken_by(), Side::Pharmacy);
    }
}
