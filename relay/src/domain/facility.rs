//! Facilities (医療機関 and 薬局) in the registry, and insured persons in the eligibility registry.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::errors::{FieldError, FieldErrors};
use super::identifiers::{
    Branch, FacilityCode, FacilityKind, InsuranceIdentity, InsuredNumber, InsuredSymbol,
    InsurerNumber, MunicipalityCode,
};
use super::prescription::Sex;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FacilityDraft {
    pub code: String,
    #[schema(value_type = String, example = "clinic")]
    pub kind: FacilityKind,
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    pub email: String,
    /// The pharmacy's email-to-FAX gateway address.
    #[serde(default)]
    pub fax_email: Option<String>,
    /// Pharmacies: whether it takes e-prescriptions (default true).
    #[serde(default)]
    pub accepts_e_prescriptions: Option<bool>,
    /// 全国地方公共団体コード of the facility's municipality (disaster areas).
    #[serde(default)]
    pub municipality_code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Facility {
    #[schema(value_type = String)]
    pub code: FacilityCode,
    #[schema(value_type = String)]
    pub kind: FacilityKind,
    pub name: String,
    pub address: Option<String>,
    pub phone: Option<String>,
    pub email: String,
    pub fax_email: Option<String>,
    pub accepts_e_prescriptions: bool,
    #[schema(value_type = Option<String>)]
    pub municipality_code: Option<MunicipalityCode>,
}

fn email_ok(s: &str) -> bool {
    // Deliberately loose: one @ with text on both sides and a dot in the domain; delivery is the
    // real test (mail arrives in issue 7).
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.len() <= 254
}

fn opt_trim(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

impl FacilityDraft {
    pub fn validate(&self) -> Result<Facility, Vec<FieldError>> {
        let mut e = FieldErrors::new();
        let code = e.take("code", FacilityCode::parse(&self.code));
        if let Some(code) = &code
            && code.kind() != Some(self.kind)
        {
            e.add(
                "kind",
                "KIND_MISMATCH",
                format!(
                    "code {code} has 点数表 digit {} which is not a {}: 1 医科 and 3 歯科 are clinics, 4 調剤 is a pharmacy",
                    code.score_table(),
                    self.kind.as_str()
                ),
            );
        }
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            e.add(
                "name",
                "REQUIRED",
                "name is required (at most 200 characters)",
            );
        }
        let email = self.email.trim();
        if !email_ok(email) {
            e.add(
                "email",
                "FORMAT",
                "email must be an address such as clinic@example.jp",
            );
        }
        let fax_email = opt_trim(&self.fax_email);
        if fax_email.as_deref().is_some_and(|f| !email_ok(f)) {
            e.add(
                "fax_email",
                "FORMAT",
                "fax_email must be the address of an email-to-FAX gateway",
            );
        }
        let municipality_code = opt_trim(&self.municipality_code)
            .and_then(|m| e.take("municipality_code", MunicipalityCode::parse(&m)));
        if let (Some(code), Some(m)) = (&code, &municipality_code)
            && code.prefecture() != m.prefecture()
        {
            e.add(
                "municipality_code",
                "PREFECTURE_MISMATCH",
                format!(
                    "municipality {m} is in prefecture {}, but the facility code {code} is in prefecture {}",
                    m.prefecture(),
                    code.prefecture()
                ),
            );
        }
        e.finish(|| Facility {
            code: code.expect("code parsed when no errors"),
            kind: self.kind,
            name: name.to_string(),
            address: opt_trim(&self.address),
            phone: opt_trim(&self.phone),
            email: email.to_string(),
            fax_email,
            accepts_e_prescriptions: self.accepts_e_prescriptions.unwrap_or(true),
            municipality_code,
        })
    }
}

/// Documents an insured person holds besides the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeldDocument {
    /// 資格確認書.
    QualificationCertificate,
    /// 資格情報のお知らせ.
    EligibilityNotice,
}

impl HeldDocument {
    pub fn as_str(&self) -> &'static str {
        match self {
            HeldDocument::QualificationCertificate => "qualification_certificate",
            HeldDocument::EligibilityNotice => "eligibility_notice",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardDraft {
    pub card_id: String,
    #[schema(value_type = String, format = Date)]
    pub certificate_expires_on: Date,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InsuredDraft {
    pub insurer_number: String,
    #[serde(default)]
    pub symbol: Option<String>,
    pub number: String,
    pub branch: String,
    pub name: String,
    #[serde(default)]
    pub name_kana: Option<String>,
    pub sex: Sex,
    #[schema(value_type = String, format = Date)]
    pub birth_date: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_from: Date,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub valid_until: Option<Date>,
    #[serde(default)]
    pub card: Option<CardDraft>,
    #[serde(default)]
    pub documents: Vec<HeldDocument>,
    /// The operator's key for the person, linking coverages across insurance changes (e.g. the
    /// 個人単位被保険者番号). Without it, a coverage joins the person holding the same card, or the
    /// same insurance identity and birth date.
    #[serde(default)]
    pub person_ref: Option<String>,
    /// The address on file (disaster mode uses it to tell namesakes apart).
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InsuredPerson {
    #[schema(value_type = String)]
    pub insurer_number: InsurerNumber,
    #[schema(value_type = String)]
    pub symbol: InsuredSymbol,
    #[schema(value_type = String)]
    pub number: InsuredNumber,
    #[schema(value_type = String)]
    pub branch: Branch,
    pub name: String,
    pub name_kana: Option<String>,
    pub sex: Sex,
    #[schema(value_type = String, format = Date)]
    pub birth_date: Date,
    #[schema(value_type = String, format = Date)]
    pub valid_from: Date,
    #[schema(value_type = Option<String>, format = Date)]
    pub valid_until: Option<Date>,
    pub card: Option<CardDraft>,
    pub documents: Vec<HeldDocument>,
    pub person_ref: Option<String>,
    pub address: Option<String>,
}

impl InsuredPerson {
    pub fn identity(&self) -> InsuranceIdentity {
        InsuranceIdentity {
            insurer_number: self.insurer_number.clone(),
            symbol: self.symbol.clone(),
            number: self.number.clone(),
            branch: self.branch.clone(),
        }
    }
}

impl InsuredDraft {
    pub fn validate(&self, today: Date) -> Result<InsuredPerson, Vec<FieldError>> {
        let mut e = FieldErrors::new();
        let insurer = e.take("insurer_number", InsurerNumber::parse(&self.insurer_number));
        let symbol = e.take(
            "symbol",
            InsuredSymbol::parse(self.symbol.as_deref().unwrap_or("")),
        );
        let number = e.take("number", InsuredNumber::parse(&self.number));
        let branch = e.take("branch", Branch::parse(&self.branch));
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            e.add(
                "name",
                "REQUIRED",
                "name is required (at most 100 characters)",
            );
        }
        if self.birth_date > today {
            e.add(
                "birth_date",
                "IN_FUTURE",
                "birth_date must not be in the future",
            );
        }
        if self.valid_from < self.birth_date {
            e.add(
                "valid_from",
                "BEFORE_BIRTH",
                "valid_from must not be before birth_date",
            );
        }
        if self.valid_until.is_some_and(|u| u < self.valid_from) {
            e.add(
                "valid_until",
                "BEFORE_VALID_FROM",
                "valid_until must be on or after valid_from",
            );
        }
        if let Some(card) = &self.card {
            let id = card.card_id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                e.add(
                    "card.card_id",
                    "FORMAT",
                    "card.card_id must be 1–64 ASCII letters, digits or hyphens",
                );
            }
        }
        let person_ref = opt_trim(&self.person_ref);
        if person_ref
            .as_deref()
            .is_some_and(|r| r.chars().count() > 64 || r.chars().any(char::is_control))
        {
            e.add(
                "person_ref",
                "FORMAT",
                "person_ref is at most 64 characters without control characters",
            );
        }
        let address = opt_trim(&self.address);
        if address.as_deref().is_some_and(|a| a.chars().count() > 200) {
            e.add("address", "TOO_LONG", "address has at most 200 characters");
        }
        let mut documents = self.documents.clone();
        documents.sort_by_key(|d| d.as_str());
        documents.dedup();
        match (insurer, symbol, number, branch) {
            (Some(insurer_number), Some(symbol), Some(number), Some(branch)) if e.is_empty() => {
                Ok(InsuredPerson {
                    insurer_number,
                    symbol,
                    number,
                    branch,
                    name: name.to_string(),
                    name_kana: opt_trim(&self.name_kana),
                    sex: self.sex,
                    birth_date: self.birth_date,
                    valid_from: self.valid_from,
                    valid_until: self.valid_until,
                    card: self.card.as_ref().map(|c| CardDraft {
                        card_id: c.card_id.trim().to_string(),
                        certificate_expires_on: c.certificate_expires_on,
                    }),
                    documents,
                    person_ref,
                    address,
                })
            }
            _ => Err(e.into_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facility_kind_must_match_the_code() {
        let draft: FacilityDraft = serde_json::from_value(serde_json::json!({
            "code": "9948000014", "kind": "clinic", "name": "x", "email": "a@b.jp"
        }))
        .unwrap();
        let errors = draft.validate().unwrap_err();
        assert_eq!(errors[0].code, "KIND_MISMATCH");
        let draft: FacilityDraft = serde_json::from_value(serde_json::json!({
            "code": "9948000014", "kind": "pharmacy", "name": "検証用薬局", "email": "rx@example.jp"
        }))
        .unwrap();
        assert!(draft.validate().is_ok());
    }

    #[test]
    fn emails() {
        assert!(email_ok("clinic@example.jp"));
        assert!(!email_ok("clinic@example"));
        assert!(!email_ok("@example.jp"));
        assert!(!email_ok("a b@example.jp"));
    }
}
