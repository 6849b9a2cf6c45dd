//! Identifiers that parse once (domain.md §2): after construction a value is known to be well formed
//! and, where the scheme has one, to carry a valid check digit. All parse width-folded input.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::check_digit;
use super::errors::Invalid;
use super::text::{digits_only, fold_width};

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The inner string, for APIs that bind a borrowed `String` (query parameters).
            pub fn as_string(&self) -> &String {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                $name::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn plain_digits(raw: &str, what: &str) -> Result<String, Invalid> {
    let folded = fold_width(raw.trim());
    if folded.is_empty() {
        return Err(Invalid::new("REQUIRED", format!("{what} is required")));
    }
    if !folded.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::new(
            "FORMAT",
            format!("{what} must contain digits only"),
        ));
    }
    Ok(folded)
}

fn checked(digits: String, what: &str) -> Result<String, Invalid> {
    if check_digit::is_valid(&digits) {
        Ok(digits)
    } else {
        Err(Invalid::new(
            "CHECK_DIGIT",
            format!("{what} {digits} has a wrong check digit (last digit)"),
        ))
    }
}

/// 保険者番号: 8 digits (被用者保険, 後期高齢) or 6 digits (市町村国保), the last a check digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InsurerNumber(String);
string_newtype!(InsurerNumber);

impl InsurerNumber {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let digits = plain_digits(raw, "保険者番号 (insurer number)")?;
        if digits.len() != 8 && digits.len() != 6 {
            return Err(Invalid::new(
                "FORMAT",
                format!(
                    "保険者番号 (insurer number) must have 8 digits, or 6 for 国民健康保険; got {}",
                    digits.len()
                ),
            ));
        }
        checked(digits, "保険者番号 (insurer number)").map(Self)
    }
}

/// What a 10-digit institution code says about its holder (the 点数表 digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FacilityKind {
    Clinic,
    Pharmacy,
}

impl FacilityKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FacilityKind::Clinic => "clinic",
            FacilityKind::Pharmacy => "pharmacy",
        }
    }
}

/// 医療機関コード / 薬局コード: 都道府県(2) 点数表(1) 郡市区(2) 番号(4) 検証(1), checked over the first 9.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FacilityCode(String);
string_newtype!(FacilityCode);

impl FacilityCode {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        const WHAT: &str = "医療機関/薬局コード (institution code)";
        let digits = plain_digits(raw, WHAT)?;
        if digits.len() != 10 {
            return Err(Invalid::new(
                "FORMAT",
                format!("{WHAT} must have 10 digits; got {}", digits.len()),
            ));
        }
        let prefecture: u8 = digits[..2].parse().unwrap_or(0);
        if !(1..=47).contains(&prefecture) && prefecture != 99 {
            return Err(Invalid::new(
                "FORMAT",
                format!("{WHAT} must start with a prefecture 01–47 (or 99 for test facilities)"),
            ));
        }
        if !matches!(&digits[2..3], "1" | "3" | "4" | "6") {
            return Err(Invalid::new(
                "FORMAT",
                format!(
                    "{WHAT}: the third digit (点数表) must be 1 医科, 3 歯科, 4 調剤 or 6 訪問看護"
                ),
            ));
        }
        checked(digits, WHAT).map(Self)
    }

    /// 都道府県 code, e.g. `"13"` for Tokyo, `"99"` for the public test facilities.
    pub fn prefecture(&self) -> &str {
        &self.0[..2]
    }

    /// The 点数表 digit.
    pub fn score_table(&self) -> char {
        self.0.as_bytes()[2] as char
    }

    /// The kind of facility the code itself declares: 4 調剤 is a pharmacy, 1 医科 and 3 歯科 issue
    /// prescriptions; 6 訪問看護 is neither.
    pub fn kind(&self) -> Option<FacilityKind> {
        match self.score_table() {
            '1' | '3' => Some(FacilityKind::Clinic),
            '4' => Some(FacilityKind::Pharmacy),
            _ => None,
        }
    }
}

/// 被保険者証の記号: up to 20 characters, may be empty (後期高齢 has none), full-width folded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct InsuredSymbol(String);
string_newtype!(InsuredSymbol);

impl InsuredSymbol {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let folded = fold_width(raw.trim());
        if folded.chars().count() > 20 {
            return Err(Invalid::new(
                "TOO_LONG",
                "記号 (symbol) may have at most 20 characters",
            ));
        }
        if folded.chars().any(char::is_control) {
            return Err(Invalid::new(
                "FORMAT",
                "記号 (symbol) must not contain control characters",
            ));
        }
        Ok(Self(folded))
    }
}

/// 被保険者証の番号: 1–20 characters, full-width folded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InsuredNumber(String);
string_newtype!(InsuredNumber);

impl InsuredNumber {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let folded = fold_width(raw.trim());
        if folded.is_empty() {
            return Err(Invalid::new("REQUIRED", "番号 (number) is required"));
        }
        if folded.chars().count() > 20 {
            return Err(Invalid::new(
                "TOO_LONG",
                "番号 (number) may have at most 20 characters",
            ));
        }
        if folded.chars().any(char::is_control) {
            return Err(Invalid::new(
                "FORMAT",
                "番号 (number) must not contain control characters",
            ));
        }
        Ok(Self(folded))
    }
}

/// 枝番: exactly 2 digits, zero-padded (`01`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Branch(String);
string_newtype!(Branch);

impl Branch {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let digits = plain_digits(raw, "枝番 (branch)")?;
        if digits.len() != 2 {
            return Err(Invalid::new(
                "FORMAT",
                "枝番 (branch) must be exactly 2 digits, zero-padded, e.g. 01",
            ));
        }
        Ok(Self(digits))
    }
}

/// 引換番号: a string of digits whose leading zeros matter. Patients see 6 digits; the format allows
/// up to 16. Typed input is normalised: full-width digits, spaces and hyphens are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExchangeNumber(String);
string_newtype!(ExchangeNumber);

impl ExchangeNumber {
    pub const ISSUED_DIGITS: usize = 6;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let Some(digits) = digits_only(raw) else {
            return Err(Invalid::new(
                "FORMAT",
                "引換番号 (exchange number) must consist of digits (spaces and hyphens are ignored)",
            ));
        };
        if !(Self::ISSUED_DIGITS..=16).contains(&digits.len()) {
            return Err(Invalid::new(
                "FORMAT",
                format!(
                    "引換番号 (exchange number) must have 6 to 16 digits; got {}",
                    digits.len()
                ),
            ));
        }
        Ok(Self(digits))
    }

    /// A fresh random 6-digit number (leading zeros kept); never derived from a sequence.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        let n: u32 = rng.random_range(0..1_000_000);
        Self(format!("{n:06}"))
    }
}

/// 公費負担者番号: 8 digits, checked over the first 7.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicPayerNumber(String);
string_newtype!(PublicPayerNumber);

impl PublicPayerNumber {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        const WHAT: &str = "公費負担者番号 (public payer number)";
        let digits = plain_digits(raw, WHAT)?;
        if digits.len() != 8 {
            return Err(Invalid::new("FORMAT", format!("{WHAT} must have 8 digits")));
        }
        checked(digits, WHAT).map(Self)
    }
}

/// 公費受給者番号: 7 digits, checked over the first 6.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicRecipientNumber(String);
string_newtype!(PublicRecipientNumber);

impl PublicRecipientNumber {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        const WHAT: &str = "公費受給者番号 (public recipient number)";
        let digits = plain_digits(raw, WHAT)?;
        if digits.len() != 7 {
            return Err(Invalid::new("FORMAT", format!("{WHAT} must have 7 digits")));
        }
        checked(digits, WHAT).map(Self)
    }
}

/// 都道府県コード: `01`–`47`, and `99` for the public test facilities.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrefectureCode(String);
string_newtype!(PrefectureCode);

impl PrefectureCode {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let digits = plain_digits(raw, "prefecture code")?;
        let n: u32 = digits.parse().unwrap_or(0);
        if digits.len() != 2 || !((1..=47).contains(&n) || n == 99) {
            return Err(Invalid::new(
                "FORMAT",
                "prefecture code must be 2 digits, 01 (北海道) to 47 (沖縄県), or 99 for test facilities",
            ));
        }
        Ok(Self(digits))
    }
}

/// 全国地方公共団体コード: 6 digits, the last a check digit (weights 6,5,4,3,2; the last digit of
/// 11 − sum mod 11), e.g. `131016` 千代田区.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MunicipalityCode(String);
string_newtype!(MunicipalityCode);

impl MunicipalityCode {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        const WHAT: &str = "municipality code (全国地方公共団体コード)";
        let digits = plain_digits(raw, WHAT)?;
        if digits.len() != 6 {
            return Err(Invalid::new("FORMAT", format!("{WHAT} must have 6 digits")));
        }
        PrefectureCode::parse(&digits[..2])?;
        let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
        let sum: u32 = d[..5].iter().zip([6, 5, 4, 3, 2]).map(|(a, w)| a * w).sum();
        if (11 - sum % 11) % 10 != d[5] {
            return Err(Invalid::new(
                "CHECK_DIGIT",
                format!("{WHAT} {digits} has a wrong check digit (last digit)"),
            ));
        }
        Ok(Self(digits))
    }

    pub fn prefecture(&self) -> &str {
        &self.0[..2]
    }
}

/// The insurance identity a pharmacy must present with the 引換番号: 保険者番号, 記号, 番号, 枝番.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct InsuranceIdentity {
    pub insurer_number: InsurerNumber,
    pub symbol: InsuredSymbol,
    pub number: InsuredNumber,
    pub branch: Branch,
}

impl InsuranceIdentity {
    /// The four parts as stored (each parsed, so a stored identity is as valid as a typed one).
    pub fn parse(
        insurer_number: &str,
        symbol: &str,
        number: &str,
        branch: &str,
    ) -> Result<Self, Invalid> {
        Ok(Self {
            insurer_number: InsurerNumber::parse(insurer_number)?,
            symbol: InsuredSymbol::parse(symbol)?,
            number: InsuredNumber::parse(number)?,
            branch: Branch::parse(branch)?,
        })
    }

    /// A stable key for throttling that does not keep the numbers themselves in the database.
    pub fn throttle_key(&self) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            self.insurer_number.as_str(),
            self.symbol.as_str(),
            self.number.as_str(),
            self.branch.as_str(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.finalize().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn municipality_codes_carry_a_check_digit() {
        for ok in ["131016", "011002", "271403", "271004"] {
            assert!(MunicipalityCode::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            MunicipalityCode::parse("131017").unwrap_err().code,
            "CHECK_DIGIT"
        );
        assert_eq!(
            MunicipalityCode::parse("481016").unwrap_err().code,
            "FORMAT"
        );
        assert!(PrefectureCode::parse("99").is_ok());
        assert!(PrefectureCode::parse("48").is_err());
    }

    #[test]
    fn insurer_numbers() {
        assert_eq!(
            InsurerNumber::parse("01130012").unwrap().as_str(),
            "01130012"
        );
        assert_eq!(
            InsurerNumber::parse("０１１３００１２").unwrap().as_str(),
            "01130012"
        );
        assert_eq!(
            InsurerNumber::parse("06123456").unwrap_err().code,
            "CHECK_DIGIT"
        );
        assert_eq!(
            InsurerNumber::parse("12123456").unwrap_err().code,
            "CHECK_DIGIT"
        );
        assert_eq!(InsurerNumber::parse("0113001").unwrap_err().code, "FORMAT");
        assert_eq!(InsurerNumber::parse("").unwrap_err().code, "REQUIRED");
        assert_eq!(InsurerNumber::parse("0113001x").unwrap_err().code, "FORMAT");
        // 6-digit 国保: base 13800 → check digit computed by the same scheme.
        let base = "13800";
        let six = format!("{base}{}", check_digit::mod10(base).unwrap());
        assert!(InsurerNumber::parse(&six).is_ok());
    }

    #[test]
    fn facility_codes() {
        let clinic = FacilityCode::parse("9918000010").unwrap();
        assert_eq!(clinic.kind(), Some(FacilityKind::Clinic));
        assert_eq!(clinic.prefecture(), "99");
        let pharmacy = FacilityCode::parse("9948000014").unwrap();
        assert_eq!(pharmacy.kind(), Some(FacilityKind::Pharmacy));
        assert_eq!(
            FacilityCode::parse("0110113710").unwrap_err().code,
            "CHECK_DIGIT"
        );
        assert_eq!(FacilityCode::parse("011011371").unwrap_err().code, "FORMAT");
        assert_eq!(
            FacilityCode::parse("5010113719").unwrap_err().code,
            "FORMAT"
        );
    }

    #[test]
    fn branch_and_symbols() {
        assert_eq!(Branch::parse("01").unwrap().as_str(), "01");
        assert_eq!(Branch::parse("０１").unwrap().as_str(), "01");
        assert_eq!(Branch::parse("1").unwrap_err().code, "FORMAT");
        assert_eq!(InsuredSymbol::parse("").unwrap().as_str(), "");
        assert_eq!(InsuredSymbol::parse("ＡＢ１２").unwrap().as_str(), "AB12");
        assert_eq!(
            InsuredSymbol::parse(&"x".repeat(21)).unwrap_err().code,
            "TOO_LONG"
        );
        assert_eq!(InsuredNumber::parse(" ").unwrap_err().code, "REQUIRED");
    }

    #[test]
    fn exchange_numbers_are_normalised_text() {
        assert_eq!(ExchangeNumber::parse("012345").unwrap().as_str(), "012345");
        assert_eq!(
            ExchangeNumber::parse("０１２ ３４５").unwrap().as_str(),
            "012345"
        );
        assert_eq!(ExchangeNumber::parse("012-345").unwrap().as_str(), "012345");
        assert_eq!(
            ExchangeNumber::parse("1000000000000001").unwrap().as_str(),
            "1000000000000001"
        );
        assert_eq!(ExchangeNumber::parse("12345").unwrap_err().code, "FORMAT");
        assert_eq!(ExchangeNumber::parse("12a456").unwrap_err().code, "FORMAT");
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let n = ExchangeNumber::random(&mut rng);
            assert_eq!(n.as_str().len(), 6);
            assert!(ExchangeNumber::parse(n.as_str()).is_ok());
        }
    }

    #[test]
    fn public_expense_numbers() {
        // Build valid numbers from arbitrary bases with the shared scheme.
        let payer = format!("1213000{}", check_digit::mod10("1213000").unwrap());
        assert!(PublicPayerNumber::parse(&payer).is_ok());
        let recipient = format!("123456{}", check_digit::mod10("123456").unwrap());
        assert!(PublicRecipientNumber::parse(&recipient).is_ok());
        assert_eq!(
            PublicPayerNumber::parse("1234567").unwrap_err().code,
            "FORMAT"
        );
    }
}
