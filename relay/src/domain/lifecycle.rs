//! The prescription lifecycle (domain.md §5): registered → dispensing → dispensed, or cancelled, or
//! expired. A registered prescription is never edited; a cancel while a pharmacy holds it is pending
//! until the pharmacy releases it.

use jiff::ToSpan;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// 未受付: issued, no pharmacy has taken it.
    Registered,
    /// 調剤中: one pharmacy holds it.
    Dispensing,
    /// 調剤済.
    Dispensed,
    /// 取消.
    Cancelled,
    /// Past its 使用期限 (or a refill's window) without being received.
    Expired,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Registered => "registered",
            Status::Dispensing => "dispensing",
            Status::Dispensed => "dispensed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "registered" => Status::Registered,
            "dispensing" => Status::Dispensing,
            "dispensed" => Status::Dispensed,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IssueType {
    /// 電子処方箋: the patient gets a 処方内容（控え）.
    Electronic,
    /// 紙の処方箋（引換番号付き）: paper, with the data registered so checks and history work.
    PaperWithExchangeNumber,
}

impl IssueType {
    pub fn as_str(&self) -> &'static str {
        match self {
            IssueType::Electronic => "electronic",
            IssueType::PaperWithExchangeNumber => "paper_with_exchange_number",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "electronic" => Some(IssueType::Electronic),
            "paper_with_exchange_number" => Some(IssueType::PaperWithExchangeNumber),
            _ => None,
        }
    }
}

/// Days before and after the planned date in which a later refill use may be received.
pub const REFILL_WINDOW_DAYS: i32 = 7;

/// The dates that decide whether a not-yet-received prescription can still be received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub valid_until: Date,
    /// Uses already dispensed (refills: 0 before the first use).
    pub uses_dispensed: i16,
    /// Planned date of the next refill use, once the first use is dispensed.
    pub next_refill_date: Option<Date>,
}

/// Where `today` falls for a registered prescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Open,
    /// A later refill use before its window opens (planned date − 7 days).
    NotYet {
        opens_on: Date,
    },
    Closed,
}

impl Validity {
    /// The first use is receivable until 使用期限; a later refill use from 7 days before to 7 days
    /// after its planned date (planned 6/13 → 6/6–6/20).
    pub fn window(&self, today: Date) -> Window {
        match (self.uses_dispensed, self.next_refill_date) {
            (0, _) | (_, None) => {
                if today <= self.valid_until {
                    Window::Open
                } else {
                    Window::Closed
                }
            }
            (_, Some(planned)) => {
                let opens = planned
                    .checked_sub(REFILL_WINDOW_DAYS.days())
                    .unwrap_or(planned);
                let closes = planned
                    .checked_add(REFILL_WINDOW_DAYS.days())
                    .unwrap_or(planned);
                if today < opens {
                    Window::NotYet { opens_on: opens }
                } else if today > closes {
                    Window::Closed
                } else {
                    Window::Open
                }
            }
        }
    }
}

/// The status a client sees: a stored `registered` whose window has closed reads as `expired`.
pub fn effective_status(stored: Status, validity: &Validity, today: Date) -> Status {
    if stored == Status::Registered && validity.window(today) == Window::Closed {
        Status::Expired
    } else {
        stored
    }
}

/// What happened to a prescription, as written to its append-only event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Registered,
    Received,
    Released,
    Dispensed,
    Cancelled,
    CancellationRequested,
    CancellationApplied,
    CancellationRejected,
    Expired,
    /// 事前送付: the issuing clinic forwarded it to the pharmacy the patient named.
    Presend,
    /// The pharmacy a prescription was pre-sent to marked it prepared (準備済み).
    PresendPrepared,
}

impl EventAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventAction::Registered => "registered",
            EventAction::Received => "received",
            EventAction::Released => "released",
            EventAction::Dispensed => "dispensed",
            EventAction::Cancelled => "cancelled",
            EventAction::CancellationRequested => "cancellation_requested",
            EventAction::CancellationApplied => "cancellation_applied",
            EventAction::CancellationRejected => "cancellation_rejected",
            EventAction::Expired => "expired",
            EventAction::Presend => "presend",
            EventAction::PresendPrepared => "presend_prepared",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn first_use_is_open_through_valid_until() {
        let v = Validity {
            valid_until: date(2026, 6, 4),
            uses_dispensed: 0,
            next_refill_date: None,
        };
        assert_eq!(v.window(date(2026, 6, 4)), Window::Open);
        assert_eq!(v.window(date(2026, 6, 5)), Window::Closed);
        assert_eq!(
            effective_status(Status::Registered, &v, date(2026, 6, 5)),
            Status::Expired
        );
        assert_eq!(
            effective_status(Status::Dispensing, &v, date(2026, 6, 5)),
            Status::Dispensing
        );
    }

    #[test]
    fn refill_window_is_seven_days_either_side() {
        let v = Validity {
            valid_until: date(2026, 5, 20),
            uses_dispensed: 1,
            next_refill_date: Some(date(2026, 6, 13)),
        };
        assert_eq!(
            v.window(date(2026, 6, 5)),
            Window::NotYet {
                opens_on: date(2026, 6, 6)
            }
        );
        assert_eq!(v.window(date(2026, 6, 6)), Window::Open);
        assert_eq!(v.window(date(2026, 6, 20)), Window::Open);
        assert_eq!(v.window(date(2026, 6, 21)), Window::Closed);
    }
}
