//! A prescription as a clinic submits it ([`PrescriptionDraft`]) and as the relay keeps it once every
//! field has passed its rule ([`Prescription`]). Validation reports every bad field at once.

use jiff::ToSpan;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::errors::{FieldError, FieldErrors, Invalid};
use super::identifiers::{
    Branch, InsuranceIdentity, InsuredNumber, InsuredSymbol, InsurerNumber, PublicPayerNumber,
    PublicRecipientNumber,
};
use super::lifecycle::IssueType;

/// 使用期限 when the clinic gives none: the issue date plus 3 days (4 days in all).
pub const DEFAULT_VALIDITY_DAYS: i32 = 3;
const MAX_NAME_CHARS: usize = 100;
const MAX_TEXT_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Male,
    Female,
}

/// 本人/家族.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Relationship {
    /// 1 被保険者.
    Insured,
    /// 2 被扶養者.
    Dependent,
}

/// 剤形区分 of an RP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DosageForm {
    /// 1 内服: quantity is days.
    Oral,
    /// 2 頓服: quantity is times.
    AsNeeded,
    /// 3 外用.
    External,
    /// 4 内服滴剤.
    OralDrops,
    /// 5 注射.
    Injection,
    /// 6 医療材料.
    Material,
}

impl DosageForm {
    /// The JAHIS 剤形区分 digit.
    pub fn jahis_code(&self) -> u8 {
        match self {
            DosageForm::Oral => 1,
            DosageForm::AsNeeded => 2,
            DosageForm::External => 3,
            DosageForm::OralDrops => 4,
            DosageForm::Injection => 5,
            DosageForm::Material => 6,
        }
    }
}

/// Which code list a drug code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeSystem {
    /// レセ電コード: 9 digits starting with 6.
    Receipt,
    /// 薬価基準収載医薬品コード (YJ): 12 characters.
    Yj,
    /// 一般名コード: the first 9 characters of a 薬価基準 code + `ZZZ`.
    Generic,
}

impl CodeSystem {
    /// Checks the shape of `code` for this system (membership in the master is checked later).
    pub fn check_format(&self, code: &str) -> Result<(), Invalid> {
        let ok = match self {
            CodeSystem::Receipt => {
                code.len() == 9 && code.starts_with('6') && code.bytes().all(|b| b.is_ascii_digit())
            }
            CodeSystem::Yj => is_yj_shape(code),
            CodeSystem::Generic => {
                code.len() == 12 && code.ends_with("ZZZ") && is_yj_prefix(&code[..9])
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Invalid::new(
                "FORMAT",
                match self {
                    CodeSystem::Receipt => "a レセ電コード (receipt) has 9 digits starting with 6",
                    CodeSystem::Yj => {
                        "a 薬価基準収載医薬品コード (yj) has 12 characters: 7 digits, a letter, 4 more"
                    }
                    CodeSystem::Generic => {
                        "an 一般名コード (generic) is the first 9 characters of a 薬価基準 code followed by ZZZ"
                    }
                },
            ))
        }
    }
}

fn is_yj_prefix(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() == 9
        && b[..7].iter().all(u8::is_ascii_digit)
        && b[7].is_ascii_uppercase()
        && b[8].is_ascii_alphanumeric()
}

fn is_yj_shape(code: &str) -> bool {
    // `get`, not `[..9]`: 12 bytes of non-ASCII text need not have a char boundary at byte 9.
    code.len() == 12
        && code.get(..9).is_some_and(is_yj_prefix)
        && code.as_bytes()[9..]
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

// ---------------------------------------------------------------------------------------------
// The draft: what arrives. Identifiers stay raw strings here so that every bad one is reported.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrescriptionDraft {
    pub issue_type: IssueType,
    pub patient: PatientDraft,
    pub insurance: InsuranceDraft,
    /// Up to three 公費.
    #[serde(default)]
    pub public_expenses: Vec<PublicExpenseDraft>,
    /// The prescribing doctor as printed; defaults to the staff registry entry of the caller.
    #[serde(default)]
    pub doctor: Option<DoctorDraft>,
    /// 診療科.
    #[serde(default)]
    pub department: Option<String>,
    /// 交付年月日.
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    /// 使用期限; default issued_on + 3 days.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub valid_until: Option<Date>,
    /// リフィル 総使用回数: 2 or 3; absent when not a refill prescription.
    #[serde(default)]
    pub refill_count: Option<u8>,
    /// 備考.
    #[serde(default)]
    pub remarks: Option<String>,
    pub rps: Vec<RpDraft>,
    /// A check of this facility whose override (「重複等あり・医師許可」) covers the hits the check
    /// inside registration finds. Not part of the prescription itself.
    #[serde(default)]
    pub check_id: Option<Uuid>,
    /// Register although the check cannot run (`CHECK_UNAVAILABLE`): the doctor has checked by
    /// other means. Not part of the prescription itself.
    #[serde(default)]
    pub acknowledge_check_unavailable: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientDraft {
    pub name: String,
    #[serde(default)]
    pub name_kana: Option<String>,
    pub sex: Sex,
    #[schema(value_type = String, format = Date)]
    pub birth_date: Date,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InsuranceDraft {
    /// 保険者番号: 8 digits (or 6 for 国保) with a valid check digit.
    pub insurer_number: String,
    /// 記号 (may be absent, e.g. 後期高齢).
    #[serde(default)]
    pub symbol: Option<String>,
    /// 番号.
    pub number: String,
    pub relationship: Relationship,
    /// 枝番: 2 digits.
    pub branch: String,
    /// 負担割合 in percent (e.g. 30).
    #[serde(default)]
    pub copay_rate: Option<u8>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicExpenseDraft {
    /// 公費負担者番号 (8 digits).
    pub payer_number: String,
    /// 公費受給者番号 (7 digits); absent for some programmes.
    #[serde(default)]
    pub recipient_number: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoctorDraft {
    pub name: String,
    #[serde(default)]
    pub name_kana: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RpDraft {
    pub dosage_form: DosageForm,
    /// Days for 内服, times for 頓服, 調剤数量 otherwise.
    pub quantity: i64,
    pub usage: UsageDraft,
    pub drugs: Vec<DrugDraft>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageDraft {
    /// 電子処方箋用法マスタ code (16 characters).
    #[serde(default)]
    pub code: Option<String>,
    pub text: String,
    #[serde(default)]
    pub times_per_day: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrugDraft {
    pub code_system: CodeSystem,
    pub code: String,
    pub name: String,
    /// For 内服 the daily dose.
    #[schema(value_type = f64)]
    pub dose: Dose,
    pub unit: String,
    #[serde(default)]
    pub no_substitution: bool,
}

/// A dose as an exact decimal. JSON numbers arrive as binary floats; Rust prints a float in its
/// shortest round-trip form, which is exactly what the clinic typed (`0.25`, `1.5`), so the decimal
/// is parsed from that text rather than from the float's binary value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dose(pub Decimal);

impl<'de> Deserialize<'de> for Dose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive number such as 2 or 0.25")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dose, E> {
                Ok(Dose(Decimal::from(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dose, E> {
                Ok(Dose(Decimal::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dose, E> {
                if !v.is_finite() {
                    return Err(E::custom("dose must be a finite number"));
                }
                v.to_string()
                    .parse::<Decimal>()
                    .map(Dose)
                    .map_err(|_| E::custom("dose is out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dose, E> {
                v.trim()
                    .parse::<Decimal>()
                    .map(Dose)
                    .map_err(|_| E::custom("dose must be a decimal number"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dose {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // As a JSON number, without needless zeros.
        let text = self.0.normalize().to_string();
        match text.parse::<f64>() {
            Ok(f) => s.serialize_f64(f),
            Err(_) => s.serialize_str(&text),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated prescription: what the relay stores and returns.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Prescription {
    pub issue_type: IssueType,
    pub patient: Patient,
    pub insurance: Insurance,
    pub public_expenses: Vec<PublicExpense>,
    pub doctor: Option<DoctorDraft>,
    pub department: Option<String>,
    #[schema(value_type = String, format = Date)]
    pub issued_on: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_until: Date,
    pub refill_count: Option<u8>,
    pub remarks: Option<String>,
    pub rps: Vec<Rp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Patient {
    pub name: String,
    pub name_kana: Option<String>,
    pub sex: Sex,
    #[schema(value_type = String, format = Date)]
    pub birth_date: Date,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Insurance {
    #[schema(value_type = String)]
    pub insurer_number: InsurerNumber,
    #[schema(value_type = String)]
    pub symbol: InsuredSymbol,
    #[schema(value_type = String)]
    pub number: InsuredNumber,
    pub relationship: Relationship,
    #[schema(value_type = String)]
    pub branch: Branch,
    pub copay_rate: Option<u8>,
}

impl Insurance {
    pub fn identity(&self) -> InsuranceIdentity {
        InsuranceIdentity {
            insurer_number: self.insurer_number.clone(),
            symbol: self.symbol.clone(),
            number: self.number.clone(),
            branch: self.branch.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicExpense {
    #[schema(value_type = String)]
    pub payer_number: PublicPayerNumber,
    #[schema(value_type = Option<String>)]
    pub recipient_number: Option<PublicRecipientNumber>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rp {
    pub dosage_form: DosageForm,
    pub quantity: u32,
    pub usage: Usage,
    pub drugs: Vec<Drug>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub code: Option<String>,
    pub text: String,
    pub times_per_day: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Drug {
    pub code_system: CodeSystem,
    pub code: String,
    pub name: String,
    #[schema(value_type = f64)]
    pub dose: Dose,
    pub unit: String,
    pub no_substitution: bool,
}

/// A drug line whose code must be found in the master before registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrugRef {
    /// JSON path of the code, e.g. `rps[0].drugs[1].code`.
    pub field: String,
    pub code_system: CodeSystem,
    pub code: String,
}

impl Prescription {
    pub fn drug_refs(&self) -> Vec<DrugRef> {
        drug_refs(&self.rps, |rp| &rp.drugs, |d| (d.code_system, &d.code))
    }
}

/// One [`DrugRef`] per drug line of `rps`, named by its JSON path.
fn drug_refs<R, D>(
    rps: &[R],
    drugs: impl Fn(&R) -> &[D],
    line: impl Fn(&D) -> (CodeSystem, &str),
) -> Vec<DrugRef> {
    let mut refs = Vec::new();
    for (i, rp) in rps.iter().enumerate() {
        for (j, d) in drugs(rp).iter().enumerate() {
            let (code_system, code) = line(d);
            refs.push(DrugRef {
                field: format!("rps[{i}].drugs[{j}].code"),
                code_system,
                code: code.trim().to_string(),
            });
        }
    }
    refs
}

fn text_field(
    errors: &mut FieldErrors,
    field: &str,
    value: &str,
    required: bool,
    max: usize,
) -> Option<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        if required {
            errors.add(field, "REQUIRED", format!("{field} must not be empty"));
        }
        return None;
    }
    if trimmed.chars().count() > max {
        errors.add(
            field,
            "TOO_LONG",
            format!("{field} may have at most {max} characters"),
        );
        return None;
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n') {
        errors.add(
            field,
            "FORMAT",
            format!("{field} must not contain control characters"),
        );
        return None;
    }
    // Names and texts are kept exactly as given (no width folding): 髙, 﨑, 𠮷 must survive.
    Some(trimmed.to_string())
}

fn optional_text(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Option<String> {
    value.and_then(|v| text_field(errors, field, v, false, max))
}

impl PrescriptionDraft {
    /// The drug lines of the draft, for the master lookup that runs beside field validation.
    pub fn drug_refs(&self) -> Vec<DrugRef> {
        drug_refs(&self.rps, |rp| &rp.drugs, |d| (d.code_system, &d.code))
    }

    /// Checks every field against its rule, `today` being today in Japan. Drug codes are checked
    /// for shape here and for presence in the master by the caller (see [`Prescription::drug_refs`]).
    pub fn validate(&self, today: Date) -> Result<Prescription, Vec<FieldError>> {
        let mut e = FieldErrors::new();

        // Patient.
        let name = text_field(
            &mut e,
            "patient.name",
            &self.patient.name,
            true,
            MAX_NAME_CHARS,
        );
        let name_kana = optional_text(
            &mut e,
            "patient.name_kana",
            self.patient.name_kana.as_deref(),
            MAX_NAME_CHARS,
        );
        let birth = self.patient.birth_date;
        if birth > today {
            e.add(
                "patient.birth_date",
                "IN_FUTURE",
                "patient.birth_date must not be in the future",
            );
        } else if birth < Date::constant(1900, 1, 1) {
            e.add(
                "patient.birth_date",
                "OUT_OF_RANGE",
                "patient.birth_date must be 1900-01-01 or later",
            );
        }

        // Insurance.
        let ins = &self.insurance;
        let insurer = e.take(
            "insurance.insurer_number",
            InsurerNumber::parse(&ins.insurer_number),
        );
        let symbol = e.take(
            "insurance.symbol",
            InsuredSymbol::parse(ins.symbol.as_deref().unwrap_or("")),
        );
        let number = e.take("insurance.number", InsuredNumber::parse(&ins.number));
        let branch = e.take("insurance.branch", Branch::parse(&ins.branch));
        if let Some(rate) = ins.copay_rate
            && (rate > 100 || rate % 10 != 0)
        {
            e.add(
                "insurance.copay_rate",
                "OUT_OF_RANGE",
                "insurance.copay_rate is a percentage in steps of 10 (0–100), e.g. 30",
            );
        }

        // 公費.
        if self.public_expenses.len() > 3 {
            e.add(
                "public_expenses",
                "TOO_MANY",
                "at most three 公費 (public_expenses) may be given",
            );
        }
        let mut public_expenses = Vec::new();
        for (i, pe) in self.public_expenses.iter().enumerate() {
            let payer = e.take(
                format!("public_expenses[{i}].payer_number"),
                PublicPayerNumber::parse(&pe.payer_number),
            );
            let recipient = match pe.recipient_number.as_deref() {
                None => Some(None),
                Some(r) => e
                    .take(
                        format!("public_expenses[{i}].recipient_number"),
                        PublicRecipientNumber::parse(r),
                    )
                    .map(Some),
            };
            if let (Some(payer_number), Some(recipient_number)) = (payer, recipient) {
                public_expenses.push(PublicExpense {
                    payer_number,
                    recipient_number,
                });
            }
        }

        // Doctor, department, remarks.
        let doctor = self.doctor.as_ref().and_then(|d| {
            let name = text_field(&mut e, "doctor.name", &d.name, true, MAX_NAME_CHARS)?;
            let name_kana = optional_text(
                &mut e,
                "doctor.name_kana",
                d.name_kana.as_deref(),
                MAX_NAME_CHARS,
            );
            Some(DoctorDraft { name, name_kana })
        });
        let department = optional_text(
            &mut e,
            "department",
            self.department.as_deref(),
            MAX_NAME_CHARS,
        );
        let remarks = optional_text(&mut e, "remarks", self.remarks.as_deref(), MAX_TEXT_CHARS);

        // Dates.
        if self.issued_on > today {
            e.add(
                "issued_on",
                "IN_FUTURE",
                format!("issued_on must not be after today ({today})"),
            );
        }
        let default_until = self
            .issued_on
            .checked_add(DEFAULT_VALIDITY_DAYS.days())
            .unwrap_or(self.issued_on);
        let valid_until = self.valid_until.unwrap_or(default_until);
        if valid_until < self.issued_on {
            e.add(
                "valid_until",
                "BEFORE_ISSUE_DATE",
                "valid_until must be on or after issued_on",
            );
        } else if valid_until < today {
            e.add(
                "valid_until",
                "IN_PAST",
                format!(
                    "valid_until {valid_until} has passed: a prescription that can no longer be received cannot be registered"
                ),
            );
        } else if self
            .issued_on
            .checked_add(1.year())
            .is_ok_and(|limit| valid_until > limit)
        {
            e.add(
                "valid_until",
                "OUT_OF_RANGE",
                "valid_until may be at most one year after issued_on",
            );
        }

        if let Some(n) = self.refill_count
            && !matches!(n, 2 | 3)
        {
            e.add(
                "refill_count",
                "OUT_OF_RANGE",
                "refill_count (リフィル 総使用回数) must be 2 or 3, or absent",
            );
        }

        // RPs.
        if self.rps.is_empty() {
            e.add("rps", "REQUIRED", "at least one RP is required");
        }
        let mut rps = Vec::with_capacity(self.rps.len());
        for (i, rp) in self.rps.iter().enumerate() {
            if let Some(rp) = validate_rp(&mut e, i, rp) {
                rps.push(rp);
            }
        }

        match (name, insurer, symbol, number, branch) {
            (Some(name), Some(insurer_number), Some(symbol), Some(number), Some(branch))
                if e.is_empty() =>
            {
                Ok(Prescription {
                    issue_type: self.issue_type,
                    patient: Patient {
                        name,
                        name_kana,
                        sex: self.patient.sex,
                        birth_date: birth,
                    },
                    insurance: Insurance {
                        insurer_number,
                        symbol,
                        number,
                        relationship: ins.relationship,
                        branch,
                        copay_rate: ins.copay_rate,
                    },
                    public_expenses,
                    doctor,
                    department,
                    issued_on: self.issued_on,
                    valid_until,
                    refill_count: self.refill_count,
                    remarks,
                    rps,
                })
            }
            _ => Err(e.into_vec()),
        }
    }
}

/// RPs on their own (a standalone duplicate check), validated exactly as in a prescription.
pub fn validate_rps(rps: &[RpDraft]) -> Result<Vec<Rp>, Vec<FieldError>> {
    let mut e = FieldErrors::new();
    if rps.is_empty() {
        e.add("rps", "REQUIRED", "at least one RP is required");
    }
    let valid: Vec<Rp> = rps
        .iter()
        .enumerate()
        .filter_map(|(i, rp)| validate_rp(&mut e, i, rp))
        .collect();
    e.finish(|| valid)
}

/// One [`DrugRef`] per drug line of validated RPs.
pub fn rp_drug_refs(rps: &[Rp]) -> Vec<DrugRef> {
    drug_refs(rps, |rp| &rp.drugs, |d| (d.code_system, &d.code))
}

fn validate_rp(e: &mut FieldErrors, i: usize, rp: &RpDraft) -> Option<Rp> {
    let before = e.len();
    let quantity = if (1..=999).contains(&rp.quantity) {
        rp.quantity as u32
    } else {
        e.add(
            format!("rps[{i}].quantity"),
            "OUT_OF_RANGE",
            "quantity must be a whole number from 1 to 999 (days for 内服, times for 頓服)",
        );
        0
    };
    let text = text_field(
        e,
        &format!("rps[{i}].usage.text"),
        &rp.usage.text,
        true,
        200,
    );
    let code = rp
        .usage
        .code
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if let Some(c) = code
        && (c.len() != 16 || !c.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        e.add(
            format!("rps[{i}].usage.code"),
            "FORMAT",
            "usage.code is a 16-character 電子処方箋用法マスタ code",
        );
    }
    let times_per_day = match rp.usage.times_per_day {
        None => None,
        Some(n @ 1..=24) => Some(n as u8),
        Some(_) => {
            e.add(
                format!("rps[{i}].usage.times_per_day"),
                "OUT_OF_RANGE",
                "usage.times_per_day must be from 1 to 24",
            );
            None
        }
    };
    if rp.drugs.is_empty() {
        e.add(
            format!("rps[{i}].drugs"),
            "REQUIRED",
            "every RP needs at least one drug",
        );
    }
    let mut drugs = Vec::with_capacity(rp.drugs.len());
    for (j, d) in rp.drugs.iter().enumerate() {
        let base = format!("rps[{i}].drugs[{j}]");
        let code = d.code.trim().to_string();
        if let Err(err) = d.code_system.check_format(&code) {
            e.add(format!("{base}.code"), err.code, err.message);
        }
        let name = text_field(e, &format!("{base}.name"), &d.name, true, 200);
        let unit = text_field(e, &format!("{base}.unit"), &d.unit, true, 20);
        let dose = d.dose.0;
        if dose <= Decimal::ZERO || dose >= Decimal::from(100_000) || dose.normalize().scale() > 5 {
            e.add(
                format!("{base}.dose"),
                "OUT_OF_RANGE",
                "dose must be positive, below 100000, with at most 5 decimal places",
            );
        }
        if let (Some(name), Some(unit)) = (name, unit) {
            drugs.push(Drug {
                code_system: d.code_system,
                code,
                name,
                dose: Dose(dose.normalize()),
                unit,
                no_substitution: d.no_substitution,
            });
        }
    }
    let after = e.len();
    (after == before).then(|| Rp {
        dosage_form: rp.dosage_form,
        quantity,
        usage: Usage {
            code: code.map(str::to_string),
            text: text.unwrap_or_default(),
            times_per_day,
        },
        drugs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn draft() -> serde_json::Value {
        serde_json::json!({
            "issue_type": "electronic",
            "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": "1980-04-01"},
            "insurance": {"insurer_number": "01130012", "symbol": "１２３", "number": "4567", "relationship": "insured", "branch": "01", "copay_rate": 30},
            "issued_on": "2026-11-20",
            "rps": [{"dosage_form": "oral", "quantity": 14, "usage": {"text": "1日3回毎食後", "times_per_day": 3},
                     "drugs": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 0.25, "unit": "錠"}]}]
        })
    }

    fn parse(v: serde_json::Value) -> PrescriptionDraft {
        serde_json::from_value(v).expect("draft parses")
    }

    #[test]
    fn valid_draft_gets_defaults_and_keeps_names() {
        let p = parse(draft()).validate(date(2026, 11, 21)).expect("valid");
        assert_eq!(p.valid_until, date(2026, 11, 23));
        assert_eq!(p.patient.name, "髙橋 𠮷子");
        assert_eq!(p.insurance.symbol.as_str(), "123");
        assert_eq!(p.rps[0].drugs[0].dose.0.to_string(), "0.25");
        assert_eq!(p.drug_refs()[0].field, "rps[0].drugs[0].code");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["rps"][0]["drugs"][0]["dose"], serde_json::json!(0.25));
        let back: Prescription = serde_json::from_value(json).unwrap();
        assert_eq!(back.rps[0].drugs[0].dose.0.to_string(), "0.25");
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let mut v = draft();
        v["insurance"]["insurer_number"] = "06123456".into();
        v["insurance"]["branch"] = "1".into();
        v["issued_on"] = "2026-11-25".into();
        v["valid_until"] = "2026-11-24".into();
        v["refill_count"] = 4.into();
        v["rps"][0]["quantity"] = 0.into();
        v["rps"][0]["drugs"][0]["code"] = "123".into();
        v["rps"][0]["drugs"][0]["dose"] = 0.into();
        v["patient"]["name"] = " ".into();
        let errors = parse(v).validate(date(2026, 11, 21)).unwrap_err();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        for want in [
            ("patient.name", "REQUIRED"),
            ("insurance.insurer_number", "CHECK_DIGIT"),
            ("insurance.branch", "FORMAT"),
            ("issued_on", "IN_FUTURE"),
            ("valid_until", "BEFORE_ISSUE_DATE"),
            ("refill_count", "OUT_OF_RANGE"),
            ("rps[0].quantity", "OUT_OF_RANGE"),
            ("rps[0].drugs[0].code", "FORMAT"),
            ("rps[0].drugs[0].dose", "OUT_OF_RANGE"),
        ] {
            assert!(got.contains(&want), "missing {want:?} in {got:?}");
        }
    }

    #[test]
    fn empty_rps_and_drugs_are_refused() {
        let mut v = draft();
        v["rps"] = serde_json::json!([]);
        let errors = parse(v).validate(date(2026, 11, 21)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == "rps" && e.code == "REQUIRED")
        );
        let mut v = draft();
        v["rps"][0]["drugs"] = serde_json::json!([]);
        let errors = parse(v).validate(date(2026, 11, 21)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == "rps[0].drugs" && e.code == "REQUIRED")
        );
    }

    #[test]
    fn code_shapes() {
        assert!(CodeSystem::Receipt.check_format("610406079").is_ok());
        assert!(CodeSystem::Receipt.check_format("510406079").is_err());
        assert!(CodeSystem::Yj.check_format("2325003B2029").is_ok());
        assert!(CodeSystem::Yj.check_format("2325003B202").is_err());
        assert!(CodeSystem::Generic.check_format("2325003B2ZZZ").is_ok());
        assert!(CodeSystem::Generic.check_format("2325003B2029").is_err());
    }

    #[test]
    fn past_validity_and_refill_counts() {
        let mut v = draft();
        v["issued_on"] = "2026-11-01".into();
        let errors = parse(v).validate(date(2026, 11, 21)).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == "valid_until" && e.code == "IN_PAST")
        );
        let mut v = draft();
        v["refill_count"] = 3.into();
        assert!(parse(v).validate(date(2026, 11, 21)).is_ok());
    }
}
