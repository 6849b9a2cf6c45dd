//! The check engine for 重複投薬 (duplicate medication) and 併用禁忌 (contraindicated combinations),
//! domain.md §7. Pure: the caller loads the patient's history, the ingredients of every drug and the
//! pair table, and [`run`] compares them; nothing here reads a database or knows HTTP.
//!
//! - **重複投薬**: the same ingredient **and** the same route, whatever the institution or pharmacy
//!   and whatever the therapeutic class (タダラフィル under 219 and under 259 is a duplicate).
//!   Combination products take part through each of their ingredients, which the caller supplies
//!   already split ([`super::master::split_ingredients`]).
//! - **併用禁忌**: a pair of the table ([`Pair`]), matched in both orders and by route (`None` = any
//!   route).
//! - A history line counts while its period runs ([`HistoryLine::counts_on`]); cancelled lines never
//!   count.
//! - Lines of the new prescription are also compared with each other.
//! - One [`Hit`] per (new drug line, ingredient, kind), however many lines caused it, so that a
//!   doctor sees one warning per problem (alert fatigue); the hit lists every [`Cause`].
//!
//! **Disclosure.** A hit itself (which new drug, which of its ingredients, which kind) may always be
//! shown: that is the "a duplicate exists for this drug" that needs no consent. Each cause has two
//! parts: [`Revealable`], what may be shown once the patient has consented (card reader or 口頭同意
//! for the causing drugs), and [`Internal`], which must **never** leave the relay (the prescription
//! id and the facility code of the other side). The HTTP layer drops `internal` whatever the
//! consent; it is kept in the stored check only for the audit trail.

use std::collections::{HashMap, HashSet};

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::dispensing::DispensedItem;
use super::master::ContraindicationRecord;
use super::prescription::{DosageForm, Drug, Prescription, Rp};

/// Days a history line counts when no medication period can be computed (外用, 頓服, 注射, 材料).
pub const DEFAULT_WINDOW_DAYS: u32 = 14;

/// One ingredient of a drug with the drug's route, spelled as the yakka list does (成分名 and 区分:
/// `内用薬`, `注射薬`, `外用薬`, `歯科用薬剤`; see [`super::master::Route::as_str`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ingredient {
    pub name: String,
    pub route: String,
}

impl Ingredient {
    pub fn new(name: impl Into<String>, route: impl Into<String>) -> Self {
        Ingredient {
            name: name.into(),
            route: route.into(),
        }
    }

    fn same(&self, other: &Ingredient) -> bool {
        self.name.trim() == other.name.trim() && self.route.trim() == other.route.trim()
    }
}

/// One drug line of the prescription being checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    /// 0-based index of the RP (`rps[rp]`).
    pub rp: usize,
    /// 0-based index of the drug within its RP (`rps[rp].drugs[drug]`).
    pub drug: usize,
    pub code: String,
    pub name: String,
    /// Every ingredient, a combination product split; empty if the master does not know the drug
    /// (such a line can neither cause nor receive a hit).
    pub ingredients: Vec<Ingredient>,
    pub dosage_form: DosageForm,
    /// The RP quantity: days for 内服/内服滴剤, times for 頓服.
    pub quantity: u32,
}

/// One drug line of the patient's past medication, from any institution or pharmacy.
///
/// At dispensing, the caller must leave the prescription being dispensed out of the history (it
/// is the new prescription), or it would duplicate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// Internal: the prescription (or dispensing record) this line comes from. Never shown.
    pub source: Uuid,
    /// Internal: the 医療機関/薬局 code of the other side. Never shown.
    pub facility_code: String,
    pub code: String,
    pub name: String,
    pub ingredients: Vec<Ingredient>,
    /// 交付年月日 of the prescription.
    pub prescribed_on: Date,
    /// 調剤年月日, when a dispensing has been registered; it then starts the period.
    pub dispensed_on: Option<Date>,
    /// Days the line counts: [`days_counted`] of its RP.
    pub days: u32,
    /// Cancelled prescriptions never count. The caller filters them already; this is defence in
    /// depth.
    pub cancelled: bool,
}

impl HistoryLine {
    /// Start of the period: the dispensing date, or the prescribing date when nothing was dispensed.
    pub fn started_on(&self) -> Date {
        self.dispensed_on.unwrap_or(self.prescribed_on)
    }

    /// Whether the line counts on `today`: not cancelled and started at most `days - 1` days ago
    /// (`today - start < days`; a start in the future counts too). A period of 0 days is taken as
    /// 1, so a line always counts on its start day.
    pub fn counts_on(&self, today: Date) -> bool {
        if self.cancelled {
            return false;
        }
        let elapsed = i64::from((today - self.started_on()).get_days());
        elapsed < i64::from(self.days.max(1))
    }
}

/// One 併用禁忌 pair: (`a`, `route_a`) × (`b`, `route_b`); a route `None` matches any route. Matched
/// in both orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub a: String,
    pub route_a: Option<String>,
    pub b: String,
    pub route_b: Option<String>,
    /// Why the pair is listed (package insert wording); may be empty.
    pub basis: String,
}

impl From<&ContraindicationRecord> for Pair {
    fn from(r: &ContraindicationRecord) -> Self {
        Pair {
            a: r.ingredient_a.clone(),
            route_a: r.route_a.map(|x| x.as_str().to_owned()),
            b: r.ingredient_b.clone(),
            route_b: r.route_b.map(|x| x.as_str().to_owned()),
            basis: r.basis.clone(),
        }
    }
}

fn side_matches(name: &str, route: Option<&str>, i: &Ingredient) -> bool {
    name.trim() == i.name.trim() && route.is_none_or(|r| r.trim() == i.route.trim())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The day of the check (history windows are counted from it).
    pub today: Date,
    /// The caller's 医療機関/薬局 code.
    pub own_facility: Option<String>,
    /// Ignore history lines whose facility code equals `own_facility` (their own system checks
    /// them). Without `own_facility` nothing is ignored. Lines of the new prescription are always
    /// compared.
    pub exclude_own_facility: bool,
}

/// The kind of a hit, most severe first (the order of [`run`]'s output).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    /// 併用禁忌.
    Contraindication,
    /// 重複投薬.
    Duplicate,
}

/// The new drug line a hit is about; may always be shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewDrugRef {
    /// 0-based `rps[rp]`.
    pub rp: usize,
    /// 0-based `rps[rp].drugs[drug]`.
    pub drug: usize,
    pub code: String,
    pub name: String,
}

/// One warning: `new_drug`'s `ingredient` (by `route`) duplicates or is contraindicated with the
/// drugs in `causes`. The hit without its causes may be shown without consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hit {
    /// `h1`, `h2`, … in output order: stable for one check, so a stored check can refer to a hit.
    pub hit_id: String,
    pub kind: HitKind,
    pub new_drug: NewDrugRef,
    /// The new drug's ingredient (for a contraindication too; the other side is in each cause).
    pub ingredient: String,
    pub route: String,
    /// Never empty.
    pub causes: Vec<Cause>,
}

/// Why a hit exists: one other drug line. `reveal` may be shown with consent; `internal` never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cause {
    pub reveal: Revealable,
    /// NEVER shown to a client, whatever the consent: drop it in the HTTP layer.
    pub internal: Internal,
}

/// The part of a cause that may be shown once the patient has consented to viewing past
/// medication (or has consented orally to seeing the causing drugs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revealable {
    pub drug_code: String,
    pub drug_name: String,
    /// The other drug's ingredient: the same as the hit's for a duplicate, the other member of the
    /// pair for a contraindication.
    pub ingredient: String,
    pub route: String,
    /// Start of the other line's period; `None` for a line of the new prescription.
    #[schema(value_type = Option<String>, format = Date)]
    pub started_on: Option<Date>,
    /// Days the other line counts.
    pub days: u32,
    /// The other line has been dispensed (otherwise it was only prescribed).
    pub dispensed: bool,
    /// The other line belongs to the prescription being checked.
    pub within_this_prescription: bool,
    /// Its position when `within_this_prescription`.
    pub line: Option<LinePosition>,
    /// The table's 根拠 for a contraindication; `None` for a duplicate.
    pub basis: Option<String>,
}

/// `rps[rp].drugs[drug]`, 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinePosition {
    pub rp: usize,
    pub drug: usize,
}

/// Identifies the other side. Kept for the audit trail of the stored check; NEVER shown to a
/// client (not even with consent, which covers drug information, not institutions or pharmacies).
/// Both are `None` for a line of the new prescription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Internal {
    /// The history line's prescription (or dispensing record) id.
    pub source: Option<Uuid>,
    /// The history line's 医療機関/薬局 code.
    pub facility_code: Option<String>,
}

/// Days a line counts (domain.md §7): the supply days for 内服 and 内服滴剤 (the RP quantity);
/// [`DEFAULT_WINDOW_DAYS`] for 外用 and 頓服 and for every line whose period cannot be computed
/// (注射, 医療材料).
pub fn days_counted(form: DosageForm, quantity: u32) -> u32 {
    match form {
        DosageForm::Oral | DosageForm::OralDrops => quantity,
        DosageForm::AsNeeded
        | DosageForm::External
        | DosageForm::Injection
        | DosageForm::Material => DEFAULT_WINDOW_DAYS,
    }
}

/// The drug lines of `p` in order, with the ingredients `ingredients_of` finds for each drug (from
/// the master). 医療材料 RPs are skipped: they have no ingredients.
pub fn new_lines(
    p: &Prescription,
    ingredients_of: impl Fn(&Drug) -> Vec<Ingredient>,
) -> Vec<NewLine> {
    rp_lines(&p.rps, ingredients_of)
}

/// [`new_lines`] for RPs on their own (a standalone check of a draft).
/// The lines of a dispensing result: `rp` is the item's index (`items[rp]`), `drug` is 0. An item
/// with days counts them; without, [`DEFAULT_WINDOW_DAYS`] (頓服 and 外用 carry no days).
pub fn item_lines(
    items: &[DispensedItem],
    ingredients_of: impl Fn(&DispensedItem) -> Vec<Ingredient>,
) -> Vec<NewLine> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| NewLine {
            rp: i,
            drug: 0,
            code: item.code.clone(),
            name: item.name.clone(),
            ingredients: ingredients_of(item),
            dosage_form: if item.days.is_some() {
                DosageForm::Oral
            } else {
                DosageForm::External
            },
            quantity: item.days.unwrap_or(DEFAULT_WINDOW_DAYS),
        })
        .collect()
}

pub fn rp_lines(rps: &[Rp], ingredients_of: impl Fn(&Drug) -> Vec<Ingredient>) -> Vec<NewLine> {
    let mut lines = Vec::new();
    for (rp_index, rp) in rps.iter().enumerate() {
        if rp.dosage_form == DosageForm::Material {
            continue;
        }
        for (drug_index, d) in rp.drugs.iter().enumerate() {
            lines.push(NewLine {
                rp: rp_index,
                drug: drug_index,
                code: d.code.clone(),
                name: d.name.clone(),
                ingredients: ingredients_of(d),
                dosage_form: rp.dosage_form,
                quantity: rp.quantity,
            });
        }
    }
    lines
}

/// Where a cause comes from, to list each (other line, other ingredient) once per hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    History(usize),
    New(usize),
}

/// An "other" line the new lines are compared with: a counting history line or another new line.
struct Other<'a> {
    origin: Origin,
    code: &'a str,
    name: &'a str,
    ingredients: &'a [Ingredient],
    started_on: Option<Date>,
    days: u32,
    dispensed: bool,
    line: Option<LinePosition>,
    source: Option<Uuid>,
    facility_code: Option<&'a str>,
}

impl Other<'_> {
    fn cause(&self, ingredient: &Ingredient, basis: Option<&str>) -> Cause {
        Cause {
            reveal: Revealable {
                drug_code: self.code.to_owned(),
                drug_name: self.name.to_owned(),
                ingredient: ingredient.name.clone(),
                route: ingredient.route.clone(),
                started_on: self.started_on,
                days: self.days,
                dispensed: self.dispensed,
                within_this_prescription: matches!(self.origin, Origin::New(_)),
                line: self.line,
                basis: basis.map(str::to_owned),
            },
            internal: Internal {
                source: self.source,
                facility_code: self.facility_code.map(str::to_owned),
            },
        }
    }
}

/// Checks `new` against the counting `history` lines and against each other.
///
/// - A duplicate needs the same ingredient name and the same route; a contraindication needs a
///   [`Pair`] matching (new, other) in either order. A line is never compared with itself (a
///   combination product does not contradict itself).
/// - History lines count per [`HistoryLine::counts_on`] on `opts.today`, minus the caller's own
///   facility when `opts.exclude_own_facility`.
/// - Two lines of the new prescription that duplicate or contradict each other give a hit on
///   **each** of them (both new drugs are affected).
/// - One hit per (new line, ingredient, kind); its causes are listed in history order, then in new
///   line order, each (other line, other ingredient) once.
/// - Output: contraindications first, then duplicates, each in new line order then ingredient
///   order; ids `h1`, `h2`, … in that order.
pub fn run(new: &[NewLine], history: &[HistoryLine], pairs: &[Pair], opts: &Options) -> Vec<Hit> {
    let own = opts
        .own_facility
        .as_deref()
        .filter(|_| opts.exclude_own_facility)
        .map(str::trim);
    let mut others: Vec<Other> = history
        .iter()
        .enumerate()
        .filter(|(_, h)| h.counts_on(opts.today))
        .filter(|(_, h)| own.is_none_or(|o| h.facility_code.trim() != o))
        .map(|(i, h)| Other {
            origin: Origin::History(i),
            code: &h.code,
            name: &h.name,
            ingredients: &h.ingredients,
            started_on: Some(h.started_on()),
            days: h.days,
            dispensed: h.dispensed_on.is_some(),
            line: None,
            source: Some(h.source),
            facility_code: Some(&h.facility_code),
        })
        .collect();
    others.extend(new.iter().enumerate().map(|(j, l)| Other {
        origin: Origin::New(j),
        code: &l.code,
        name: &l.name,
        ingredients: &l.ingredients,
        started_on: None,
        days: days_counted(l.dosage_form, l.quantity),
        dispensed: false,
        line: Some(LinePosition {
            rp: l.rp,
            drug: l.drug,
        }),
        source: None,
        facility_code: None,
    }));

    // Pairs by ingredient name, each with the side the name is on, so that a large licensed table
    // is not scanned for every ingredient of every line.
    let mut by_name: HashMap<&str, Vec<(&Pair, bool)>> = HashMap::new();
    for p in pairs {
        by_name.entry(p.a.trim()).or_default().push((p, true));
        by_name.entry(p.b.trim()).or_default().push((p, false));
    }

    let mut hits = Vec::new();
    for (j, line) in new.iter().enumerate() {
        let mut done: HashSet<(&str, &str)> = HashSet::new();
        for ing in &line.ingredients {
            if !done.insert((ing.name.trim(), ing.route.trim())) {
                continue;
            }
            let candidates = by_name.get(ing.name.trim()).map_or(&[][..], Vec::as_slice);
            let mut contra = Vec::new();
            let mut contra_seen = HashSet::new();
            let mut dup = Vec::new();
            let mut dup_seen = HashSet::new();
            for other in others.iter().filter(|o| o.origin != Origin::New(j)) {
                for theirs in other.ingredients {
                    if ing.same(theirs) && dup_seen.insert((other.origin, theirs.name.trim())) {
                        dup.push(other.cause(theirs, None));
                    }
                    for &(pair, new_is_a) in candidates {
                        let (mine, other_side) = if new_is_a {
                            ((&pair.a, &pair.route_a), (&pair.b, &pair.route_b))
                        } else {
                            ((&pair.b, &pair.route_b), (&pair.a, &pair.route_a))
                        };
                        if side_matches(mine.0, mine.1.as_deref(), ing)
                            && side_matches(other_side.0, other_side.1.as_deref(), theirs)
                            && contra_seen.insert((other.origin, theirs.name.trim()))
                        {
                            contra.push(other.cause(theirs, Some(&pair.basis)));
                        }
                    }
                }
            }
            for (kind, causes) in [
                (HitKind::Contraindication, contra),
                (HitKind::Duplicate, dup),
            ] {
                if causes.is_empty() {
                    continue;
                }
                hits.push(Hit {
                    hit_id: String::new(),
                    kind,
                    new_drug: NewDrugRef {
                        rp: line.rp,
                        drug: line.drug,
                        code: line.code.clone(),
                        name: line.name.clone(),
                    },
                    ingredient: ing.name.clone(),
                    route: ing.route.clone(),
                    causes,
                });
            }
        }
    }
    hits.sort_by_key(|h| h.kind); // stable: new line order within each kind
    for (n, h) in hits.iter_mut().enumerate() {
        h.hit_id = format!("h{}", n + 1);
    }
    hits
}

/// The hits of `hits` that no overridden hit covers. An override covers a hit of the same kind
/// for the same ingredient and route: the clinical decision the doctor weighed (a generic
/// substitution at the pharmacy keeps the ingredient, so the prescriber's override still covers
/// it there), whichever history lines cause it now.
pub fn uncovered<'a>(hits: &'a [Hit], overridden: &[&Hit]) -> Vec<&'a Hit> {
    hits.iter()
        .filter(|h| {
            !overridden.iter().any(|o| {
                o.kind == h.kind
                    && o.ingredient.trim() == h.ingredient.trim()
                    && o.route.trim() == h.route.trim()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use jiff::ToSpan;

    use super::*;

    const ORAL: &str = "内用薬";
    const EXTERNAL: &str = "外用薬";
    const INJECTION: &str = "注射薬";

    fn today() -> Date {
        jiff::civil::date(2025, 7, 16)
    }

    fn ago(days: i64) -> Date {
        today() - days.days()
    }

    fn opts() -> Options {
        Options {
            today: today(),
            own_facility: None,
            exclude_own_facility: false,
        }
    }

    fn ing(names: &[&str], route: &str) -> Vec<Ingredient> {
        names.iter().map(|n| Ingredient::new(*n, route)).collect()
    }

    fn new_line(i: usize, name: &str, ingredients: Vec<Ingredient>) -> NewLine {
        NewLine {
            rp: i,
            drug: 0,
            code: format!("NEW{i}"),
            name: name.to_owned(),
            ingredients,
            dosage_form: DosageForm::Oral,
            quantity: 14,
        }
    }

    fn hist(name: &str, ingredients: Vec<Ingredient>, started: Date, days: u32) -> HistoryLine {
        HistoryLine {
            source: Uuid::from_u128(started.day() as u128 + 1),
            facility_code: "1310000001".to_owned(),
            code: format!("OLD-{name}"),
            name: name.to_owned(),
            ingredients,
            prescribed_on: started,
            dispensed_on: None,
            days,
            cancelled: false,
        }
    }

    fn pair(a: &str, ra: Option<&str>, b: &str, rb: Option<&str>, basis: &str) -> Pair {
        Pair {
            a: a.to_owned(),
            route_a: ra.map(str::to_owned),
            b: b.to_owned(),
            route_b: rb.map(str::to_owned),
            basis: basis.to_owned(),
        }
    }

    /// Rows of contraindications-seed.csv.
    fn seed_pairs() -> Vec<Pair> {
        vec![
            pair(
                "シルデナフィルクエン酸塩",
                Some(ORAL),
                "ニトログリセリン",
                None,
                "PDE5阻害剤 × 硝酸剤・NO供与剤",
            ),
            pair(
                "トリアゾラム",
                Some(ORAL),
                "ミコナゾール",
                Some(INJECTION),
                "トリアゾラム × アゾール系抗真菌剤（注射）",
            ),
        ]
    }

    #[test]
    fn tadalafil_under_two_therapeutic_classes_is_a_duplicate() {
        // シアリス (259) prescribed elsewhere, アドシルカ (219) now: same ingredient, same route.
        let new = [new_line(
            0,
            "アドシルカ錠２０ｍｇ",
            ing(&["タダラフィル"], ORAL),
        )];
        let history = [hist(
            "シアリス錠２０ｍｇ",
            ing(&["タダラフィル"], ORAL),
            ago(3),
            30,
        )];
        let hits = run(&new, &history, &[], &opts());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].kind, HitKind::Duplicate);
        assert_eq!(hits[0].ingredient, "タダラフィル");
        assert_eq!(hits[0].causes[0].reveal.drug_name, "シアリス錠２０ｍｇ");
        assert_eq!(hits[0].causes[0].reveal.basis, None);
    }

    #[test]
    fn combination_product_duplicates_through_each_ingredient() {
        let new = [new_line(
            0,
            "ディオバン錠８０ｍｇ",
            ing(&["バルサルタン"], ORAL),
        )];
        let history = [hist(
            "エックスフォージ配合錠",
            ing(&["バルサルタン", "アムロジピンベシル酸塩"], ORAL),
            ago(1),
            28,
        )];
        let hits = run(&new, &history, &[], &opts());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].ingredient, "バルサルタン");
        assert_eq!(hits[0].causes[0].reveal.ingredient, "バルサルタン");
        assert_eq!(hits[0].causes[0].reveal.drug_name, "エックスフォージ配合錠");

        // And the other way round: the new combination product hits on its バルサルタン only.
        let new = [new_line(
            0,
            "エックスフォージ配合錠",
            ing(&["バルサルタン", "アムロジピンベシル酸塩"], ORAL),
        )];
        let history = [hist(
            "ディオバン錠８０ｍｇ",
            ing(&["バルサルタン"], ORAL),
            ago(1),
            28,
        )];
        let hits = run(&new, &history, &[], &opts());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].ingredient, "バルサルタン");
    }

    #[test]
    fn same_ingredient_by_another_route_is_not_a_duplicate() {
        let new = [new_line(
            0,
            "ロキソニン錠６０ｍｇ",
            ing(&["ロキソプロフェンナトリウム水和物"], ORAL),
        )];
        let history = [hist(
            "ロキソニンテープ１００ｍｇ",
            ing(&["ロキソプロフェンナトリウム水和物"], EXTERNAL),
            ago(1),
            14,
        )];
        assert!(run(&new, &history, &[], &opts()).is_empty());
    }

    #[test]
    fn external_and_as_needed_count_14_days() {
        assert_eq!(days_counted(DosageForm::External, 5), 14);
        assert_eq!(days_counted(DosageForm::AsNeeded, 10), 14);
        assert_eq!(days_counted(DosageForm::Injection, 1), 14);
        let new = [new_line(
            0,
            "ロキソニン錠６０ｍｇ",
            ing(&["ロキソプロフェンナトリウム水和物"], ORAL),
        )];
        let tonpuku = |started| {
            hist(
                "ロキソプロフェンNa錠（頓服）",
                ing(&["ロキソプロフェンナトリウム水和物"], ORAL),
                started,
                days_counted(DosageForm::AsNeeded, 10),
            )
        };
        assert_eq!(run(&new, &[tonpuku(ago(13))], &[], &opts()).len(), 1);
        assert!(run(&new, &[tonpuku(ago(15))], &[], &opts()).is_empty());
        // Day 14 is the first day outside the window.
        assert!(run(&new, &[tonpuku(ago(14))], &[], &opts()).is_empty());

        let new = [new_line(
            0,
            "モーラステープ",
            ing(&["ケトプロフェン"], EXTERNAL),
        )];
        let tape = |started| {
            hist(
                "ケトプロフェンテープ",
                ing(&["ケトプロフェン"], EXTERNAL),
                started,
                days_counted(DosageForm::External, 3),
            )
        };
        assert_eq!(run(&new, &[tape(ago(13))], &[], &opts()).len(), 1);
        assert!(run(&new, &[tape(ago(15))], &[], &opts()).is_empty());
    }

    #[test]
    fn oral_supply_counts_its_days() {
        assert_eq!(days_counted(DosageForm::Oral, 7), 7);
        assert_eq!(days_counted(DosageForm::OralDrops, 7), 7);
        let new = [new_line(
            0,
            "アムロジピン錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
        )];
        let seven = |started| {
            hist(
                "ノルバスク錠５ｍｇ",
                ing(&["アムロジピンベシル酸塩"], ORAL),
                started,
                7,
            )
        };
        assert_eq!(run(&new, &[seven(ago(6))], &[], &opts()).len(), 1);
        assert!(run(&new, &[seven(ago(7))], &[], &opts()).is_empty());
        // A start in the future (a 使用期限 later dispensing, a clock skew) counts.
        assert_eq!(run(&new, &[seven(ago(-2))], &[], &opts()).len(), 1);
    }

    #[test]
    fn dispensing_date_starts_the_period() {
        let new = [new_line(
            0,
            "アムロジピン錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
        )];
        let mut h = hist(
            "ノルバスク錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
            ago(20),
            14,
        );
        assert!(run(&new, std::slice::from_ref(&h), &[], &opts()).is_empty());
        h.dispensed_on = Some(ago(5));
        let hits = run(&new, &[h], &[], &opts());
        assert_eq!(hits.len(), 1);
        let reveal = &hits[0].causes[0].reveal;
        assert_eq!(reveal.started_on, Some(ago(5)));
        assert!(reveal.dispensed);
        assert_eq!(reveal.days, 14);
    }

    #[test]
    fn cancelled_history_is_ignored() {
        let new = [new_line(
            0,
            "アムロジピン錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
        )];
        let mut h = hist(
            "ノルバスク錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
            ago(1),
            28,
        );
        h.cancelled = true;
        assert!(run(&new, &[h], &seed_pairs(), &opts()).is_empty());
    }

    #[test]
    fn contraindication_in_both_orders() {
        let pairs = seed_pairs();
        let sildenafil = || ing(&["シルデナフィルクエン酸塩"], ORAL);
        let nitro = || ing(&["ニトログリセリン"], EXTERNAL);

        // New = a, history = b.
        let new = [new_line(0, "バイアグラ錠５０ｍｇ", sildenafil())];
        let history = [hist("ニトロダームＴＴＳ２５ｍｇ", nitro(), ago(2), 14)];
        let hits = run(&new, &history, &pairs, &opts());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].kind, HitKind::Contraindication);
        assert_eq!(hits[0].ingredient, "シルデナフィルクエン酸塩");
        assert_eq!(hits[0].causes[0].reveal.ingredient, "ニトログリセリン");
        assert_eq!(
            hits[0].causes[0].reveal.basis.as_deref(),
            Some("PDE5阻害剤 × 硝酸剤・NO供与剤")
        );

        // New = b, history = a.
        let new = [new_line(0, "ニトロダームＴＴＳ２５ｍｇ", nitro())];
        let history = [hist("バイアグラ錠５０ｍｇ", sildenafil(), ago(2), 10)];
        let hits = run(&new, &history, &pairs, &opts());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].ingredient, "ニトログリセリン");
        assert_eq!(
            hits[0].causes[0].reveal.ingredient,
            "シルデナフィルクエン酸塩"
        );
    }

    #[test]
    fn contraindication_is_route_aware() {
        let pairs = seed_pairs();
        let new = [new_line(
            0,
            "ハルシオン錠０．２５ｍｇ",
            ing(&["トリアゾラム"], ORAL),
        )];
        // ミコナゾール only as 注射薬 is listed: the cream does not match.
        let cream = hist(
            "フロリードＤクリーム１％",
            ing(&["ミコナゾール硝酸塩"], EXTERNAL),
            ago(1),
            14,
        );
        let gel = hist(
            "ミコナゾール外用",
            ing(&["ミコナゾール"], EXTERNAL),
            ago(1),
            14,
        );
        assert!(run(&new, &[cream, gel], &pairs, &opts()).is_empty());
        let inj = hist(
            "フロリードＦ注２００ｍｇ",
            ing(&["ミコナゾール"], INJECTION),
            ago(1),
            14,
        );
        assert_eq!(run(&new, &[inj], &pairs, &opts()).len(), 1);

        // `*` matches any route (ニトログリセリン 注射 and 外用 alike), but route_a = 内用薬 does
        // not match an external シルデナフィル (hypothetical).
        let new = [new_line(
            0,
            "ミリスロール注",
            ing(&["ニトログリセリン"], INJECTION),
        )];
        let oral = hist(
            "バイアグラ錠",
            ing(&["シルデナフィルクエン酸塩"], ORAL),
            ago(1),
            10,
        );
        assert_eq!(run(&new, &[oral], &pairs, &opts()).len(), 1);
        let external = hist(
            "仮想外用",
            ing(&["シルデナフィルクエン酸塩"], EXTERNAL),
            ago(1),
            10,
        );
        assert!(run(&new, &[external], &pairs, &opts()).is_empty());
    }

    #[test]
    fn pair_from_master_record_keeps_routes() {
        let record = ContraindicationRecord {
            ingredient_a: "シルデナフィルクエン酸塩".to_owned(),
            route_a: Some(super::super::master::Route::Oral),
            ingredient_b: "ニトログリセリン".to_owned(),
            route_b: None,
            basis: "PDE5阻害剤 × 硝酸剤・NO供与剤".to_owned(),
        };
        assert_eq!(Pair::from(&record), seed_pairs()[0]);
    }

    #[test]
    fn problems_inside_the_new_prescription_are_reported_on_each_line() {
        let new = [
            new_line(0, "ディオバン錠８０ｍｇ", ing(&["バルサルタン"], ORAL)),
            new_line(
                1,
                "エックスフォージ配合錠",
                ing(&["アムロジピンベシル酸塩", "バルサルタン"], ORAL),
            ),
            new_line(
                2,
                "バイアグラ錠５０ｍｇ",
                ing(&["シルデナフィルクエン酸塩"], ORAL),
            ),
            new_line(
                3,
                "ニトロペン舌下錠０．３ｍｇ",
                ing(&["ニトログリセリン"], ORAL),
            ),
        ];
        let hits = run(&new, &[], &seed_pairs(), &opts());
        let summary: Vec<_> = hits
            .iter()
            .map(|h| {
                (
                    h.hit_id.as_str(),
                    h.kind,
                    h.new_drug.rp,
                    h.ingredient.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "h1",
                    HitKind::Contraindication,
                    2,
                    "シルデナフィルクエン酸塩"
                ),
                ("h2", HitKind::Contraindication, 3, "ニトログリセリン"),
                ("h3", HitKind::Duplicate, 0, "バルサルタン"),
                ("h4", HitKind::Duplicate, 1, "バルサルタン"),
            ]
        );
        let cause = &hits[2].causes[0];
        assert!(cause.reveal.within_this_prescription);
        assert_eq!(cause.reveal.line, Some(LinePosition { rp: 1, drug: 0 }));
        assert_eq!(cause.reveal.started_on, None);
        assert_eq!(cause.internal.source, None);
        assert_eq!(cause.internal.facility_code, None);
    }

    #[test]
    fn one_hit_per_line_ingredient_and_kind_with_every_cause() {
        let new = [new_line(
            0,
            "アムロジピン錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
        )];
        let mut history = vec![
            hist(
                "ノルバスク錠５ｍｇ",
                ing(&["アムロジピンベシル酸塩"], ORAL),
                ago(1),
                28,
            ),
            hist(
                "アムロジン錠５ｍｇ",
                ing(&["アムロジピンベシル酸塩"], ORAL),
                ago(2),
                28,
            ),
            hist(
                "エックスフォージ配合錠",
                ing(&["バルサルタン", "アムロジピンベシル酸塩"], ORAL),
                ago(3),
                28,
            ),
        ];
        history[1].facility_code = "4510000002".to_owned();
        let hits = run(&new, &history, &[], &opts());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].hit_id, "h1");
        let names: Vec<_> = hits[0]
            .causes
            .iter()
            .map(|c| c.reveal.drug_name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "ノルバスク錠５ｍｇ",
                "アムロジン錠５ｍｇ",
                "エックスフォージ配合錠"
            ]
        );
        assert_eq!(hits[0].causes[1].internal.source, Some(history[1].source));
        assert_eq!(
            hits[0].causes[1].internal.facility_code.as_deref(),
            Some("4510000002")
        );
        assert!(!hits[0].causes[0].reveal.within_this_prescription);
    }

    #[test]
    fn exclude_own_facility() {
        let new = [new_line(
            0,
            "アムロジピン錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
        )];
        let mut other = hist(
            "アムロジン錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
            ago(2),
            28,
        );
        other.facility_code = "4510000002".to_owned();
        let own = hist(
            "ノルバスク錠５ｍｇ",
            ing(&["アムロジピンベシル酸塩"], ORAL),
            ago(1),
            28,
        );
        let history = [own, other];
        let mut o = Options {
            own_facility: Some("1310000001".to_owned()),
            ..opts()
        };
        assert_eq!(run(&new, &history, &[], &o)[0].causes.len(), 2);
        o.exclude_own_facility = true;
        let hits = run(&new, &history, &[], &o);
        assert_eq!(hits[0].causes.len(), 1);
        assert_eq!(hits[0].causes[0].reveal.drug_name, "アムロジン錠５ｍｇ");
        // Only own lines: no hit at all.
        assert!(run(&new, &history[..1], &[], &o).is_empty());
    }

    #[test]
    fn contraindications_come_before_duplicates() {
        let new = [
            new_line(
                0,
                "ノルバスク錠５ｍｇ",
                ing(&["アムロジピンベシル酸塩"], ORAL),
            ),
            new_line(
                1,
                "バイアグラ錠５０ｍｇ",
                ing(&["シルデナフィルクエン酸塩"], ORAL),
            ),
        ];
        let history = [
            hist(
                "アムロジン錠５ｍｇ",
                ing(&["アムロジピンベシル酸塩"], ORAL),
                ago(1),
                28,
            ),
            hist(
                "ニトロペン舌下錠",
                ing(&["ニトログリセリン"], ORAL),
                ago(1),
                14,
            ),
        ];
        let hits = run(&new, &history, &seed_pairs(), &opts());
        let kinds: Vec<_> = hits
            .iter()
            .map(|h| (h.hit_id.as_str(), h.kind, h.new_drug.rp))
            .collect();
        assert_eq!(
            kinds,
            [
                ("h1", HitKind::Contraindication, 1),
                ("h2", HitKind::Duplicate, 0)
            ]
        );
        let json = serde_json::to_value(&hits[0]).unwrap();
        assert_eq!(json["kind"], "contraindication");
        assert_eq!(json["causes"][0]["reveal"]["started_on"], "2025-07-15");
    }

    #[test]
    fn new_lines_skips_materials_and_keeps_positions() {
        let usage = serde_json::json!({"code": null, "text": "1日1回", "times_per_day": 1});
        let drug = |code: &str| {
            serde_json::json!({"code_system": "yj", "code": code, "name": code, "dose": 1,
                               "unit": "錠", "no_substitution": false})
        };
        let p: Prescription = serde_json::from_value(serde_json::json!({
            "issue_type": "electronic",
            "patient": {"name": "髙橋 𠮷子", "name_kana": null, "sex": "female", "birth_date": "1980-04-01"},
            "insurance": {"insurer_number": "01130012", "symbol": "123", "number": "4567",
                          "relationship": "insured", "branch": "01", "copay_rate": 30},
            "public_expenses": [], "doctor": null, "department": null,
            "issued_on": "2025-07-16", "valid_until": "2025-07-19", "refill_count": null, "remarks": null,
            "rps": [
                {"dosage_form": "material", "quantity": 1, "usage": usage, "drugs": [drug("M")]},
                {"dosage_form": "oral", "quantity": 7, "usage": usage,
                 "drugs": [drug("1124001F1022"), drug("2171022F1020")]}
            ]
        }))
        .expect("prescription parses");
        let lines = new_lines(&p, |d| ing(&[d.code.as_str()], ORAL));
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.rp, l.drug, l.code.as_str(), l.quantity))
            .collect();
        assert_eq!(got, [(1, 0, "1124001F1022", 7), (1, 1, "2171022F1020", 7)]);
        assert_eq!(lines[1].ingredients, ing(&["2171022F1020"], ORAL));
        assert_eq!(lines[1].dosage_form, DosageForm::Oral);
    }

    #[test]
    fn an_override_covers_the_same_kind_ingredient_and_route_whatever_the_product() {
        let history = vec![hist(
            "ユーロジン１ｍｇ錠",
            ing(&["エスタゾラム"], ORAL),
            ago(2),
            14,
        )];
        let overridden = run(
            &[new_line(
                0,
                "ユーロジン１ｍｇ錠",
                ing(&["エスタゾラム"], ORAL),
            )],
            &history,
            &[],
            &opts(),
        );
        assert_eq!(overridden.len(), 1);
        // The pharmacy dispenses another product of the same ingredient: still covered.
        let generic = run(
            &[new_line(
                0,
                "エスタゾラム錠１ｍｇ「アメル」",
                ing(&["エスタゾラム"], ORAL),
            )],
            &history,
            &[],
            &opts(),
        );
        let by: Vec<&Hit> = overridden.iter().collect();
        assert!(uncovered(&generic, &by).is_empty());
        // Another route, or no override at all, is not covered.
        let other_route = run(
            &[new_line(
                0,
                "外用エスタゾラム",
                ing(&["エスタゾラム"], EXTERNAL),
            )],
            &[hist("外用", ing(&["エスタゾラム"], EXTERNAL), ago(1), 14)],
            &[],
            &opts(),
        );
        assert_eq!(uncovered(&other_route, &by).len(), 1);
        assert_eq!(uncovered(&generic, &[]).len(), 1);
    }

    /// Every pair of `contraindications-seed.csv`, with a real product of the MHLW list on each
    /// side (its whole ingredient list, combinations split), is found with either side new.
    #[test]
    fn every_seed_contraindication_is_found_in_both_orders_with_real_products() {
        use crate::domain::master::{parse_contraindications, parse_yakka_list};
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        let open = |name: &str| std::fs::File::open(data.join(name)).expect("shared data");
        let drugs = parse_yakka_list(std::io::BufReader::new(open(
            "mhlw-yakka-list-20250716.csv",
        )))
        .expect("yakka list");
        let records =
            parse_contraindications(open("contraindications-seed.csv")).expect("seed table");
        let pairs: Vec<Pair> = records.iter().map(Pair::from).collect();
        // A product with `name` by `route` (any route for `*`), as engine ingredients.
        let product = |name: &str, route: Option<&str>| {
            drugs
                .iter()
                .find(|d| {
                    d.ingredients.iter().any(|i| i == name)
                        && route.is_none_or(|r| d.route.as_str() == r)
                })
                .map(|d| {
                    let ings = d
                        .ingredients
                        .iter()
                        .map(|i| Ingredient::new(i.as_str(), d.route.as_str()))
                        .collect::<Vec<_>>();
                    (d.product_name.clone(), ings)
                })
        };
        assert_eq!(pairs.len(), 81);
        for p in &pairs {
            let a = product(&p.a, p.route_a.as_deref())
                .unwrap_or_else(|| panic!("no product of {} in the master", p.a));
            let b = product(&p.b, p.route_b.as_deref())
                .unwrap_or_else(|| panic!("no product of {} in the master", p.b));
            for (new, old, new_ingredient) in [(&a, &b, &p.a), (&b, &a, &p.b)] {
                let hits = run(
                    &[new_line(0, &new.0, new.1.clone())],
                    &[hist(&old.0, old.1.clone(), ago(1), 14)],
                    &pairs,
                    &opts(),
                );
                assert!(
                    hits.iter()
                        .any(|h| h.kind == HitKind::Contraindication
                            && &h.ingredient == new_ingredient),
                    "{} ({}) with {} ({}) in the history: {hits:?}",
                    new.0,
                    new_ingredient,
                    old.0,
                    if new_ingredient == &p.a { &p.b } else { &p.a },
                );
            }
        }
    }
}
