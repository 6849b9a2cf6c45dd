//! The dispensing result a pharmacy registers (調剤結果): what was dispensed, when, any 疑義照会, an
//! optional 重要な伝達事項 for the doctor, and for refills the next planned date.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::errors::{FieldError, FieldErrors};
use super::prescription::{CodeSystem, Dose, DrugRef};

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispenseDraft {
    #[schema(value_type = String, format = Date)]
    pub dispensed_on: Date,
    pub items: Vec<DispensedItemDraft>,
    #[serde(default)]
    pub inquiry: Option<Inquiry>,
    /// 重要な伝達事項 for the prescriber; the clinic sees that one exists.
    #[serde(default)]
    pub important_note: Option<String>,
    /// Refills: the planned date of the next use (required while uses remain).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub next_refill_date: Option<Date>,
    /// A dispensing check of this pharmacy whose override (the pharmacist's record of the
    /// prescriber's answer to a 疑義照会) covers the hits the check inside dispensing finds.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub check_id: Option<uuid::Uuid>,
    /// Dispense although the check cannot run (`CHECK_UNAVAILABLE`).
    #[serde(default)]
    pub acknowledge_check_unavailable: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispensedItemDraft {
    pub code_system: CodeSystem,
    pub code: String,
    pub name: String,
    /// Amount dispensed in `unit` (for 内服 the daily dose).
    #[schema(value_type = f64)]
    pub dose: Dose,
    pub unit: String,
    /// Days supplied (内服) or times (頓服); drives the duplicate-check window.
    #[serde(default)]
    pub days: Option<i64>,
}

/// The outcome of a 疑義照会 (pharmacist's query to the prescriber).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Inquiry {
    pub question: String,
    pub answer: String,
    /// True when the prescriber changed the prescription as a result (recorded here, never by
    /// editing the prescription).
    #[serde(default)]
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Dispensing {
    #[schema(value_type = String, format = Date)]
    pub dispensed_on: Date,
    pub items: Vec<DispensedItem>,
    pub inquiry: Option<Inquiry>,
    pub important_note: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
    pub next_refill_date: Option<Date>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DispensedItem {
    pub code_system: CodeSystem,
    pub code: String,
    pub name: String,
    #[schema(value_type = f64)]
    pub dose: Dose,
    pub unit: String,
    pub days: Option<u32>,
}

/// What the dispensing validation needs to know about the prescription.
#[derive(Debug, Clone, Copy)]
pub struct DispenseContext {
    pub today: Date,
    pub issued_on: Date,
    /// True when this is not the last use of a refill prescription.
    pub refill_uses_remain: bool,
}

impl Dispensing {
    pub fn drug_refs(&self) -> Vec<DrugRef> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, d)| DrugRef {
                field: format!("items[{i}].code"),
                code_system: d.code_system,
                code: d.code.clone(),
            })
            .collect()
    }
}

impl DispenseDraft {
    pub fn validate(&self, ctx: DispenseContext) -> Result<Dispensing, Vec<FieldError>> {
        let mut e = FieldErrors::new();
        if self.dispensed_on > ctx.today {
            e.add(
                "dispensed_on",
                "IN_FUTURE",
                format!("dispensed_on must not be after today ({})", ctx.today),
            );
        }
        if self.dispensed_on < ctx.issued_on {
            e.add(
                "dispensed_on",
                "BEFORE_ISSUE_DATE",
                format!(
                    "dispensed_on must not be before the prescription's issue date ({})",
                    ctx.issued_on
                ),
            );
        }
        if self.items.is_empty() {
            e.add(
                "items",
                "REQUIRED",
                "at least one dispensed item is required",
            );
        }
        let mut items = Vec::new();
        for (i, it) in self.items.iter().enumerate() {
            let base = format!("items[{i}]");
            let code = it.code.trim().to_string();
            if let Err(err) = it.code_system.check_format(&code) {
                e.add(format!("{base}.code"), err.code, err.message);
            }
            let name = it.name.trim();
            if name.is_empty() || name.chars().count() > 200 {
                e.add(
                    format!("{base}.name"),
                    "REQUIRED",
                    "name is required (at most 200 characters)",
                );
            }
            let unit = it.unit.trim();
            if unit.is_empty() || unit.chars().count() > 20 {
                e.add(
                    format!("{base}.unit"),
                    "REQUIRED",
                    "unit is required (at most 20 characters)",
                );
            }
            if it.dose.0 <= rust_decimal::Decimal::ZERO {
                e.add(
                    format!("{base}.dose"),
                    "OUT_OF_RANGE",
                    "dose must be positive",
                );
            }
            let days = match it.days {
                None => None,
                Some(d @ 1..=999) => Some(d as u32),
                Some(_) => {
                    e.add(
                        format!("{base}.days"),
                        "OUT_OF_RANGE",
                        "days must be from 1 to 999",
                    );
                    None
                }
            };
            items.push(DispensedItem {
                code_system: it.code_system,
                code,
                name: name.to_string(),
                dose: Dose(it.dose.0.normalize()),
                unit: unit.to_string(),
                days,
            });
        }
        let note = self
            .important_note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if note.is_some_and(|n| n.chars().count() > 1000) {
            e.add(
                "important_note",
                "TOO_LONG",
                "important_note may have at most 1000 characters",
            );
        }
        if let Some(q) = &self.inquiry
            && (q.question.trim().is_empty() || q.answer.trim().is_empty())
        {
            e.add(
                "inquiry",
                "REQUIRED",
                "an inquiry (疑義照会) needs both question and answer",
            );
        }
        match (ctx.refill_uses_remain, self.next_refill_date) {
            (true, None) => e.add(
                "next_refill_date",
                "REQUIRED",
                "this refill prescription has uses left: give the planned date of the next use",
            ),
            (true, Some(d)) if d <= self.dispensed_on => e.add(
                "next_refill_date",
                "OUT_OF_RANGE",
                "next_refill_date must be after dispensed_on",
            ),
            (false, Some(_)) => e.add(
                "next_refill_date",
                "NOT_A_REFILL",
                "next_refill_date is only for refill prescriptions with uses left",
            ),
            _ => {}
        }
        e.finish(|| Dispensing {
            dispensed_on: self.dispensed_on,
            items,
            inquiry: self.inquiry.clone(),
            important_note: note.map(str::to_string),
            next_refill_date: self.next_refill_date,
        })
    }
}
