//! `relay insured import FILE`: the eligibility registry from an operator's CSV.
//!
//! [`parse`] is pure (bytes → validated rows, or every error of the file with its line): the
//! encoding is UTF-8 (a BOM is skipped) or, when the bytes are not UTF-8, Shift_JIS as Excel in
//! Japan writes it (Windows-31J). [`import`] then adds every row in one transaction: a coverage
//! that is already registered counts as already present, so importing a file twice is harmless,
//! and a row that conflicts with the registry rolls everything back.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use jiff::civil::Date;
use uuid::Uuid;

use crate::db::{self, DbError, Pool};
use crate::domain::facility::{CardDraft, HeldDocument, InsuredDraft, InsuredPerson};
use crate::domain::prescription::Sex;
use crate::domain::text::fold_width;

/// Every column the file may have, in the order an operator would write them.
pub const COLUMNS: [&str; 15] = [
    "insurer_number",
    "symbol",
    "number",
    "branch",
    "name",
    "name_kana",
    "sex",
    "birth_date",
    "valid_from",
    "valid_until",
    "card_id",
    "certificate_expires_on",
    "documents",
    "person_ref",
    "address",
];

/// Columns that must be present in the header and filled in on every row.
pub const REQUIRED: [&str; 7] = [
    "insurer_number",
    "number",
    "branch",
    "name",
    "sex",
    "birth_date",
    "valid_from",
];

/// The dates `InsuredDraft::validate` compares with each other.
const COMPARED_DATES: [&str; 3] = ["birth_date", "valid_from", "valid_until"];

/// The encoding the file turned out to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf8Bom,
    ShiftJis,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Utf8 => "UTF-8",
            Encoding::Utf8Bom => "UTF-8 with BOM",
            Encoding::ShiftJis => "Shift_JIS (Windows-31J)",
        })
    }
}

/// One problem of the file: its line (the header is line 1), the column when there is one, a
/// stable UPPER_SNAKE code and a sentence the operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub column: Option<String>,
    pub code: &'static str,
    pub message: String,
}

impl LineError {
    fn new(
        line: usize,
        column: Option<&str>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        LineError {
            line,
            column: column.map(str::to_string),
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(
                f,
                "line {}, column {c}: {}: {}",
                self.line, self.code, self.message
            ),
            None => write!(f, "line {}: {}: {}", self.line, self.code, self.message),
        }
    }
}

/// A validated row and the file line it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub line: usize,
    pub person: InsuredPerson,
}

/// A file whose every row is valid.
#[derive(Debug, Clone)]
pub struct Registry {
    pub encoding: Encoding,
    pub rows: Vec<Row>,
}

/// A file refused before anything was written: every error found, in line order.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// `None` when the bytes were neither UTF-8 nor Shift_JIS.
    pub encoding: Option<Encoding>,
    pub errors: Vec<LineError>,
}

/// UTF-8 when the bytes are UTF-8 (a leading BOM is dropped), else Shift_JIS (Windows-31J).
/// Japanese Shift_JIS text is practically never valid UTF-8, so the order of the tries is safe.
pub fn decode(bytes: &[u8]) -> Result<(Cow<'_, str>, Encoding), LineError> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return match std::str::from_utf8(rest) {
            Ok(s) => Ok((Cow::Borrowed(s), Encoding::Utf8Bom)),
            Err(e) => Err(LineError::new(
                line_at(rest, e.valid_up_to()) + 1,
                None,
                "ENCODING",
                "the file starts with a UTF-8 BOM but is not valid UTF-8 from this line on",
            )),
        };
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok((Cow::Borrowed(s), Encoding::Utf8));
    }
    match encoding_rs::SHIFT_JIS.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(s) => Ok((s, Encoding::ShiftJis)),
        None => {
            // Shift_JIS trail bytes are never 0x0A, so splitting on LF finds the line.
            let line = bytes
                .split(|b| *b == b'\n')
                .position(|l| {
                    encoding_rs::SHIFT_JIS
                        .decode_without_bom_handling_and_without_replacement(l)
                        .is_none()
                })
                .map_or(1, |i| i + 1);
            Err(LineError::new(
                line,
                None,
                "ENCODING",
                "the file is neither UTF-8 nor Shift_JIS (Windows-31J); save it as CSV UTF-8",
            ))
        }
    }
}

/// How many newlines precede `offset`.
fn line_at(text: &[u8], offset: usize) -> usize {
    text[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// Maps csv positions to 1-based file lines. csv's own `Position::line` miscounts after CRLF line
/// ends and skipped blank lines, and a record's byte offset can point at the end of the previous
/// line, so the line is recomputed from the bytes.
struct Lines<'a> {
    text: &'a [u8],
    newlines: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a [u8]) -> Self {
        let newlines = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        Lines { text, newlines }
    }

    fn line_of(&self, position: Option<&csv::Position>) -> usize {
        let Some(position) = position else {
            return 0;
        };
        let mut start = usize::try_from(position.byte())
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        while matches!(self.text.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        1 + self.newlines.partition_point(|&nl| nl < start)
    }
}

/// `YYYY-MM-DD` or `YYYY/MM/DD`; Excel's `YYYY/M/D` (no zero padding) is accepted too.
pub fn parse_date(raw: &str) -> Result<Date, String> {
    let s = fold_width(raw.trim());
    let bad = || format!("`{raw}` is not a date: write YYYY-MM-DD (or YYYY/MM/DD)");
    let sep = if s.contains('-') { '-' } else { '/' };
    let parts: Vec<&str> = s.split(sep).collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    let digits = |p: &str, min: usize, max: usize| {
        (min..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(y, 4, 4) || !digits(m, 1, 2) || !digits(d, 1, 2) {
        return Err(bad());
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i16>(), m.parse::<i8>(), d.parse::<i8>()) else {
        return Err(bad());
    };
    Date::new(y, m, d).map_err(|_| format!("`{raw}` is not a date of the calendar"))
}

/// `male`/`female`, the 性別コード `1` (男) / `2` (女), or `男`/`女`.
pub fn parse_sex(raw: &str) -> Result<Sex, String> {
    match fold_width(raw.trim()).to_ascii_lowercase().as_str() {
        "male" | "1" | "男" | "男性" => Ok(Sex::Male),
        "female" | "2" | "女" | "女性" => Ok(Sex::Female),
        _ => Err(format!(
            "`{raw}` is not a sex: write male or female (also 1 or 男, 2 or 女)"
        )),
    }
}

/// A `;`-separated list of `qualification_certificate` (資格確認書) and `eligibility_notice`
/// (資格情報のお知らせ); the Japanese names are accepted too.
pub fn parse_documents(raw: &str) -> Result<Vec<HeldDocument>, String> {
    let mut out = Vec::new();
    for part in fold_width(raw).split(';') {
        let part = part.trim();
        match part {
            "" => {}
            "qualification_certificate" | "資格確認書" => {
                out.push(HeldDocument::QualificationCertificate)
            }
            "eligibility_notice" | "資格情報のお知らせ" => {
                out.push(HeldDocument::EligibilityNotice)
            }
            other => {
                return Err(format!(
                    "`{other}` is not a document: write qualification_certificate or \
                     eligibility_notice, separated by `;`"
                ));
            }
        }
    }
    Ok(out)
}

/// The header: which column index holds which known column.
struct Header {
    index: HashMap<&'static str, usize>,
    /// Columns without a name (Excel leaves trailing empty ones); their cells must stay empty.
    unnamed: Vec<usize>,
    len: usize,
}

fn read_header(record: &csv::StringRecord) -> Result<Header, Vec<LineError>> {
    let mut errors = Vec::new();
    let mut index = HashMap::new();
    let mut unnamed = Vec::new();
    for (i, raw) in record.iter().enumerate() {
        let name = raw
            .trim()
            .trim_start_matches('\u{FEFF}')
            .to_ascii_lowercase();
        if name.is_empty() {
            unnamed.push(i);
            continue;
        }
        match COLUMNS.iter().find(|c| **c == name) {
            Some(c) => {
                if index.insert(*c, i).is_some() {
                    errors.push(LineError::new(
                        1,
                        Some(c),
                        "DUPLICATE_COLUMN",
                        format!("column {c} appears more than once in the header"),
                    ));
                }
            }
            None => errors.push(LineError::new(
                1,
                Some(raw.trim()),
                "UNKNOWN_COLUMN",
                format!(
                    "unknown column `{}`; the columns are {}",
                    raw.trim(),
                    COLUMNS.join(", ")
                ),
            )),
        }
    }
    for c in REQUIRED {
        if !index.contains_key(c) {
            errors.push(LineError::new(
                1,
                Some(c),
                "MISSING_COLUMN",
                format!("the header has no {c} column, which is required"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(Header {
            index,
            unnamed,
            len: record.len(),
        })
    } else {
        Err(errors)
    }
}

/// Parses and validates the whole file; nothing is returned unless every row is good.
pub fn parse(bytes: &[u8], today: Date) -> Result<Registry, Rejected> {
    let (text, encoding) = decode(bytes).map_err(|e| Rejected {
        encoding: None,
        errors: vec![e],
    })?;
    let reject = |errors: Vec<LineError>| Rejected {
        encoding: Some(encoding),
        errors,
    };
    if text.trim().is_empty() {
        return Err(reject(vec![LineError::new(
            1,
            None,
            "EMPTY",
            format!(
                "the file is empty: expected a header row naming the columns, e.g. {}",
                REQUIRED.join(",")
            ),
        )]));
    }
    let lines = Lines::new(text.as_bytes());
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = csv.records();
    let header = match records.next() {
        Some(Ok(r)) => read_header(&r).map_err(reject)?,
        Some(Err(e)) => {
            return Err(reject(vec![LineError::new(1, None, "CSV", e.to_string())]));
        }
        None => {
            return Err(reject(vec![LineError::new(
                1,
                None,
                "EMPTY",
                "the file has no header row",
            )]));
        }
    };
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut seen: HashMap<(String, String, String, String, Date), usize> = HashMap::new();
    let mut read = 0usize;
    for result in records {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let line = lines.line_of(e.position());
                errors.push(LineError::new(line, None, "CSV", e.to_string()));
                continue;
            }
        };
        let line = lines.line_of(record.position());
        if record.iter().all(str::is_empty) {
            continue; // a row of empty cells, as spreadsheets leave behind
        }
        read += 1;
        match parse_row(&record, &header, line, today) {
            Ok(person) => {
                let key = (
                    person.insurer_number.to_string(),
                    person.symbol.to_string(),
                    person.number.to_string(),
                    person.branch.to_string(),
                    person.valid_from,
                );
                if let Some(first) = seen.get(&key) {
                    errors.push(LineError::new(
                        line,
                        None,
                        "DUPLICATE",
                        format!(
                            "the same coverage (insurer_number, symbol, number, branch and \
                             valid_from) is on line {first}"
                        ),
                    ));
                } else {
                    seen.insert(key, line);
                    rows.push(Row { line, person });
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if read == 0 && errors.is_empty() {
        errors.push(LineError::new(
            1,
            None,
            "NO_ROWS",
            "the file has a header but no rows",
        ));
    }
    if errors.is_empty() {
        Ok(Registry { encoding, rows })
    } else {
        errors.sort_by_key(|e| e.line);
        Err(reject(errors))
    }
}

fn parse_row(
    record: &csv::StringRecord,
    header: &Header,
    line: usize,
    today: Date,
) -> Result<InsuredPerson, Vec<LineError>> {
    let mut errors: Vec<LineError> = Vec::new();
    if record.len() < header.len || record.iter().skip(header.len).any(|cell| !cell.is_empty()) {
        return Err(vec![LineError::new(
            line,
            None,
            "FIELD_COUNT",
            format!(
                "the row has {} fields but the header has {}; a missing or extra comma?",
                record.len(),
                header.len
            ),
        )]);
    }
    for i in &header.unnamed {
        if record.get(*i).is_some_and(|cell| !cell.is_empty()) {
            errors.push(LineError::new(
                line,
                None,
                "UNNAMED_COLUMN",
                format!(
                    "field {} has a value but its column has no name in the header",
                    i + 1
                ),
            ));
        }
    }
    let get = |c: &str| -> &str {
        header
            .index
            .get(c)
            .and_then(|i| record.get(*i))
            .unwrap_or("")
    };
    let opt = |c: &str| Some(get(c)).filter(|v| !v.is_empty()).map(str::to_string);
    for c in REQUIRED {
        if get(c).is_empty() {
            errors.push(LineError::new(
                line,
                Some(c),
                "REQUIRED",
                format!("{c} is required"),
            ));
        }
    }
    let failed =
        |errors: &[LineError], c: &str| errors.iter().any(|e| e.column.as_deref() == Some(c));
    let date = |c: &str, errors: &mut Vec<LineError>| -> Option<Date> {
        let raw = get(c);
        if raw.is_empty() {
            return None;
        }
        match parse_date(raw) {
            Ok(d) => Some(d),
            Err(m) => {
                errors.push(LineError::new(line, Some(c), "FORMAT", m));
                None
            }
        }
    };
    let birth_date = date("birth_date", &mut errors);
    let valid_from = date("valid_from", &mut errors);
    let valid_until = date("valid_until", &mut errors);
    let expires = date("certificate_expires_on", &mut errors);
    let sex = if get("sex").is_empty() {
        None
    } else {
        match parse_sex(get("sex")) {
            Ok(s) => Some(s),
            Err(m) => {
                errors.push(LineError::new(line, Some("sex"), "FORMAT", m));
                None
            }
        }
    };
    let documents = match parse_documents(get("documents")) {
        Ok(d) => d,
        Err(m) => {
            errors.push(LineError::new(line, Some("documents"), "FORMAT", m));
            Vec::new()
        }
    };
    let card_id = opt("card_id");
    match (&card_id, get("certificate_expires_on").is_empty()) {
        (Some(_), true) => errors.push(LineError::new(
            line,
            Some("certificate_expires_on"),
            "CARD_INCOMPLETE",
            "card_id and certificate_expires_on go together: give the card's certificate expiry too",
        )),
        (None, false) => errors.push(LineError::new(
            line,
            Some("card_id"),
            "CARD_INCOMPLETE",
            "card_id and certificate_expires_on go together: give the card_id too",
        )),
        _ => {}
    }
    // Stand-ins where a value is missing or unreadable, so the other fields are still checked;
    // the errors they would cause are dropped below.
    let placeholder = Date::constant(1900, 1, 1);
    let birth = birth_date.unwrap_or(placeholder);
    let draft = InsuredDraft {
        insurer_number: get("insurer_number").to_string(),
        symbol: opt("symbol"),
        number: get("number").to_string(),
        branch: get("branch").to_string(),
        name: get("name").to_string(),
        name_kana: opt("name_kana"),
        sex: sex.unwrap_or(Sex::Male),
        birth_date: birth,
        valid_from: valid_from.unwrap_or(birth),
        valid_until,
        card: card_id.map(|card_id| CardDraft {
            card_id,
            certificate_expires_on: expires.unwrap_or(placeholder),
        }),
        documents,
        person_ref: opt("person_ref"),
        address: opt("address"),
    };
    let dates_failed = COMPARED_DATES.iter().any(|c| failed(&errors, c));
    match draft.validate(today) {
        Ok(person) if errors.is_empty() => Ok(person),
        Ok(_) => Err(errors),
        Err(field_errors) => {
            for fe in field_errors {
                let column = fe.field.strip_prefix("card.").unwrap_or(&fe.field);
                if failed(&errors, column) || (dates_failed && COMPARED_DATES.contains(&column)) {
                    continue;
                }
                let mut message = fe.message;
                if let Some(hint) = leading_zero_hint(column, get(column)) {
                    message.push_str(hint);
                }
                errors.push(LineError::new(line, Some(column), fe.code, message));
            }
            Err(errors)
        }
    }
}

/// Excel turns `01130012` into `1130012` and `01` into `1` unless the column is text.
fn leading_zero_hint(column: &str, raw: &str) -> Option<&'static str> {
    let digits = raw.bytes().all(|b| b.is_ascii_digit());
    let dropped = match column {
        "insurer_number" => digits && matches!(raw.len(), 5 | 7),
        "branch" => digits && raw.len() == 1,
        _ => false,
    };
    dropped.then_some(
        " (a spreadsheet may have dropped a leading zero: format the column as text before saving)",
    )
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: usize,
    /// Coverages added.
    pub added: usize,
    /// Rows whose coverage (identity and valid_from) was already registered.
    pub already_present: usize,
    /// Coverages that created their person.
    pub persons_created: usize,
    /// Coverages that joined a person created by an earlier line of the file.
    pub linked_in_file: usize,
    /// Coverages that joined a person already in the registry.
    pub linked_existing: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Rows the registry refuses (a card of another person, a person with another birth date).
    #[error("{} row(s) conflict with the registry; everything was rolled back", .0.len())]
    Conflicts(Vec<LineError>),
    #[error(
        "line {line}: another import or request registered the same person at the same moment; \
         everything was rolled back: run the import again"
    )]
    Concurrent { line: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ImportError {
    fn from(e: tokio_postgres::Error) -> Self {
        ImportError::Db(e.into())
    }
}

/// Adds every row in one transaction; rolls back on the first concurrent creation, after every
/// row when any conflicts, and always when `dry_run`.
pub async fn import(pool: &Pool, rows: &[Row], dry_run: bool) -> Result<ImportReport, ImportError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    let mut report = ImportReport {
        rows: rows.len(),
        ..ImportReport::default()
    };
    let mut conflicts = Vec::new();
    let mut created_coverages = HashSet::new();
    // Persons met for the first time in this run, with how many coverages joined them.
    let mut first_seen: Vec<Uuid> = Vec::new();
    let mut seen = HashSet::new();
    for row in rows {
        match db::insured::insert(&tx, &row.person).await? {
            db::insured::Inserted::Created {
                coverage_id,
                person_id,
            } => {
                report.added += 1;
                created_coverages.insert(coverage_id);
                if seen.insert(person_id) {
                    first_seen.push(person_id);
                } else {
                    report.linked_in_file += 1;
                }
            }
            db::insured::Inserted::Exists => report.already_present += 1,
            db::insured::Inserted::CardInUse => conflicts.push(LineError::new(
                row.line,
                Some("card_id"),
                "CARD_IN_USE",
                format!(
                    "card {} belongs to another person of the registry",
                    row.person.card.as_ref().map_or("", |c| c.card_id.as_str())
                ),
            )),
            db::insured::Inserted::PersonMismatch => conflicts.push(LineError::new(
                row.line,
                None,
                "PERSON_MISMATCH",
                "the person found by person_ref, card_id or the insurance identity has another \
                 birth_date or another person_ref",
            )),
            db::insured::Inserted::Concurrent => {
                tx.rollback().await?;
                return Err(ImportError::Concurrent { line: row.line });
            }
        }
    }
    if !conflicts.is_empty() {
        tx.rollback().await?;
        return Err(ImportError::Conflicts(conflicts));
    }
    // A person met first in this run was created by it unless it already had other coverages.
    for id in first_seen {
        let existed = db::insured::person(&tx, id).await?.is_some_and(|p| {
            p.coverages
                .iter()
                .any(|c| !created_coverages.contains(&c.id))
        });
        if existed {
            report.linked_existing += 1;
        } else {
            report.persons_created += 1;
        }
    }
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    const TODAY: Date = Date::constant(2025, 6, 1);
    const GOOD: &[u8] = include_bytes!("../tests/fixtures/insured/registry.csv");
    const BAD: &[u8] = include_bytes!("../tests/fixtures/insured/bad.csv");

    fn errors(bytes: &[u8]) -> Vec<String> {
        parse(bytes, TODAY)
            .expect_err("refused")
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_good_fixture_parses() {
        let r = parse(GOOD, TODAY).expect("valid");
        assert_eq!(r.encoding, Encoding::Utf8);
        assert_eq!(r.rows.len(), 6);
        assert_eq!(r.rows[0].line, 2);
        let second = &r.rows[1].person;
        assert_eq!(second.sex, Sex::Female);
        assert_eq!(second.birth_date, date(1980, 4, 1));
        assert_eq!(second.card.as_ref().unwrap().card_id, "CARD-0001");
        assert_eq!(second.documents.len(), 2);
        assert_eq!(
            r.rows[3].person.address.as_deref(),
            Some("大阪府大阪市北区1-2-3")
        );
    }

    #[test]
    fn the_bad_fixture_reports_both_rows() {
        let e = errors(BAD);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("line 3, column insurer_number: CHECK_DIGIT:"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("line 4, column birth_date: REQUIRED:"),
            "{e:?}"
        );
    }

    #[test]
    fn shift_jis_and_bom() {
        let text = "insurer_number,number,branch,name,sex,birth_date,valid_from\n\
                    01130012,1,01,髙橋 一郎,男,1970/1/2,2020/04/01\n";
        let (sjis, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        assert!(!unmappable);
        let r = parse(&sjis, TODAY).expect("Shift_JIS");
        assert_eq!(r.encoding, Encoding::ShiftJis);
        assert_eq!(r.rows[0].person.name, "髙橋 一郎");
        assert_eq!(r.rows[0].person.birth_date, date(1970, 1, 2));

        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(text.as_bytes());
        let r = parse(&bom, TODAY).expect("BOM");
        assert_eq!(r.encoding, Encoding::Utf8Bom);
        assert_eq!(r.rows[0].person.name, "髙橋 一郎");

        let e = parse(b"a,b\n\xFF\xFF\n", TODAY).unwrap_err();
        assert_eq!(e.encoding, None);
        assert_eq!(e.errors[0].code, "ENCODING");
        assert_eq!(e.errors[0].line, 2);
    }

    #[test]
    fn empty_files_and_headers() {
        assert_eq!(parse(b"", TODAY).unwrap_err().errors[0].code, "EMPTY");
        assert_eq!(
            parse(b"\xEF\xBB\xBF\r\n", TODAY).unwrap_err().errors[0].code,
            "EMPTY"
        );
        let header_only = b"insurer_number,number,branch,name,sex,birth_date,valid_from\n";
        assert_eq!(
            parse(header_only, TODAY).unwrap_err().errors[0].code,
            "NO_ROWS"
        );
        let e = errors(b"insurer_number,number,branch,name,sex,birth_date,colour,Shoe\n1\n");
        assert!(
            e.iter()
                .any(|e| e.starts_with("line 1, column colour: UNKNOWN_COLUMN")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("line 1, column Shoe: UNKNOWN_COLUMN")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("line 1, column valid_from: MISSING_COLUMN")),
            "{e:?}"
        );
    }

    #[test]
    fn values() {
        assert_eq!(parse_sex("1"), Ok(Sex::Male));
        assert_eq!(parse_sex("女"), Ok(Sex::Female));
        assert_eq!(parse_sex(" Female "), Ok(Sex::Female));
        assert!(parse_sex("3").is_err());
        assert_eq!(parse_date("2024-04-01"), Ok(date(2024, 4, 1)));
        assert_eq!(parse_date("2024/4/1"), Ok(date(2024, 4, 1)));
        assert!(parse_date("2024-02-30").is_err());
        assert!(parse_date("2024-04/01").is_err());
        assert!(parse_date("20240401").is_err());
        assert_eq!(
            parse_documents("eligibility_notice; qualification_certificate;"),
            Ok(vec![
                HeldDocument::EligibilityNotice,
                HeldDocument::QualificationCertificate
            ])
        );
        assert!(parse_documents("passport").is_err());
    }

    #[test]
    fn row_errors_name_line_and_column() {
        let text = "insurer_number,number,branch,name,sex,birth_date,valid_from,card_id,\
                    certificate_expires_on,documents\r\n\
                    \r\n\
                    01130012,1,01,甲,x,1970-01-01,2020-04-01,CARD-1,,\r\n\
                    \"1130012\",2,1,乙,1,1970-13-01,2020-04-01,,2030-01-01,passport\r\n\
                    01130012,3,01,丙,2,1970-01-01,1960-01-01,,,\r\n\
                    01130012,4,01,丁,2,1970-01-01\r\n";
        let e = errors(text.as_bytes());
        let expected = [
            "line 3, column sex: FORMAT:",
            "line 3, column certificate_expires_on: CARD_INCOMPLETE:",
            "line 4, column birth_date: FORMAT:",
            "line 4, column documents: FORMAT:",
            "line 4, column card_id: CARD_INCOMPLETE:",
            "line 4, column insurer_number: FORMAT:",
            "line 4, column branch: FORMAT:",
            "line 5, column valid_from: BEFORE_BIRTH:",
            "line 6: FIELD_COUNT:",
        ];
        assert_eq!(e.len(), expected.len(), "{e:#?}");
        for want in expected {
            assert!(e.iter().any(|e| e.starts_with(want)), "{want} in {e:#?}");
        }
        assert!(
            e.iter()
                .any(|e| e.starts_with("line 4, column insurer_number")
                    && e.contains("leading zero")),
            "{e:#?}"
        );
    }

    #[test]
    fn duplicates_in_the_file_are_refused() {
        let text = "insurer_number,number,branch,name,sex,birth_date,valid_from,address\n\
                    01130012,1,01,甲,1,1970-01-01,2020-04-01,\"multi\nline\"\n\
                    01130012,1,01,甲,1,1970-01-01,2020-04-01,\n";
        let e = errors(text.as_bytes());
        assert_eq!(
            e,
            [
                "line 4: DUPLICATE: the same coverage (insurer_number, symbol, number, branch and \
              valid_from) is on line 2"
            ]
        );
    }
}
