//! `relay master import --contraindications FILE [--table NAME] [--add]`: 併用禁忌 pairs into one
//! named table.
//!
//! A deployment may hold several tables (the curated `seed`, a licensed vendor table, …); the check
//! engine reads them all together (`db::master::contraindications_involving`). An import touches
//! one table: by default it replaces that table's pairs, with [`Mode::Add`] it adds the pairs the
//! table does not have yet. Pairs are compared without their order (`A × B` is `B × A`, see
//! [`PairKey`]). [`parse`] is pure and refuses the whole file at its first bad field, naming the
//! line and the column; [`import`] runs inside the caller's transaction, so a failure anywhere in
//! `relay master import` changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::db::master::{self, PairKey};
use crate::domain::master::{ContraindicationRecord, MasterError, parse_contraindications};

/// The table `relay seed demo` loads and a plain `--contraindications` import replaces.
pub const DEFAULT_TABLE: &str = "seed";

/// A table name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit (`seed`,
/// `vendor-2026-11`). Lower case only, so `Seed` and `seed` cannot become two tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TableName(String);

impl TableName {
    pub fn parse(name: &str) -> Result<Self, TableNameError> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(TableName(name.to_owned()))
        } else {
            Err(TableNameError(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName(DEFAULT_TABLE.to_owned())
    }
}

impl FromStr for TableName {
    type Err = TableNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TableName::parse(s)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a table name: use 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or \
     digit (e.g. seed, vendor-2026-11)"
)]
pub struct TableNameError(pub String);

/// What an import does to its table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The table becomes exactly the file's pairs; other tables are untouched.
    #[default]
    Replace,
    /// The file's pairs the table does not have yet are added; nothing is removed.
    Add,
}

/// One pair of the file and the line it is on (1-based, the header being line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedPair {
    pub line: usize,
    pub pair: ContraindicationRecord,
}

/// Why a contraindication file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A bad value, with its column number (1-based) and name.
    #[error("line {line}, column {column} ({field}): {message}")]
    Field {
        line: usize,
        column: usize,
        field: &'static str,
        message: String,
    },
    /// A bad header, a malformed record or unreadable bytes, as the parser words it.
    #[error(transparent)]
    Master(#[from] MasterError),
}

/// Parses the file (`ingredient_a,route_a,ingredient_b,route_b,basis`, see
/// [`parse_contraindications`]) and numbers each pair with its line, for the report of unknown
/// ingredient names.
pub fn parse(bytes: &[u8]) -> Result<Vec<NumberedPair>, FileError> {
    let pairs = parse_contraindications(bytes).map_err(|e| with_column(e, bytes))?;
    let lines = record_lines(bytes)?;
    // Both readers split the same bytes with the same settings; a mismatch would be a bug here.
    if lines.len() != pairs.len() {
        return Err(MasterError::Row {
            line: 0,
            field: "(record)",
            message: format!(
                "internal error: {} records numbered for {} parsed",
                lines.len(),
                pairs.len()
            ),
        }
        .into());
    }
    Ok(lines
        .into_iter()
        .zip(pairs)
        .map(|(line, pair)| NumberedPair { line, pair })
        .collect())
}

/// The parser names the field of a bad value; its position in the header (which the parser has
/// already checked) is the column number a spreadsheet shows.
fn with_column(err: MasterError, bytes: &[u8]) -> FileError {
    let MasterError::Row {
        line,
        field,
        message,
    } = err
    else {
        return err.into();
    };
    let column = csv_reader(bytes)
        .headers()
        .ok()
        .and_then(|h| h.iter().position(|name| name == field));
    match column {
        Some(i) => FileError::Field {
            line,
            column: i + 1,
            field,
            message,
        },
        None => MasterError::Row {
            line,
            field,
            message,
        }
        .into(),
    }
}

/// The reader settings of the parser (header row, rows of any length, fields trimmed).
fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

/// The 1-based physical line each record starts on. csv's own line count goes wrong after CR LF
/// line ends and blank lines, and a record's byte offset may point at the line end before it, so
/// the line is counted from the bytes, skipping line ends.
fn record_lines(bytes: &[u8]) -> Result<Vec<usize>, MasterError> {
    let mut reader = csv_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut out = Vec::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(out),
            // Not reached: the parser has read the same bytes without error.
            Err(e) => {
                return Err(MasterError::Row {
                    line: 0,
                    field: "(record)",
                    message: e.to_string(),
                });
            }
        }
        let mut start = record
            .position()
            .and_then(|p| usize::try_from(p.byte()).ok())
            .unwrap_or(0)
            .min(bytes.len());
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let newlines = bytes.get(..start).unwrap_or_default();
        out.push(1 + newlines.iter().filter(|b| **b == b'\n').count());
    }
}

/// An ingredient name of the file that no `drug_ingredients` row has, with every line it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownIngredient {
    pub name: String,
    pub lines: Vec<usize>,
}

impl UnknownIngredient {
    /// `line 4` or `lines 2, 7`.
    pub fn where_in_file(&self) -> String {
        let lines: Vec<String> = self.lines.iter().map(ToString::to_string).collect();
        let word = if self.lines.len() == 1 {
            "line"
        } else {
            "lines"
        };
        format!("{word} {}", lines.join(", "))
    }
}

/// A named table and how many pairs it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TablePairs {
    pub name: String,
    pub pairs: i64,
}

/// What an import did to its table (in a dry run: what it would have done). Always
/// `read = added + already_present + duplicates_in_file` and
/// `stored = (pairs before) - removed + added`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub table: TableName,
    pub mode: Mode,
    /// Pairs (data lines) in the file.
    pub read: usize,
    /// Pairs the table did not have before.
    pub added: usize,
    /// Pairs the table already had, in either order: skipped by `add`, kept by `replace` (with the
    /// file's order and basis).
    pub already_present: usize,
    /// Lines repeating an earlier line's pair (in either order); the first is the one used.
    pub duplicates_in_file: usize,
    /// Pairs of the table that are gone (`replace` only).
    pub removed: usize,
    /// Distinct pairs of the file that another table lists too (in either order). Tables are
    /// independent, so they are stored in this one all the same; the check engine counts each pair
    /// once, so `read - duplicates_in_file - in_other_tables` is what the file adds to the check.
    pub in_other_tables: usize,
    /// Pairs in the table after the import.
    pub stored: usize,
    /// Names of the file found in no `drug_ingredients` row, in order of first appearance. A
    /// warning, not an error: a licensed table may be ahead of the drug master, and such a pair
    /// simply matches nothing until the master has the name.
    pub unknown_ingredients: Vec<UnknownIngredient>,
    /// Every table after the import.
    pub tables: Vec<TablePairs>,
}

/// What to write, and the counts of the report.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    /// In `replace` mode every distinct pair of the file; in `add` mode the new ones.
    pub insert: Vec<&'a ContraindicationRecord>,
    pub added: usize,
    pub already_present: usize,
    pub duplicates_in_file: usize,
    pub removed: usize,
    pub in_other_tables: usize,
}

/// Compares the file with the table's current pairs (`existing`) and the pairs of the other
/// tables (`others`).
pub fn plan<'a>(
    mode: Mode,
    existing: &[ContraindicationRecord],
    others: &HashSet<PairKey>,
    file: &'a [NumberedPair],
) -> Plan<'a> {
    let existing_keys: HashSet<PairKey> = existing.iter().map(PairKey::of).collect();
    let mut seen = HashSet::with_capacity(file.len());
    let mut plan = Plan {
        insert: Vec::new(),
        added: 0,
        already_present: 0,
        duplicates_in_file: 0,
        removed: 0,
        in_other_tables: 0,
    };
    for NumberedPair { pair, .. } in file {
        let key = PairKey::of(pair);
        if seen.contains(&key) {
            plan.duplicates_in_file += 1;
            continue;
        }
        let present = existing_keys.contains(&key);
        if others.contains(&key) {
            plan.in_other_tables += 1;
        }
        seen.insert(key);
        if present {
            plan.already_present += 1;
        } else {
            plan.added += 1;
        }
        if mode == Mode::Replace || !present {
            plan.insert.push(pair);
        }
    }
    if mode == Mode::Replace {
        // Counted in rows: a table holding a pair in both orders loses one of them.
        plan.removed = existing.len() - plan.already_present;
    }
    plan
}

/// Groups the lines of the names `unknown` lists, in order of first appearance.
pub fn unknown_lines(file: &[NumberedPair], unknown: &HashSet<String>) -> Vec<UnknownIngredient> {
    let mut found: Vec<UnknownIngredient> = Vec::new();
    let mut at: BTreeMap<&str, usize> = BTreeMap::new();
    for NumberedPair { line, pair } in file {
        for name in [&pair.ingredient_a, &pair.ingredient_b] {
            if !unknown.contains(name) {
                continue;
            }
            let i = *at.entry(name).or_insert_with(|| {
                found.push(UnknownIngredient {
                    name: name.clone(),
                    lines: Vec::new(),
                });
                found.len() - 1
            });
            let lines = &mut found[i].lines;
            if lines.last() != Some(line) {
                lines.push(*line);
            }
        }
    }
    found
}

/// Replaces or adds to `table` inside the caller's transaction (which it locks against concurrent
/// imports) and reports. Run it after the drug master of the same import, so unknown names are
/// judged against the new master.
pub async fn import(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &TableName,
    mode: Mode,
    file: &[NumberedPair],
) -> Result<Report, tokio_postgres::Error> {
    master::lock_contraindications(tx).await?;
    let existing = master::contraindications_by_table(tx, table.as_str(), true).await?;
    let others: HashSet<PairKey> = master::contraindications_by_table(tx, table.as_str(), false)
        .await?
        .iter()
        .map(PairKey::of)
        .collect();
    let plan = plan(mode, &existing, &others, file);
    if mode == Mode::Replace {
        master::delete_contraindication_table(tx, table.as_str()).await?;
    }
    master::insert_contraindications(tx, table.as_str(), &plan.insert).await?;

    let names: Vec<&str> = file
        .iter()
        .flat_map(|p| [p.pair.ingredient_a.as_str(), p.pair.ingredient_b.as_str()])
        .collect();
    let unknown: HashSet<String> = master::unknown_ingredients(tx, &names)
        .await?
        .into_iter()
        .collect();
    let tables: Vec<TablePairs> = master::contraindication_tables(tx)
        .await?
        .into_iter()
        .map(|(name, pairs)| TablePairs { name, pairs })
        .collect();
    let stored = tables
        .iter()
        .find(|t| t.name == table.as_str())
        .map_or(0, |t| usize::try_from(t.pairs).unwrap_or(usize::MAX));
    Ok(Report {
        table: table.clone(),
        mode,
        read: file.len(),
        added: plan.added,
        already_present: plan.already_present,
        duplicates_in_file: plan.duplicates_in_file,
        removed: plan.removed,
        in_other_tables: plan.in_other_tables,
        stored,
        unknown_ingredients: unknown_lines(file, &unknown),
        tables,
    })
}

impl fmt::Display for Report {
    /// The human summary `relay master import` prints to stderr next to its JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Replace => "replaced",
            Mode::Add => "added to",
        };
        writeln!(f, "contraindication table `{}` {mode}:", self.table)?;
        writeln!(f, "  pairs read:          {}", self.read)?;
        writeln!(f, "  added:               {}", self.added)?;
        writeln!(f, "  already present:     {}", self.already_present)?;
        if self.duplicates_in_file > 0 {
            writeln!(f, "  duplicates in file:  {}", self.duplicates_in_file)?;
        }
        if self.mode == Mode::Replace {
            writeln!(f, "  removed:             {}", self.removed)?;
        }
        if self.in_other_tables > 0 {
            writeln!(f, "  in other tables too: {}", self.in_other_tables)?;
        }
        write!(f, "  pairs in the table:  {}", self.stored)?;
        if !self.unknown_ingredients.is_empty() {
            write!(
                f,
                "\nwarning: {} ingredient name(s) not found in the drug master \
                 (the pairs are stored but match nothing until the master has the name):",
                self.unknown_ingredients.len()
            )?;
            for u in &self.unknown_ingredients {
                write!(f, "\n  {} ({})", u.name, u.where_in_file())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::master::Route;

    const HEADER: &str = "ingredient_a,route_a,ingredient_b,route_b,basis\n";

    fn pair(
        a: &str,
        route_a: Option<Route>,
        b: &str,
        route_b: Option<Route>,
    ) -> ContraindicationRecord {
        ContraindicationRecord {
            ingredient_a: a.to_owned(),
            route_a,
            ingredient_b: b.to_owned(),
            route_b,
            basis: String::new(),
        }
    }

    fn numbered(pairs: &[ContraindicationRecord]) -> Vec<NumberedPair> {
        (2..)
            .zip(pairs)
            .map(|(line, pair)| NumberedPair {
                line,
                pair: pair.clone(),
            })
            .collect()
    }

    #[test]
    fn table_names() {
        for good in ["seed", "vendor-2026-11", "a", "2026.11_b", &"x".repeat(64)] {
            assert_eq!(
                TableName::parse(good).map(|t| t.to_string()).as_deref(),
                Ok(good)
            );
        }
        for bad in [
            "",
            "Seed",
            "-seed",
            ".x",
            "vendor 2026",
            "ベンダー",
            &"x".repeat(65),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(TableName::default().as_str(), DEFAULT_TABLE);
    }

    #[test]
    fn lines_follow_the_file() {
        let text = format!(
            "{HEADER}Ａ,内用薬,Ｂ,*,x\r\n\r\nＣ,*,Ｄ,注射薬,\"two\nlines\"\r\nＥ,外用薬,Ｆ,*,\n\nＧ,*,Ｈ,*,"
        );
        let pairs = parse(text.as_bytes()).expect("parse");
        let lines: Vec<usize> = pairs.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 4, 6, 8]);
        assert_eq!(pairs[1].pair.basis, "two\nlines");
        assert_eq!(pairs[3].pair.ingredient_a, "Ｇ");
        assert!(parse(HEADER.as_bytes()).expect("header only").is_empty());
    }

    #[test]
    fn the_seed_is_numbered_from_line_2() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/contraindications-seed.csv");
        let bytes = std::fs::read(path).expect("read the seed");
        let pairs = parse(&bytes).expect("parse the seed");
        assert_eq!(pairs.len(), 81);
        assert!(pairs.iter().zip(2..).all(|(p, line)| p.line == line));
    }

    #[test]
    fn errors_name_line_and_column() {
        let text = format!("{HEADER}Ａ,内用薬,Ｂ,*,x\nＣ,*,Ｄ,経口,x\n");
        let err = parse(text.as_bytes()).expect_err("bad route");
        let shown = err.to_string();
        assert!(
            shown.starts_with("line 3, column 4 (route_b): unknown route `経口`"),
            "{shown}"
        );
        let text = format!("{HEADER}Ａ,内用薬,Ｂ,*,x\nＡ,内用薬,Ｂ,*,x\n,*,Ｂ,*,x\n");
        let shown = parse(text.as_bytes()).expect_err("empty").to_string();
        assert_eq!(shown, "line 4, column 1 (ingredient_a): is empty");
        let text = format!("{HEADER}Ａ,内用薬,Ｂ\n");
        let shown = parse(text.as_bytes()).expect_err("short").to_string();
        assert!(
            shown.starts_with("line 2, column 4 (route_b): missing"),
            "{shown}"
        );
        // Header errors keep the parser's wording, which names line 1 and the column.
        let shown = parse(b"ingredient_a,route,ingredient_b,route_b,basis\n")
            .expect_err("header")
            .to_string();
        assert!(shown.starts_with("line 1 (header), column 2"), "{shown}");
    }

    #[test]
    fn plan_replace_and_add() {
        let oral = Some(Route::Oral);
        let ab = pair("Ａ", oral, "Ｂ", None);
        let ba = pair("Ｂ", None, "Ａ", oral);
        let ab_any = pair("Ａ", None, "Ｂ", None);
        let cd = pair("Ｃ", None, "Ｄ", None);
        let ef = pair("Ｅ", None, "Ｆ", None);
        let existing = [ab.clone(), cd.clone()];
        // Another table lists F × E and A × B.
        let others: HashSet<PairKey> = [pair("Ｆ", None, "Ｅ", None), ab.clone()]
            .iter()
            .map(PairKey::of)
            .collect();
        // B × A is A × B; A(any) × B is another pair; the repeated E × F is a duplicate.
        let file = numbered(&[ba.clone(), ab_any.clone(), ef.clone(), ef.clone()]);
        let counts = |p: &Plan| {
            (
                p.added,
                p.already_present,
                p.duplicates_in_file,
                p.removed,
                p.in_other_tables,
            )
        };

        let add = plan(Mode::Add, &existing, &others, &file);
        assert_eq!(add.insert, [&ab_any, &ef]);
        assert_eq!(counts(&add), (2, 1, 1, 0, 2));

        let replace = plan(Mode::Replace, &existing, &HashSet::new(), &file);
        assert_eq!(replace.insert, [&ba, &ab_any, &ef]);
        assert_eq!(counts(&replace), (2, 1, 1, 1, 0));

        let empty = plan(Mode::Replace, &existing, &others, &[]);
        assert!(empty.insert.is_empty());
        assert_eq!(empty.removed, 2);
    }

    #[test]
    fn unknown_names_with_their_lines() {
        let file = numbered(&[
            pair("Ａ", None, "謎", None),
            pair("Ｂ", None, "Ｃ", None),
            pair("謎", None, "謎", None),
            pair("未知", None, "謎", None),
        ]);
        let unknown: HashSet<String> = ["謎", "未知", "unused"].map(String::from).into();
        assert_eq!(
            unknown_lines(&file, &unknown),
            [
                UnknownIngredient {
                    name: "謎".to_owned(),
                    lines: vec![2, 4, 5],
                },
                UnknownIngredient {
                    name: "未知".to_owned(),
                    lines: vec![5],
                },
            ]
        );
    }
}
