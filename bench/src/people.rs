//! Insured persons and facilities, each a pure function of its index and the seed, so `prepare`
//! and every later `history` round agree on who person `k` is without reading it back.

use jiff::civil::Date;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::domain::check_digit::mod10;
use uuid::Uuid;

use crate::drugs::DrugSets;

const SURNAMES: &[(&str, &str)] = &[
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("髙橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
    ("渡辺", "ワタナベ"),
    ("山本", "ヤマモト"),
    ("中村", "ナカムラ"),
    ("小林", "コバヤシ"),
    ("加藤", "カトウ"),
    ("吉田", "ヨシダ"),
    ("山田", "ヤマダ"),
];
const GIVEN: &[(&str, &str)] = &[
    ("太郎", "タロウ"),
    ("花子", "ハナコ"),
    ("一郎", "イチロウ"),
    ("陽子", "ヨウコ"),
    ("健", "ケン"),
    ("美咲", "ミサキ"),
    ("翔太", "ショウタ"),
    ("𠮷子", "ヨシコ"),
    ("大輔", "ダイスケ"),
    ("恵子", "ケイコ"),
];

/// Clinics and pharmacies of the generated country (besides the demo facilities).
pub const CLINICS: u32 = 2_000;
pub const PHARMACIES: u32 = 3_000;

pub fn facility_code(prefecture: u32, table: char, n: u32) -> String {
    let base = format!("{prefecture:02}{table}{n:06}");
    let check = mod10(&base).expect("digits");
    format!("{base}{check}")
}

pub fn clinic(n: u32) -> String {
    facility_code(1 + n % 47, '1', 100_000 + n)
}

pub fn pharmacy(n: u32) -> String {
    facility_code(1 + n % 47, '4', 100_000 + n)
}

pub fn rng(seed: u64, stream: u64, k: u64) -> StdRng {
    // Distinct streams per purpose, person and round; splitmix-style mixing of the three.
    let mut x =
        seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    StdRng::seed_from_u64(x)
}

pub struct Person {
    pub id: Uuid,
    pub insurer_number: String,
    pub symbol: String,
    pub number: String,
    pub branch: &'static str,
    pub name: String,
    pub name_kana: String,
    pub sex: &'static str,
    pub birth_date: Date,
    pub card_id: String,
    /// Indexes into [`DrugSets::chronic`], and the product each one is dispensed as.
    pub regimen: Vec<(usize, usize)>,
    /// A drug of [`DrugSets::fresh`] this person has never had (index, product).
    pub fresh: (usize, usize),
}

impl Person {
    pub fn new(seed: u64, k: u32, drugs: &DrugSets) -> Self {
        let mut r = rng(seed, 1, u64::from(k));
        // 3,000 insurers (8 digits with the check digit), a 記号 per office, 番号 unique per person.
        let insurer_base = format!("06{:05}", 10_000 + k % 3_000);
        let insurer_number = format!("{insurer_base}{}", mod10(&insurer_base).expect("digits"));
        let (surname, surname_kana) = SURNAMES[r.random_range(0..SURNAMES.len())];
        let (given, given_kana) = GIVEN[r.random_range(0..GIVEN.len())];
        // Older people take more medicine: birth years skew old.
        let age: i16 = if r.random_bool(0.6) {
            r.random_range(60..95)
        } else {
            r.random_range(1..60)
        };
        let birth_date = Date::new(2026 - age, r.random_range(1..=12), r.random_range(1..=28))
            .expect("valid date");
        // One to four chronic ingredients, the popular ones more often (weight 1/(i+1)).
        let n = r.random_range(1..=4);
        let mut regimen: Vec<(usize, usize)> = Vec::with_capacity(n);
        while regimen.len() < n {
            let i = zipf(&mut r, drugs.chronic.len());
            if regimen.iter().all(|(j, _)| *j != i) {
                let product = r.random_range(0..drugs.chronic[i].products.len());
                regimen.push((i, product));
            }
        }
        let fresh_i = r.random_range(0..drugs.fresh.len());
        let fresh = (
            fresh_i,
            r.random_range(0..drugs.fresh[fresh_i].products.len()),
        );
        Self {
            id: Uuid::from_u64_pair(0xBE4C_0000_0000_0000 | (seed & 0xFFFF_FFFF), u64::from(k)),
            insurer_number,
            symbol: format!("{}", 100 + k % 900),
            number: format!("{k:08}"),
            branch: "00",
            name: format!("{surname}　{given}"),
            name_kana: format!("{surname_kana} {given_kana}"),
            sex: if r.random_bool(0.5) { "male" } else { "female" },
            birth_date,
            card_id: format!("BENCH-{k:08}"),
            regimen,
            fresh,
        }
    }

    pub fn insured_json(&self) -> serde_json::Value {
        serde_json::json!({
            "insurer_number": self.insurer_number,
            "symbol": self.symbol,
            "number": self.number,
            "branch": self.branch,
        })
    }
}

/// An index in `0..n`, weighted 1/(i+1).
fn zipf(r: &mut StdRng, n: usize) -> usize {
    let total: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
    let mut x = r.random_range(0.0..total);
    for i in 0..n {
        x -= 1.0 / (i + 1) as f64;
        if x <= 0.0 {
            return i;
        }
    }
    n - 1
}

#[cfg(test)]
mod tests {
    use relay::domain::identifiers::{FacilityCode, InsurerNumber};

    use super::*;

    #[test]
    fn generated_codes_pass_the_relays_own_check_digits() {
        for n in [0, 1, 46, 47, CLINICS - 1, PHARMACIES - 1] {
            FacilityCode::parse(&clinic(n)).expect("clinic code");
            FacilityCode::parse(&pharmacy(n)).expect("pharmacy code");
        }
        for k in [0, 1, 2_999, 3_000, 999_999] {
            let base = format!("06{:05}", 10_000 + k % 3_000);
            InsurerNumber::parse(&format!("{base}{}", mod10(&base).expect("digits")))
                .expect("insurer number");
        }
    }

    #[test]
    fn the_same_seed_and_stream_give_the_same_draws_and_others_differ() {
        let draw = |seed, stream, k| rng(seed, stream, k).random_range(0..u64::MAX);
        assert_eq!(draw(7, 1, 42), draw(7, 1, 42));
        assert_ne!(draw(7, 1, 42), draw(7, 1, 43));
        assert_ne!(draw(7, 1, 42), draw(7, 2, 42));
        assert_ne!(draw(7, 1, 42), draw(8, 1, 42));
    }
}
