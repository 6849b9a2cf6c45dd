//! SJ1 CSV, the registered prescription document (domain.md §3.2): rendered byte-exactly from a
//! validated [`Prescription`](super::prescription::Prescription), and parsed back into a
//! [`PrescriptionDraft`] that the caller validates exactly like the JSON form.
//!
//! The two directions are exact inverses for every field the JSON form carries, with one
//! exception: an ASCII comma inside a text is written as the full-width comma "，" (a field never
//! holds ',') and stays full-width when read back.
//!
//! What SJ1 carries beyond the JSON form is read and dropped: 所在地 and 電話 (records 2 and 3, the
//! relay takes them from its facility registry), 患者コード, 医師コード, 診療科コード, 剤形名称,
//! 情報区分, and the records it does not model (一部負担区分 14, 残薬確認 62, 用法補足 181, drug
//! supplements other than 後発品変更不可 …).

use std::collections::BTreeMap;
use std::fmt;

use jiff::ToSpan;
use jiff::civil::Date;
use rust_decimal::Decimal;

use super::document::DocumentInput;
use super::identifiers::{ExchangeNumber, FacilityCode};
use super::lifecycle::IssueType;
use super::prescription::{
    CodeSystem, DEFAULT_VALIDITY_DAYS, DoctorDraft, DosageForm, Dose, DrugDraft, InsuranceDraft,
    PatientDraft, PrescriptionDraft, PublicExpenseDraft, Relationship, RpDraft, Sex, UsageDraft,
};
use super::text::fold_width;

/// The first line of every SJ1 document.
pub const FORMAT_LINE: &str = "SJ1";
/// 内容 of the 281 record that carries 後発品変更不可 (区分 3).
const NO_SUBSTITUTION_TEXT: &str = "後発品変更不可";
/// A 422 listing thousands of errors helps nobody; past this many the rest are summarised.
const MAX_ERRORS: usize = 200;

/// One CSV record: its number and its fields after the number, already formatted as text
/// (numbers without needless zeros: 100, 0.25, 1.5; dates YYYYMMDD; ASCII commas inside text
/// replaced by the full-width comma "，" so a field never contains ','; no CR or LF inside fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub no: u16,
    pub fields: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// The records of `doc` in JAHIS order: header records 1–82, then per RP its 101–181 records
/// followed by, per drug, its 201 and 281 records.
pub fn records(doc: &DocumentInput) -> Vec<Record> {
    let p = doc.prescription;
    let inst = doc.institution;
    let mut out = Vec::new();
    let mut add = |no: u16, fields: Vec<String>| out.push(Record { no, fields });
    let empty = String::new;

    let code = inst.code.as_str();
    add(
        1,
        vec![
            inst.code.score_table().to_string(),
            code.get(3..).unwrap_or_default().to_string(),
            inst.code.prefecture().to_string(),
            text(&inst.name),
        ],
    );
    if let Some(address) = &inst.address {
        let (postal, rest) = split_postal(address);
        add(2, vec![postal, text(rest)]);
    }
    if let Some(phone) = &inst.phone {
        add(3, vec![text(phone), empty(), empty()]);
    }
    if let Some(department) = &p.department {
        add(4, vec!["1".into(), empty(), text(department)]);
    }
    if let Some(doctor) = &p.doctor {
        add(
            5,
            vec![
                empty(),
                opt_text(doctor.name_kana.as_deref()),
                text(&doctor.name),
            ],
        );
    }
    add(
        11,
        vec![
            empty(),
            text(&p.patient.name),
            opt_text(p.patient.name_kana.as_deref()),
        ],
    );
    let sex = match p.patient.sex {
        Sex::Male => "1",
        Sex::Female => "2",
    };
    add(12, vec![sex.into()]);
    add(13, vec![ymd(p.patient.birth_date)]);

    let ins = &p.insurance;
    let insurer = ins.insurer_number.as_str();
    add(21, vec![insurance_kind(insurer).into()]);
    add(22, vec![text(insurer)]);
    let relationship = match ins.relationship {
        Relationship::Insured => "1",
        Relationship::Dependent => "2",
    };
    add(
        23,
        vec![
            text(ins.symbol.as_str()),
            text(ins.number.as_str()),
            relationship.into(),
            text(ins.branch.as_str()),
        ],
    );
    if let Some(rate) = ins.copay_rate {
        add(
            24,
            vec![rate.to_string(), 100u8.saturating_sub(rate).to_string()],
        );
    }
    for (no, pe) in [27, 28, 29].into_iter().zip(&p.public_expenses) {
        add(
            no,
            vec![
                text(pe.payer_number.as_str()),
                opt_text(pe.recipient_number.as_ref().map(|r| r.as_str())),
            ],
        );
    }

    add(51, vec![ymd(p.issued_on)]);
    // 52 only when the clinic chose a date: absent means the default, so a round trip keeps it.
    if p.valid_until != default_valid_until(p.issued_on) {
        add(52, vec![ymd(p.valid_until)]);
    }
    if let Some(count) = p.refill_count {
        add(64, vec![count.to_string()]);
    }
    if let Some(remarks) = &p.remarks {
        for (i, line) in remarks.split('\n').enumerate() {
            add(81, vec![(i + 1).to_string(), "1".into(), text(line)]);
        }
    }
    if let Some(number) = doc.exchange_number {
        add(82, vec!["1".into(), text(number)]);
    }

    for (i, rp) in p.rps.iter().enumerate() {
        let rp_no = (i + 1).to_string();
        add(
            101,
            vec![
                rp_no.clone(),
                rp.dosage_form.jahis_code().to_string(),
                empty(),
                rp.quantity.to_string(),
            ],
        );
        let (usage_kind, usage_code) = match &rp.usage.code {
            Some(code) => ("3", text(code)),
            None => ("1", empty()),
        };
        add(
            111,
            vec![
                rp_no.clone(),
                usage_kind.into(),
                usage_code,
                text(&rp.usage.text),
                rp.usage
                    .times_per_day
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ],
        );
        for (j, drug) in rp.drugs.iter().enumerate() {
            let seq = (j + 1).to_string();
            add(
                201,
                vec![
                    rp_no.clone(),
                    seq.clone(),
                    "1".into(),
                    code_system_digit(drug.code_system).into(),
                    text(&drug.code),
                    text(&drug.name),
                    decimal_text(drug.dose.0),
                    "1".into(),
                    text(&drug.unit),
                ],
            );
            if drug.no_substitution {
                add(
                    281,
                    vec![
                        rp_no.clone(),
                        seq,
                        "1".into(),
                        "3".into(),
                        NO_SUBSTITUTION_TEXT.into(),
                    ],
                );
            }
        }
    }
    out
}

/// `SJ1` and one line per record, each line ended by LF.
pub fn to_text(records: &[Record]) -> String {
    let mut out = String::from(FORMAT_LINE);
    out.push('\n');
    for record in records {
        out.push_str(&record.no.to_string());
        for field in &record.fields {
            out.push(',');
            out.push_str(field);
        }
        out.push('\n');
    }
    out
}

/// The SJ1 document of `doc`.
pub fn render(doc: &DocumentInput) -> String {
    to_text(&records(doc))
}

/// A text as a field: ASCII commas become full-width (there is no quoting) and control
/// characters, CR and LF above all, become spaces so a field never breaks its line.
fn text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ',' => '，',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

fn opt_text(s: Option<&str>) -> String {
    s.map(text).unwrap_or_default()
}

fn ymd(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), d.month(), d.day())
}

/// Without needless zeros: 10.0 → 10, 0.250 → 0.25, 100 stays 100.
fn decimal_text(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The same default as [`PrescriptionDraft::validate`] applies, so "absent" means the same date.
fn default_valid_until(issued_on: Date) -> Date {
    issued_on
        .checked_add(DEFAULT_VALIDITY_DAYS.days())
        .unwrap_or(issued_on)
}

/// 保険種別 from the insurer number: 6 digits are 市町村国保, `39…` is 後期高齢, the rest 医保.
fn insurance_kind(insurer: &str) -> &'static str {
    if insurer.len() == 6 {
        "2"
    } else if insurer.len() == 8 && insurer.starts_with("39") {
        "7"
    } else {
        "1"
    }
}

fn code_system_digit(system: CodeSystem) -> &'static str {
    match system {
        CodeSystem::Receipt => "2",
        CodeSystem::Yj => "4",
        CodeSystem::Generic => "7",
    }
}

/// `〒100-0001 東京都…` → (`100-0001`, `東京都…`); an address without a leading postal code is
/// all 住所.
fn split_postal(address: &str) -> (String, &str) {
    let Some(rest) = address.strip_prefix('〒') else {
        return (String::new(), address);
    };
    let end = rest.char_indices().nth(8).map_or(rest.len(), |(i, _)| i);
    let (head, tail) = rest.split_at(end);
    let postal = fold_width(head);
    let b = postal.as_bytes();
    let shaped = b.len() == 8
        && b[3] == b'-'
        && b[..3].iter().chain(&b[4..]).all(u8::is_ascii_digit)
        && !fold_width(tail).starts_with(|c: char| c.is_ascii_digit());
    if shaped {
        (postal, tail.trim_start())
    } else {
        (String::new(), address)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in an SJ1 document, named by line, record and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sj1Error {
    /// 1-based line in the input (line 1 is `SJ1`).
    pub line: usize,
    pub record: Option<u16>,
    /// The field as the JAHIS record table names it (`用量`), or the record's name for errors about
    /// a whole record (`患者氏名`); empty for errors about a whole line.
    pub field: String,
    /// Stable UPPER_SNAKE rule name: `CR_LINE_ENDINGS`, `BAD_HEADER`, `MISSING_RECORD`,
    /// `OUT_OF_ORDER`, `DUPLICATE_RECORD`, `UNKNOWN_RECORD`, `TRUNCATED`, `TOO_MANY_FIELDS`,
    /// `FORMAT`, `CHECK_DIGIT`, `REQUIRED`, `UNSUPPORTED`, `INCONSISTENT`, `TOO_MANY_ERRORS`.
    pub code: &'static str,
    pub message: String,
}

impl Sj1Error {
    fn new(
        line: usize,
        record: Option<u16>,
        field: &str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            line,
            record,
            field: field.to_string(),
            code,
            message: message.into(),
        }
    }

    /// Where the problem is, e.g. `sj1 line 7, record 201, 用量`.
    pub fn field_path(&self) -> String {
        let mut path = format!("sj1 line {}", self.line);
        if let Some(record) = self.record {
            path.push_str(&format!(", record {record}"));
        }
        if !self.field.is_empty() {
            path.push_str(", ");
            path.push_str(&self.field);
        }
        path
    }
}

impl fmt::Display for Sj1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field_path(), self.message)
    }
}

impl std::error::Error for Sj1Error {}

/// A value as quoted in a message, cut short so garbage input does not flood the response.
fn shown(s: &str) -> String {
    const MAX: usize = 24;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

/// Sorted by line (stable, so the errors of one line keep their field order) and capped.
fn finish(mut errors: Vec<Sj1Error>) -> Vec<Sj1Error> {
    errors.sort_by_key(|e| e.line);
    if errors.len() > MAX_ERRORS {
        let rest = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        let line = errors.last().map_or(1, |e| e.line);
        errors.push(Sj1Error::new(
            line,
            None,
            "",
            "TOO_MANY_ERRORS",
            format!("{rest} more errors are not listed"),
        ));
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Splits each line on ',' (SJ1 has no quoting) into its record number and fields. Used for SJ1
/// and, by the JAHIS decoder, for JAHIS text already turned into lines.
pub fn parse_records(lines: &[(usize, &str)]) -> Result<Vec<Record>, Vec<Sj1Error>> {
    let mut records = Vec::with_capacity(lines.len());
    let mut errors = Vec::new();
    for &(line, content) in lines {
        match parse_line(line, content) {
            Ok(record) => records.push(record),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(finish(errors))
    }
}

fn parse_line(line: usize, content: &str) -> Result<Record, Sj1Error> {
    if content.is_empty() {
        return Err(Sj1Error::new(
            line,
            None,
            "レコード番号",
            "FORMAT",
            "empty line: every line after the first is one record",
        ));
    }
    let mut parts = content.split(',');
    let head = parts.next().unwrap_or_default();
    let Some(no) = whole_number(head) else {
        return Err(Sj1Error::new(
            line,
            None,
            "レコード番号",
            "FORMAT",
            format!(
                "a record starts with its number, e.g. 201; got \"{}\"",
                shown(head)
            ),
        ));
    };
    let Ok(no) = u16::try_from(no) else {
        return Err(unknown_record(line, None, head));
    };
    Ok(Record {
        no,
        fields: parts.map(str::to_string).collect(),
    })
}

fn unknown_record(line: usize, record: Option<u16>, shown_no: &str) -> Sj1Error {
    Sj1Error::new(
        line,
        record,
        "",
        "UNKNOWN_RECORD",
        format!(
            "record {} is not an SJ1 record: header records are numbered 1–99, RP records 101–199, drug records 201–299",
            shown(shown_no)
        ),
    )
}

/// What an SJ1 document says, as a draft the relay validates exactly like the JSON form.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// From record 1: 都道府県 + コード種別 (点数表) + コード (7), check digit verified.
    pub institution_code: FacilityCode,
    pub institution_name: String,
    /// Record 82, normalised by [`ExchangeNumber::parse`].
    pub exchange_number: Option<String>,
    pub draft: PrescriptionDraft,
    /// JSON path prefix of the draft → (line, record) it was read from.
    sources: Vec<(String, usize, u16)>,
}

impl Parsed {
    /// The line and record a field of the draft came from, so that errors of
    /// [`PrescriptionDraft::validate`] (named by JSON path, e.g. `insurance.insurer_number` or
    /// `rps[0].drugs[1].code`) can also be shown as `sj1 line 9, record 22`.
    pub fn locate(&self, json_path: &str) -> Option<(usize, u16)> {
        self.sources
            .iter()
            .filter(|(prefix, _, _)| {
                json_path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
                })
            })
            .max_by_key(|(prefix, _, _)| prefix.len())
            .map(|&(_, line, record)| (line, record))
    }
}

/// Reads records that follow the `SJ1` (or `JAHIS10`) line: record `i` of `records` is reported
/// as line `i + 2`, which is where [`parse_records`] found it when given every line after the first.
pub fn from_records(records: &[Record], issue_type: IssueType) -> Result<Parsed, Vec<Sj1Error>> {
    let numbered: Vec<(usize, &Record)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (i + 2, r))
        .collect();
    analyse(&numbered, records.len() + 2, issue_type).map_err(finish)
}

/// Parses an SJ1 document: UTF-8, LF line endings, first line `SJ1`, the final newline optional.
/// Every error found is reported at once.
pub fn parse(text: &str, issue_type: IssueType) -> Result<Parsed, Vec<Sj1Error>> {
    // Editors on Windows add a BOM; it is not content, so it is not worth a refusal.
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    if text.is_empty() {
        return Err(vec![Sj1Error::new(
            1,
            None,
            "",
            "BAD_HEADER",
            "the document is empty: an SJ1 document starts with the line SJ1",
        )]);
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let raw: Vec<&str> = body.split('\n').collect();
    let mut errors = Vec::new();

    let with_cr: Vec<usize> = raw
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains('\r'))
        .map(|(i, _)| i + 1)
        .collect();
    if let Some(&first) = with_cr.first() {
        let more = match with_cr.len() - 1 {
            0 => String::new(),
            n => format!(" (as do {n} more lines)"),
        };
        errors.push(Sj1Error::new(
            first,
            None,
            "",
            "CR_LINE_ENDINGS",
            format!(
                "line {first} holds a carriage return{more}: SJ1 lines end with LF only, not CR LF"
            ),
        ));
    }
    // Read on without the line-ending CRs so the other errors are reported too.
    let lines: Vec<(usize, &str)> = raw
        .iter()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .collect();

    let first = lines.first().map_or("", |&(_, l)| l);
    if first != FORMAT_LINE {
        let hint = if first.starts_with("JAHIS") {
            " (this looks like the text of a JAHIS 2-D code, which is Shift_JIS with CR LF)"
        } else {
            ""
        };
        errors.push(Sj1Error::new(
            1,
            None,
            "",
            "BAD_HEADER",
            format!("the first line must be SJ1; got \"{}\"{hint}", shown(first)),
        ));
        // Whatever follows is not known to be SJ1: listing its "errors" would only be noise.
        return Err(finish(errors));
    }

    let mut records = Vec::with_capacity(lines.len());
    for &(line, content) in lines.get(1..).unwrap_or_default() {
        match parse_line(line, content) {
            Ok(record) => records.push((line, record)),
            Err(e) => errors.push(e),
        }
    }
    let numbered: Vec<(usize, &Record)> = records.iter().map(|(l, r)| (*l, r)).collect();
    match analyse(&numbered, lines.len() + 1, issue_type) {
        Ok(parsed) if errors.is_empty() => Ok(parsed),
        Ok(_) => Err(finish(errors)),
        Err(more) => {
            errors.extend(more);
            Err(finish(errors))
        }
    }
}

/// ASCII digits only (no sign, no spaces), short enough for a u64.
fn whole_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `123`, `0.25`: digits with at most one decimal point between digits, and few enough digits
/// that the decimal holds them exactly instead of rounding.
fn decimal_number(s: &str) -> Option<Decimal> {
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if s.len() > 28 || !digits(int) || !digits(frac) {
        return None;
    }
    s.parse().ok()
}

fn ymd_date(s: &str) -> Option<Date> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i16 = s.get(..4)?.parse().ok()?;
    let month: i8 = s.get(4..6)?.parse().ok()?;
    let day: i8 = s.get(6..)?.parse().ok()?;
    Date::new(year, month, day).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Header,
    Rp,
    Drug,
}

/// How a record number is read: its name and field names as in the JAHIS table.
struct Spec {
    name: &'static str,
    fields: &'static [&'static str],
    /// Fields a record must have; trailing optional ones may be left off.
    min: usize,
    /// A modelled record may not have more fields than it names: an extra field is almost always an
    /// ASCII comma written inside a text, which would otherwise shift every later field.
    modelled: bool,
    repeatable: bool,
    level: Level,
}

fn spec(no: u16) -> Option<Spec> {
    use Level::{Drug, Header, Rp};
    let modelled =
        |name, fields: &'static [&'static str], min, repeatable, level| -> Option<Spec> {
            Some(Spec {
                name,
                fields,
                min,
                modelled: true,
                repeatable,
                level,
            })
        };
    match no {
        1 => modelled(
            "医療機関",
            &["コード種別", "コード", "都道府県", "名称"],
            4,
            false,
            Header,
        ),
        2 => modelled("所在地", &["郵便番号", "住所"], 2, false, Header),
        3 => modelled("電話", &["電話", "FAX", "その他"], 1, false, Header),
        4 => modelled("診療科", &["種別", "コード", "名称"], 3, false, Header),
        5 => modelled("医師", &["コード", "カナ", "漢字"], 3, false, Header),
        11 => modelled(
            "患者氏名",
            &["患者コード", "漢字", "カナ"],
            2,
            false,
            Header,
        ),
        12 => modelled("性別", &["性別"], 1, false, Header),
        13 => modelled("生年月日", &["生年月日"], 1, false, Header),
        21 => modelled("保険種別", &["保険種別"], 1, false, Header),
        22 => modelled("保険者番号", &["保険者番号"], 1, false, Header),
        23 => modelled(
            "記号番号",
            &["記号", "番号", "被保険者/被扶養者", "枝番"],
            4,
            false,
            Header,
        ),
        24 => modelled("負担・給付率", &["負担率", "給付率"], 1, false, Header),
        27 => modelled("第一公費", &["負担者番号", "受給者番号"], 1, false, Header),
        28 => modelled("第二公費", &["負担者番号", "受給者番号"], 1, false, Header),
        29 => modelled("第三公費", &["負担者番号", "受給者番号"], 1, false, Header),
        51 => modelled("交付年月日", &["交付年月日"], 1, false, Header),
        52 => modelled("使用期限", &["使用期限"], 1, false, Header),
        64 => modelled("リフィル", &["総使用回数"], 1, false, Header),
        81 => modelled("備考", &["連番", "種別", "内容"], 3, true, Header),
        82 => modelled("処方箋番号", &["種別", "引換番号"], 2, false, Header),
        101 => modelled(
            "剤形",
            &["RP番号", "剤形区分", "剤形名称", "調剤数量"],
            4,
            false,
            Rp,
        ),
        111 => modelled(
            "用法",
            &[
                "RP番号",
                "用法コード種別",
                "用法コード",
                "用法名称",
                "1日回数",
            ],
            4,
            false,
            Rp,
        ),
        201 => modelled(
            "薬品",
            &[
                "RP番号",
                "RP内連番",
                "情報区分",
                "コード種別",
                "コード",
                "名称",
                "用量",
                "力価",
                "単位",
            ],
            9,
            false,
            Drug,
        ),
        281 => modelled(
            "薬品補足",
            &["RP番号", "RP内連番", "補足連番", "区分", "内容"],
            4,
            true,
            Drug,
        ),
        _ => unmodelled(no),
    }
}

/// Records of the JAHIS ranges the relay does not model: accepted, placed in order, ignored.
fn unmodelled(no: u16) -> Option<Spec> {
    let name = match no {
        14 => "一部負担区分",
        62 => "残薬確認",
        181 => "用法補足",
        _ => "",
    };
    let (fields, level): (&'static [&'static str], Level) = match no {
        1..=99 => (&[], Level::Header),
        101..=199 => (&["RP番号"], Level::Rp),
        201..=299 => (&["RP番号", "RP内連番"], Level::Drug),
        _ => return None,
    };
    Some(Spec {
        name,
        min: fields.len(),
        fields,
        modelled: false,
        repeatable: true,
        level,
    })
}

/// Where a record belongs in JAHIS order; records must come with non-decreasing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// 0 header, 1 RPs.
    section: u8,
    rp: u64,
    /// 0 for the RP's own records (1xx), the RP内連番 for drug records (2xx).
    drug: u64,
    no: u16,
}

/// One record being read: its fields, named by its [`Spec`], and where errors go.
struct Reader<'a> {
    errors: &'a mut Vec<Sj1Error>,
    line: usize,
    no: u16,
    spec: &'a Spec,
    fields: &'a [String],
}

impl<'a> Reader<'a> {
    fn text(&self, i: usize) -> &'a str {
        self.fields.get(i).map_or("", String::as_str)
    }

    fn opt_text(&self, i: usize) -> Option<String> {
        Some(self.text(i))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn field_name(&self, i: usize) -> &'static str {
        self.spec.fields.get(i).copied().unwrap_or("")
    }

    fn fail(&mut self, i: usize, code: &'static str, message: impl Into<String>) {
        let field = self.field_name(i);
        self.errors.push(Sj1Error::new(
            self.line,
            Some(self.no),
            field,
            code,
            message,
        ));
    }

    /// TRUNCATED or TOO_MANY_FIELDS; true when the fields can be read by position.
    fn check_count(&mut self) -> bool {
        let n = self.fields.len();
        if n < self.spec.min {
            let missing = self.spec.fields.get(n..self.spec.min).unwrap_or_default();
            self.fail(
                n,
                "TRUNCATED",
                format!(
                    "record {} ({}) ends after {n} fields; missing: {}",
                    self.no,
                    self.spec.name,
                    missing.join(", ")
                ),
            );
            return false;
        }
        if self.spec.modelled && n > self.spec.fields.len() {
            let (line, no, name, count) =
                (self.line, self.no, self.spec.name, self.spec.fields.len());
            self.errors.push(Sj1Error::new(
                line,
                Some(no),
                name,
                "TOO_MANY_FIELDS",
                format!(
                    "record {no} ({name}) has {n} fields, not {count}: a comma inside a text must be written as the full-width comma ，"
                ),
            ));
            return false;
        }
        true
    }

    fn whole(&mut self, i: usize) -> Option<u64> {
        let value = self.text(i);
        let n = whole_number(value);
        if n.is_none() {
            let name = self.field_name(i);
            self.fail(
                i,
                "FORMAT",
                format!(
                    "{name} must be a whole number in ASCII digits; got \"{}\"",
                    shown(value)
                ),
            );
        }
        n
    }

    fn small<T: TryFrom<u64>>(&mut self, i: usize) -> Option<T> {
        let n = self.whole(i)?;
        let converted = T::try_from(n).ok();
        if converted.is_none() {
            let name = self.field_name(i);
            self.fail(i, "FORMAT", format!("{name} {n} is out of range"));
        }
        converted
    }

    /// RP番号 and RP内連番: counted from 1. Not reported when the field is absent (TRUNCATED is).
    fn position(&mut self, i: usize) -> Option<u64> {
        if i >= self.fields.len() {
            return None;
        }
        let n = self.whole(i)?;
        if n == 0 {
            let name = self.field_name(i);
            self.fail(i, "FORMAT", format!("{name} counts from 1"));
            return None;
        }
        Some(n)
    }

    fn date(&mut self, i: usize) -> Option<Date> {
        let value = self.text(i);
        let d = ymd_date(value);
        if d.is_none() {
            let name = self.field_name(i);
            self.fail(
                i,
                "FORMAT",
                format!(
                    "{name} must be a calendar date written YYYYMMDD; got \"{}\"",
                    shown(value)
                ),
            );
        }
        d
    }

    fn decimal(&mut self, i: usize) -> Option<Decimal> {
        let value = self.text(i);
        let d = decimal_number(value);
        if d.is_none() {
            let name = self.field_name(i);
            self.fail(
                i,
                "FORMAT",
                format!(
                    "{name} must be a number such as 2, 0.25 or 1.5 in ASCII digits; got \"{}\"",
                    shown(value)
                ),
            );
        }
        d
    }

    /// One of a fixed set of codes; `allowed` describes them for the message.
    fn pick<T: Copy>(&mut self, i: usize, options: &[(&str, T)], allowed: &str) -> Option<T> {
        let value = self.text(i);
        let found = options.iter().find(|(code, _)| *code == value).map(|o| o.1);
        if found.is_none() {
            let name = self.field_name(i);
            self.fail(
                i,
                "FORMAT",
                format!("{name} must be {allowed}; got \"{}\"", shown(value)),
            );
        }
        found
    }
}

#[derive(Default)]
struct Header {
    /// Record number → line of its first occurrence.
    seen: BTreeMap<u16, usize>,
    institution: Option<(FacilityCode, String)>,
    department: Option<String>,
    doctor: Option<DoctorDraft>,
    patient: Option<(String, Option<String>)>,
    sex: Option<Sex>,
    birth_date: Option<Date>,
    insurer_number: Option<String>,
    ids: Option<Ids>,
    copay_rate: Option<u8>,
    public_expenses: BTreeMap<u16, PublicExpenseDraft>,
    issued_on: Option<Date>,
    valid_until: Option<Date>,
    refill_count: Option<u8>,
    remarks: Vec<String>,
    exchange_number: Option<String>,
}

/// Record 23.
struct Ids {
    symbol: Option<String>,
    number: String,
    relationship: Relationship,
    branch: String,
}

struct RpAcc {
    first_line: usize,
    line_101: Option<usize>,
    line_111: Option<usize>,
    form: Option<(DosageForm, i64)>,
    usage: Option<UsageDraft>,
    drugs: BTreeMap<u64, DrugAcc>,
}

impl RpAcc {
    fn new(first_line: usize) -> Self {
        Self {
            first_line,
            line_101: None,
            line_111: None,
            form: None,
            usage: None,
            drugs: BTreeMap::new(),
        }
    }
}

struct DrugAcc {
    first_line: usize,
    line_201: Option<usize>,
    drug: Option<DrugDraft>,
    no_substitution: bool,
}

fn read_header(r: &mut Reader, h: &mut Header) {
    match r.no {
        1 => {
            let (kind, code, prefecture, name) = (r.text(0), r.text(1), r.text(2), r.text(3));
            let mut ok = true;
            if !matches!(kind, "1" | "3" | "6") {
                r.fail(
                    0,
                    "FORMAT",
                    format!(
                        "コード種別 (点数表) must be 1 医科, 3 歯科 or 6 訪問看護; got \"{}\"",
                        shown(kind)
                    ),
                );
                ok = false;
            }
            if code.len() != 7 || !code.bytes().all(|b| b.is_ascii_digit()) {
                r.fail(
                    1,
                    "FORMAT",
                    format!(
                        "コード must be the 7 digits after 都道府県 and 点数表; got \"{}\"",
                        shown(code)
                    ),
                );
                ok = false;
            }
            let pref_ok = prefecture.len() == 2
                && whole_number(prefecture).is_some_and(|p| (1..=47).contains(&p) || p == 99);
            if !pref_ok {
                r.fail(
                    2,
                    "FORMAT",
                    format!(
                        "都道府県 must be 2 digits, 01–47 (99 for test facilities); got \"{}\"",
                        shown(prefecture)
                    ),
                );
                ok = false;
            }
            let name = name.trim();
            if name.is_empty() {
                r.fail(3, "REQUIRED", "名称 (institution name) must not be empty");
                ok = false;
            } else if name.chars().any(char::is_control) {
                // Rendering writes a control character as a space, so a name of only control
                // characters would come back as an empty one (a fuzz/ finding).
                r.fail(
                    3,
                    "FORMAT",
                    "名称 (institution name) must not contain control characters",
                );
                ok = false;
            }
            if ok {
                // The check digit runs over 都道府県 and 点数表 too, so the full code is rebuilt.
                match FacilityCode::parse(&format!("{prefecture}{kind}{code}")) {
                    Ok(c) => h.institution = Some((c, name.to_string())),
                    Err(e) => r.fail(1, e.code, e.message),
                }
            }
        }
        4 => {
            // 種別 2 comes with a 診療科コード (the public test prescription has `4,2,01,内科`);
            // only the name is kept.
            let kind = r.pick(0, &[("1", ()), ("2", ())], "1 (名称のみ) or 2 (コード付き)");
            if kind.is_some() {
                h.department = Some(r.text(2).to_string());
            }
        }
        5 => {
            h.doctor = Some(DoctorDraft {
                name: r.text(2).to_string(),
                name_kana: r.opt_text(1),
            });
        }
        11 => h.patient = Some((r.text(1).to_string(), r.opt_text(2))),
        12 => {
            h.sex = r.pick(
                0,
                &[("1", Sex::Male), ("2", Sex::Female)],
                "1 (男) or 2 (女)",
            );
        }
        13 => h.birth_date = r.date(0),
        21 => {
            // The insurer number decides the kind; 21 is only checked to be one the relay serves.
            let value = r.text(0);
            if !matches!(value, "1" | "2" | "7") {
                if whole_number(value).is_some() {
                    r.fail(
                        0,
                        "UNSUPPORTED",
                        format!(
                            "保険種別 {value} is not handled: only 1 医保, 2 国保 and 7 後期高齢 prescriptions can be registered"
                        ),
                    );
                } else {
                    r.whole(0);
                }
            }
        }
        22 => h.insurer_number = Some(r.text(0).to_string()),
        23 => {
            let relationship = r.pick(
                2,
                &[("1", Relationship::Insured), ("2", Relationship::Dependent)],
                "1 (被保険者) or 2 (被扶養者)",
            );
            if let Some(relationship) = relationship {
                h.ids = Some(Ids {
                    symbol: r.opt_text(0),
                    number: r.text(1).to_string(),
                    relationship,
                    branch: r.text(3).to_string(),
                });
            }
        }
        24 => {
            let copay: Option<u8> = r.small(0);
            let benefit = match r.text(1) {
                "" => None,
                _ => r.whole(1),
            };
            if let (Some(c), Some(b)) = (copay, benefit)
                && u64::from(c) + b != 100
            {
                r.fail(
                    1,
                    "INCONSISTENT",
                    format!("負担率 {c} and 給付率 {b} must add up to 100"),
                );
            }
            h.copay_rate = copay;
        }
        27..=29 => {
            h.public_expenses.insert(
                r.no,
                PublicExpenseDraft {
                    payer_number: r.text(0).to_string(),
                    recipient_number: r.opt_text(1),
                },
            );
        }
        51 => h.issued_on = r.date(0),
        52 => h.valid_until = r.date(0),
        64 => h.refill_count = r.small(0),
        81 => {
            r.whole(0);
            r.whole(1);
            h.remarks.push(r.text(2).to_string());
        }
        82 => {
            let kind = r.pick(0, &[("1", ())], "1 (引換番号)");
            match ExchangeNumber::parse(r.text(1)) {
                Ok(n) if kind.is_some() => h.exchange_number = Some(n.as_str().to_string()),
                Ok(_) => {}
                Err(e) => r.fail(1, e.code, e.message),
            }
        }
        // 2 所在地 and 3 電話 come from the facility registry; the rest is not modelled.
        _ => {}
    }
}

fn read_rp(r: &mut Reader, rp: &mut RpAcc) {
    match r.no {
        101 => {
            let form = r.pick(
                1,
                &[
                    ("1", DosageForm::Oral),
                    ("2", DosageForm::AsNeeded),
                    ("3", DosageForm::External),
                    ("4", DosageForm::OralDrops),
                    ("5", DosageForm::Injection),
                    ("6", DosageForm::Material),
                ],
                "1 内服, 2 頓服, 3 外用, 4 内服滴剤, 5 注射 or 6 医療材料 (9 不明 cannot be registered)",
            );
            let quantity = r.small::<i64>(3);
            if let (Some(form), Some(quantity)) = (form, quantity) {
                rp.form = Some((form, quantity));
            }
        }
        111 => {
            let code = match r.text(1) {
                "1" => Some(None),
                "3" => {
                    let code = r.text(2);
                    if code.is_empty() {
                        r.fail(
                            2,
                            "FORMAT",
                            "用法コード種別 3 needs the 16-character 電子処方箋用法マスタ code",
                        );
                        None
                    } else {
                        Some(Some(code.to_string()))
                    }
                }
                other => {
                    r.fail(
                        1,
                        "FORMAT",
                        format!(
                            "用法コード種別 must be 1 (コードなし) or 3 (電子処方箋用法マスタ); got \"{}\"",
                            shown(other)
                        ),
                    );
                    None
                }
            };
            let times = match r.text(4) {
                "" => Some(None),
                _ => r.small::<i64>(4).map(Some),
            };
            if let (Some(code), Some(times_per_day)) = (code, times) {
                rp.usage = Some(UsageDraft {
                    code,
                    text: r.text(3).to_string(),
                    times_per_day,
                });
            }
        }
        _ => {}
    }
}

fn read_drug(r: &mut Reader, drug: &mut DrugAcc) {
    match r.no {
        201 => {
            r.whole(2);
            let system = r.pick(
                3,
                &[
                    ("2", CodeSystem::Receipt),
                    ("4", CodeSystem::Yj),
                    ("7", CodeSystem::Generic),
                ],
                "2 (レセ電コード), 4 (薬価基準収載医薬品コード) or 7 (一般名コード)",
            );
            let dose = r.decimal(6);
            let potency_ok = match r.text(7) {
                "1" => true,
                "2" => {
                    r.fail(
                        7,
                        "UNSUPPORTED",
                        "力価 2 (dose given as potency) is not handled: give the dose in 薬価単位 (力価 1)",
                    );
                    false
                }
                _ => r.pick(7, &[("1", ())], "1 (薬価単位)").is_some(),
            };
            if let (Some(code_system), Some(dose), true) = (system, dose, potency_ok) {
                drug.drug = Some(DrugDraft {
                    code_system,
                    code: r.text(4).to_string(),
                    name: r.text(5).to_string(),
                    dose: Dose(dose),
                    unit: r.text(8).to_string(),
                    no_substitution: false,
                });
            }
        }
        281 => {
            r.whole(2);
            if r.whole(3) == Some(3) {
                drug.no_substitution = true;
            }
        }
        _ => {}
    }
}

const MANDATORY_HEADER: [(u16, &str); 7] = [
    (1, "医療機関"),
    (11, "患者氏名"),
    (12, "性別"),
    (13, "生年月日"),
    (22, "保険者番号"),
    (23, "記号番号"),
    (51, "交付年月日"),
];

/// Reads numbered records into a draft, reporting every problem found. `end_line` is the line
/// after the last, where records missing at the end are reported.
fn analyse(
    records: &[(usize, &Record)],
    end_line: usize,
    issue_type: IssueType,
) -> Result<Parsed, Vec<Sj1Error>> {
    let mut errors = Vec::new();
    let mut h = Header::default();
    let mut rps: BTreeMap<u64, RpAcc> = BTreeMap::new();
    // Every placed record, to say where a missing record was expected.
    let mut placed: Vec<(Key, usize)> = Vec::with_capacity(records.len());
    let mut prev: Option<(Key, usize, u16)> = None;
    // RP and drug records whose RP番号 or RP内連番 could not be read: already reported, and
    // they may be exactly the records that would otherwise be reported missing.
    let mut unplaced = std::collections::BTreeSet::new();

    for &(line, record) in records {
        let no = record.no;
        let Some(spec) = spec(no) else {
            errors.push(unknown_record(line, Some(no), &no.to_string()));
            continue;
        };
        let mut r = Reader {
            errors: &mut errors,
            line,
            no,
            spec: &spec,
            fields: &record.fields,
        };
        let complete = r.check_count();
        let key = match spec.level {
            Level::Header => Some(Key {
                section: 0,
                rp: 0,
                drug: 0,
                no,
            }),
            Level::Rp => r.position(0).map(|rp| Key {
                section: 1,
                rp,
                drug: 0,
                no,
            }),
            Level::Drug => match (r.position(0), r.position(1)) {
                (Some(rp), Some(drug)) => Some(Key {
                    section: 1,
                    rp,
                    drug,
                    no,
                }),
                _ => None,
            },
        };
        let Some(key) = key else {
            unplaced.insert(no);
            continue;
        };

        if let Some((prev_key, prev_line, prev_no)) = prev {
            let place = match spec.level {
                Level::Header => String::new(),
                Level::Rp => format!(" (RP {})", key.rp),
                Level::Drug => format!(" (RP {}, drug {})", key.rp, key.drug),
            };
            if key < prev_key {
                errors.push(Sj1Error::new(
                    line,
                    Some(no),
                    spec.name,
                    "OUT_OF_ORDER",
                    format!(
                        "record {no}{place} must come before record {prev_no} on line {prev_line}: JAHIS order is header records 1–82, then for each RP its 101–181 records followed by its drugs' 201–281 records"
                    ),
                ));
            } else if key == prev_key && !spec.repeatable {
                errors.push(Sj1Error::new(
                    line,
                    Some(no),
                    spec.name,
                    "DUPLICATE_RECORD",
                    format!("record {no}{place} appears twice (also on line {prev_line})"),
                ));
            }
        }
        prev = Some((key, line, no));
        placed.push((key, line));

        let mut r = Reader {
            errors: &mut errors,
            line,
            no,
            spec: &spec,
            fields: &record.fields,
        };
        // A record is read once; later copies are already reported as duplicates or out of order.
        match spec.level {
            Level::Header => {
                let first = !h.seen.contains_key(&no);
                h.seen.entry(no).or_insert(line);
                if complete && (first || spec.repeatable) {
                    read_header(&mut r, &mut h);
                }
            }
            Level::Rp => {
                let rp = rps.entry(key.rp).or_insert_with(|| RpAcc::new(line));
                let first = match no {
                    101 => *rp.line_101.get_or_insert(line) == line,
                    111 => *rp.line_111.get_or_insert(line) == line,
                    _ => true,
                };
                if complete && first {
                    read_rp(&mut r, rp);
                }
            }
            Level::Drug => {
                let rp = rps.entry(key.rp).or_insert_with(|| RpAcc::new(line));
                let drug = rp.drugs.entry(key.drug).or_insert_with(|| DrugAcc {
                    first_line: line,
                    line_201: None,
                    drug: None,
                    no_substitution: false,
                });
                let first = no != 201 || *drug.line_201.get_or_insert(line) == line;
                if complete && first {
                    read_drug(&mut r, drug);
                }
            }
        }
    }

    // Where a missing record should have been: at the record that comes next in JAHIS order.
    // Sorted once and searched, so that thousands of incomplete RPs cost no quadratic scan.
    placed.sort();
    let line_after = |k: Key| {
        let i = placed.partition_point(|(placed_key, _)| *placed_key <= k);
        placed.get(i).map_or(end_line, |&(_, l)| l)
    };
    let header_key = |no| Key {
        section: 0,
        rp: 0,
        drug: 0,
        no,
    };
    for (no, name) in MANDATORY_HEADER {
        if !h.seen.contains_key(&no) {
            errors.push(Sj1Error::new(
                line_after(header_key(no)),
                Some(no),
                name,
                "MISSING_RECORD",
                format!("record {no} ({name}) is required"),
            ));
        }
    }
    for (no, before, name) in [(28, 27, "第一公費"), (29, 28, "第二公費")] {
        if let Some(&line) = h.seen.get(&no)
            && !h.seen.contains_key(&before)
        {
            errors.push(Sj1Error::new(
                line,
                Some(before),
                name,
                "MISSING_RECORD",
                format!("record {no} needs record {before} ({name}) before it"),
            ));
        }
    }
    if rps.is_empty() && unplaced.is_empty() {
        errors.push(Sj1Error::new(
            end_line,
            Some(101),
            "剤形",
            "MISSING_RECORD",
            "no RP: a prescription needs at least one RP (records 101, 111 and 201)",
        ));
    }
    let mut expected_rp = 1u64;
    for (&n, rp) in &rps {
        if n != expected_rp && unplaced.is_empty() {
            errors.push(Sj1Error::new(
                rp.first_line,
                Some(101),
                "RP番号",
                "MISSING_RECORD",
                format!("RP {expected_rp} has no records: RP numbers run 1, 2, 3, … without gaps"),
            ));
        }
        expected_rp = n.saturating_add(1);
        let rp_key = |no| Key {
            section: 1,
            rp: n,
            drug: 0,
            no,
        };
        for (line, no, name) in [(rp.line_101, 101, "剤形"), (rp.line_111, 111, "用法")] {
            if line.is_none() && !unplaced.contains(&no) {
                errors.push(Sj1Error::new(
                    line_after(rp_key(no)),
                    Some(no),
                    name,
                    "MISSING_RECORD",
                    format!("RP {n} has no record {no} ({name})"),
                ));
            }
        }
        if rp.drugs.is_empty() && !unplaced.contains(&201) {
            errors.push(Sj1Error::new(
                line_after(rp_key(u16::MAX)),
                Some(201),
                "薬品",
                "MISSING_RECORD",
                format!("RP {n} has no drug (record 201)"),
            ));
        }
        let mut expected_drug = 1u64;
        for (&d, drug) in &rp.drugs {
            if d != expected_drug && !unplaced.contains(&201) {
                errors.push(Sj1Error::new(
                    drug.first_line,
                    Some(201),
                    "RP内連番",
                    "MISSING_RECORD",
                    format!(
                        "drug {expected_drug} of RP {n} has no records: RP内連番 runs 1, 2, 3, … without gaps"
                    ),
                ));
            }
            expected_drug = d.saturating_add(1);
            if drug.line_201.is_none() && !unplaced.contains(&201) {
                errors.push(Sj1Error::new(
                    line_after(Key {
                        section: 1,
                        rp: n,
                        drug: d,
                        no: 200,
                    }),
                    Some(201),
                    "薬品",
                    "MISSING_RECORD",
                    format!("drug {d} of RP {n} has supplements but no record 201 (薬品)"),
                ));
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    build(h, rps, issue_type).ok_or_else(|| {
        // Every way to get here without a value has reported an error above; this only keeps
        // a bug from turning into a panic.
        vec![Sj1Error::new(
            end_line,
            None,
            "",
            "MISSING_RECORD",
            "a mandatory record could not be read",
        )]
    })
}

fn build(h: Header, rps: BTreeMap<u64, RpAcc>, issue_type: IssueType) -> Option<Parsed> {
    let (institution_code, institution_name) = h.institution?;
    let (name, name_kana) = h.patient?;
    let ids = h.ids?;
    let line_of = |no: u16| h.seen.get(&no).copied();

    let mut sources: Vec<(String, usize, u16)> = Vec::new();
    let mut source = |path: String, line: Option<usize>, no: u16| {
        if let Some(line) = line {
            sources.push((path, line, no));
        }
    };
    for (path, no) in [
        ("patient.name", 11),
        ("patient.name_kana", 11),
        ("patient.sex", 12),
        ("patient.birth_date", 13),
        ("insurance", 23),
        ("insurance.insurer_number", 22),
        ("insurance.copay_rate", 24),
        ("public_expenses", 27),
        ("doctor", 5),
        ("department", 4),
        ("issued_on", 51),
        ("refill_count", 64),
        ("remarks", 81),
    ] {
        source(path.to_string(), line_of(no), no);
    }
    // Without 52 the validity is derived from 51.
    match line_of(52) {
        Some(line) => source("valid_until".into(), Some(line), 52),
        None => source("valid_until".into(), line_of(51), 51),
    }
    for (i, no) in [27u16, 28, 29].into_iter().enumerate() {
        source(format!("public_expenses[{i}]"), line_of(no), no);
    }

    let mut drafts = Vec::with_capacity(rps.len());
    for (i, rp) in rps.into_values().enumerate() {
        let (dosage_form, quantity) = rp.form?;
        let usage = rp.usage?;
        source(format!("rps[{i}]"), rp.line_101, 101);
        source(format!("rps[{i}].usage"), rp.line_111, 111);
        let mut drugs = Vec::with_capacity(rp.drugs.len());
        for (j, acc) in rp.drugs.into_values().enumerate() {
            let mut drug = acc.drug?;
            drug.no_substitution = acc.no_substitution;
            source(format!("rps[{i}].drugs[{j}]"), acc.line_201, 201);
            drugs.push(drug);
        }
        drafts.push(RpDraft {
            dosage_form,
            quantity,
            usage,
            drugs,
        });
    }

    let remarks = (!h.remarks.is_empty()).then(|| h.remarks.join("\n"));
    let draft = PrescriptionDraft {
        issue_type,
        patient: PatientDraft {
            name,
            name_kana,
            sex: h.sex?,
            birth_date: h.birth_date?,
        },
        insurance: InsuranceDraft {
            insurer_number: h.insurer_number?,
            symbol: ids.symbol,
            number: ids.number,
            relationship: ids.relationship,
            branch: ids.branch,
            copay_rate: h.copay_rate,
        },
        public_expenses: h.public_expenses.into_values().collect(),
        doctor: h.doctor,
        department: h.department,
        issued_on: h.issued_on?,
        valid_until: h.valid_until,
        refill_count: h.refill_count,
        remarks,
        rps: drafts,
        check_id: None,
        acknowledge_check_unavailable: false,
    };
    Some(Parsed {
        institution_code,
        institution_name,
        exchange_number: h.exchange_number,
        draft,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::facility::Facility;
    use crate::domain::identifiers::FacilityKind;
    use crate::domain::prescription::Prescription;
    use jiff::civil::date;
    use serde_json::{Value, json};

    /// The decoded public test prescription of domain.md §3.2, verbatim.
    const PUBLIC_TEST: &str = "SJ1
1,1,8000010,99,検証用病院
4,2,01,内科
5,000000000000001,ｲｼｬｻﾌﾞﾛｳ,医者　三郎
11,000000000000001,電処　有効五二,ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ
12,2
13,20110101
21,1
22,31130842
23,2022,010001,1,01
51,20220907
82,1,1000000000000001
101,1,1,,14
111,1,3,1011100000000000,１日１回就寝前　服用,1
201,1,1,1,2,622688101,ミニリンメルトＯＤ錠２５μｇ,2,1,錠
";

    fn today() -> Date {
        date(2026, 11, 21)
    }

    fn facility(code: &str, name: &str, address: Option<&str>, phone: Option<&str>) -> Facility {
        Facility {
            code: FacilityCode::parse(code).expect("valid facility code"),
            kind: FacilityKind::Clinic,
            name: name.to_string(),
            address: address.map(str::to_string),
            phone: phone.map(str::to_string),
            email: "clinic@example.jp".to_string(),
            fax_email: None,
            accepts_e_prescriptions: true,
            municipality_code: None,
        }
    }

    fn validated(v: Value, today: Date) -> Prescription {
        let draft: PrescriptionDraft = serde_json::from_value(v).expect("draft JSON");
        draft
            .validate(today)
            .unwrap_or_else(|e| panic!("invalid draft: {e:?}"))
    }

    fn dose(s: &str) -> Dose {
        Dose(s.parse().expect("decimal"))
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sj1")
            .join(name)
    }

    struct Golden {
        file: &'static str,
        facility: Facility,
        prescription: Prescription,
        exchange: Option<&'static str>,
        today: Date,
    }

    fn goldens() -> Vec<Golden> {
        let refill = validated(
            json!({
                "issue_type": "electronic",
                "patient": {"name": "髙橋 𠮷子", "name_kana": "ﾀｶﾊｼ ﾖｼｺ", "sex": "female", "birth_date": "1980-04-01"},
                "insurance": {"insurer_number": "138008", "symbol": "１２３", "number": "4567",
                              "relationship": "insured", "branch": "01", "copay_rate": 30},
                "doctor": {"name": "医者　三郎", "name_kana": "ｲｼｬ ｻﾌﾞﾛｳ"},
                "department": "内科",
                "issued_on": "2026-11-20",
                "valid_until": "2026-11-27",
                "refill_count": 3,
                "rps": [
                    {"dosage_form": "oral", "quantity": 28, "usage": {"text": "1日1回朝食後", "times_per_day": 1},
                     "drugs": [{"code_system": "yj", "code": "2171022F2041", "name": "アムロジン錠５ｍｇ",
                                "dose": 1, "unit": "錠", "no_substitution": true}]},
                    {"dosage_form": "oral", "quantity": 28,
                     "usage": {"code": "1011100000000000", "text": "１日１回就寝前　服用", "times_per_day": 1},
                     "drugs": [{"code_system": "receipt", "code": "622688101", "name": "ミニリンメルトＯＤ錠２５μｇ",
                                "dose": 2, "unit": "錠"}]}
                ]
            }),
            today(),
        );
        let public_expenses = validated(
            json!({
                "issue_type": "paper_with_exchange_number",
                "patient": {"name": "山﨑 德", "sex": "male", "birth_date": "1945-12-31"},
                "insurance": {"insurer_number": "39131156", "number": "12345678", "relationship": "insured",
                              "branch": "00", "copay_rate": 10},
                "public_expenses": [{"payer_number": "54136015", "recipient_number": "1234566"},
                                    {"payer_number": "21130018"}],
                "issued_on": "2026-11-21",
                "remarks": "残薬調整のため, 日数を短縮\n次回受診 12月5日",
                "rps": [{"dosage_form": "oral", "quantity": 7, "usage": {"text": "1日2回朝夕食後", "times_per_day": 2},
                         "drugs": [{"code_system": "generic", "code": "2325003B2ZZZ", "name": "【般】ファモチジン散２％",
                                    "dose": 0.4, "unit": "g"}]}]
            }),
            today(),
        );
        let mut three_rps = validated(
            json!({
                "issue_type": "electronic",
                "patient": {"name": "鈴木 一郎", "name_kana": "ｽｽﾞｷ ｲﾁﾛｳ", "sex": "male", "birth_date": "1955-03-15"},
                "insurance": {"insurer_number": "01130012", "symbol": "10", "number": "2345",
                              "relationship": "dependent", "branch": "02"},
                "doctor": {"name": "佐藤 花子"},
                "department": "整形外科",
                "issued_on": "2026-11-21",
                "rps": [
                    {"dosage_form": "oral", "quantity": 14, "usage": {"text": "1日2回朝夕食後", "times_per_day": 2},
                     "drugs": [{"code_system": "yj", "code": "1124001F1022", "name": "ユーロジン１ｍｇ錠", "dose": 0.25, "unit": "錠"},
                               {"code_system": "yj", "code": "2325003B2029", "name": "ガスター散２％", "dose": 1.5,
                                "unit": "g", "no_substitution": true}]},
                    {"dosage_form": "as_needed", "quantity": 10, "usage": {"text": "疼痛時", "times_per_day": 3},
                     "drugs": [{"code_system": "yj", "code": "1141007F1063", "name": "カロナール錠２００", "dose": 2, "unit": "錠"}]},
                    {"dosage_form": "external", "quantity": 1, "usage": {"text": "1日2回 患部に塗布"},
                     "drugs": [{"code_system": "yj", "code": "3339950M1137", "name": "ヒルドイドソフト軟膏０．３％", "dose": 100, "unit": "g"},
                               {"code_system": "yj", "code": "2649735S3020", "name": "ロキソニンテープ１００ｍｇ", "dose": 10, "unit": "枚"}]}
                ]
            }),
            today(),
        );
        // Decimals as a clinic system might hold them: the writer must drop the needless zeros.
        three_rps.rps[0].drugs[0].dose = dose("0.250");
        three_rps.rps[2].drugs[0].dose = dose("100.00");
        three_rps.rps[2].drugs[1].dose = dose("10.0");

        let test_day = date(2022, 9, 8);
        let public_test = parse(PUBLIC_TEST, IssueType::Electronic)
            .expect("public test prescription parses")
            .draft
            .validate(test_day)
            .expect("public test prescription validates");

        vec![
            Golden {
                file: "refill.csv",
                facility: facility(
                    "9918000010",
                    "検証用病院",
                    Some("〒100-0001 東京都千代田区千代田１－１"),
                    Some("03-1234-5678"),
                ),
                prescription: refill,
                exchange: Some("012345"),
                today: today(),
            },
            Golden {
                file: "public_expenses.csv",
                facility: facility(
                    "0110113719",
                    "さっぽろ内科クリニック",
                    Some("北海道札幌市中央区北一条西２丁目"),
                    None,
                ),
                prescription: public_expenses,
                exchange: None,
                today: today(),
            },
            Golden {
                file: "three_rps.csv",
                facility: facility("9918000010", "検証用病院", None, Some("03-1234-5678")),
                prescription: three_rps,
                exchange: Some("000123"),
                today: today(),
            },
            Golden {
                file: "public_test.csv",
                facility: facility("9918000010", "検証用病院", None, None),
                prescription: public_test,
                exchange: Some("1000000000000001"),
                today: test_day,
            },
        ]
    }

    /// render → parse → validate, checking what is not part of the prescription on the way, and
    /// that rendering the result again gives the same bytes.
    fn round_trip(doc: &DocumentInput, today: Date) -> Prescription {
        let text = render(doc);
        let parsed = parse(&text, doc.prescription.issue_type)
            .unwrap_or_else(|e| panic!("rendered document does not parse: {e:#?}\n{text}"));
        assert_eq!(parsed.institution_code, doc.institution.code);
        assert_eq!(parsed.institution_name, doc.institution.name);
        assert_eq!(parsed.exchange_number.as_deref(), doc.exchange_number);
        let back = parsed
            .draft
            .validate(today)
            .unwrap_or_else(|e| panic!("parsed draft is invalid: {e:#?}\n{text}"));
        let again = render(&DocumentInput {
            prescription: &back,
            ..*doc
        });
        assert_eq!(again, text, "a re-rendered document must be byte-identical");
        back
    }

    /// What a round trip gives for texts holding ASCII commas: SJ1 has no quoting.
    fn full_width_commas(v: &mut Value) {
        match v {
            Value::String(s) => *s = s.replace(',', "，"),
            Value::Array(items) => items.iter_mut().for_each(full_width_commas),
            Value::Object(map) => map.values_mut().for_each(full_width_commas),
            _ => {}
        }
    }

    #[test]
    fn public_test_prescription_parses_to_exactly_its_fields() {
        let parsed = parse(PUBLIC_TEST, IssueType::Electronic).expect("parses");
        assert_eq!(parsed.institution_code.as_str(), "9918000010");
        assert_eq!(parsed.institution_name, "検証用病院");
        assert_eq!(parsed.exchange_number.as_deref(), Some("1000000000000001"));
        let d = &parsed.draft;
        assert_eq!(d.issue_type, IssueType::Electronic);
        assert_eq!(d.department.as_deref(), Some("内科"));
        let doctor = d.doctor.as_ref().expect("doctor");
        assert_eq!(doctor.name, "医者　三郎");
        assert_eq!(doctor.name_kana.as_deref(), Some("ｲｼｬｻﾌﾞﾛｳ"));
        assert_eq!(d.patient.name, "電処　有効五二");
        assert_eq!(d.patient.name_kana.as_deref(), Some("ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ"));
        assert_eq!(d.patient.sex, Sex::Female);
        assert_eq!(d.patient.birth_date, date(2011, 1, 1));
        let ins = &d.insurance;
        assert_eq!(ins.insurer_number, "31130842");
        assert_eq!(ins.symbol.as_deref(), Some("2022"));
        assert_eq!(ins.number, "010001");
        // Record 23 says `1`: 被保険者 by the record table.
        assert_eq!(ins.relationship, Relationship::Insured);
        assert_eq!(ins.branch, "01");
        assert_eq!(ins.copay_rate, None);
        assert!(d.public_expenses.is_empty());
        assert_eq!(d.issued_on, date(2022, 9, 7));
        assert_eq!(d.valid_until, None);
        assert_eq!(d.refill_count, None);
        assert_eq!(d.remarks, None);
        assert_eq!(d.check_id, None);
        assert_eq!(d.rps.len(), 1);
        let rp = &d.rps[0];
        assert_eq!(rp.dosage_form, DosageForm::Oral);
        assert_eq!(rp.quantity, 14);
        assert_eq!(rp.usage.code.as_deref(), Some("1011100000000000"));
        assert_eq!(rp.usage.text, "１日１回就寝前　服用");
        assert_eq!(rp.usage.times_per_day, Some(1));
        assert_eq!(rp.drugs.len(), 1);
        let drug = &rp.drugs[0];
        assert_eq!(drug.code_system, CodeSystem::Receipt);
        assert_eq!(drug.code, "622688101");
        assert_eq!(drug.name, "ミニリンメルトＯＤ錠２５μｇ");
        assert_eq!(drug.dose, dose("2"));
        assert_eq!(drug.unit, "錠");
        assert!(!drug.no_substitution);

        let p = d.validate(date(2022, 9, 8)).expect("validates");
        assert_eq!(p.valid_until, date(2022, 9, 10));

        assert_eq!(parsed.locate("insurance.insurer_number"), Some((9, 22)));
        assert_eq!(parsed.locate("insurance.branch"), Some((10, 23)));
        assert_eq!(parsed.locate("rps[0].drugs[0].code"), Some((15, 201)));
        assert_eq!(parsed.locate("rps[0].usage.code"), Some((14, 111)));
        assert_eq!(parsed.locate("rps[0].quantity"), Some((13, 101)));
        assert_eq!(parsed.locate("valid_until"), Some((11, 51)));
        assert_eq!(parsed.locate("rps[1].quantity"), None);
        assert_eq!(parsed.locate("refill_count"), None);
    }

    #[test]
    fn golden_documents_are_byte_exact() {
        for g in goldens() {
            let doc = DocumentInput {
                institution: &g.facility,
                prescription: &g.prescription,
                exchange_number: g.exchange,
            };
            let bytes = std::fs::read(fixture(g.file)).expect("fixture");
            assert!(!bytes.contains(&b'\r'), "{}: LF only", g.file);
            let want = String::from_utf8(bytes).expect("fixture is UTF-8");
            let got = render(&doc);
            for (i, (w, g2)) in want.lines().zip(got.lines()).enumerate() {
                assert_eq!(g2, w, "{} line {}", g.file, i + 1);
            }
            assert_eq!(got, want, "{}", g.file);
        }
    }

    #[test]
    fn golden_documents_round_trip() {
        let mut commas = 0;
        for g in goldens() {
            let doc = DocumentInput {
                institution: &g.facility,
                prescription: &g.prescription,
                exchange_number: g.exchange,
            };
            let back = round_trip(&doc, g.today);
            let original = serde_json::to_value(&g.prescription).expect("json");
            let mut want = original.clone();
            full_width_commas(&mut want);
            commas += usize::from(want != original);
            assert_eq!(
                serde_json::to_value(&back).expect("json"),
                want,
                "{}",
                g.file
            );
        }
        assert_eq!(commas, 1, "one golden prescription carries an ASCII comma");
    }

    #[test]
    fn texts_never_break_a_line_or_a_field() {
        let f = facility("9918000010", "A,B\r\nC", None, Some("03,1\t2"));
        let p = goldens().remove(0).prescription;
        let recs = records(&DocumentInput {
            institution: &f,
            prescription: &p,
            exchange_number: None,
        });
        assert_eq!(recs[0].fields[3], "A，B  C");
        assert_eq!(
            recs[1],
            Record {
                no: 3,
                fields: vec!["03，1 2".into(), String::new(), String::new()]
            }
        );
        assert!(
            recs.iter()
                .flat_map(|r| &r.fields)
                .all(|f| !f.contains([',', '\r', '\n']))
        );
        assert_eq!(
            to_text(&[Record {
                no: 12,
                fields: vec!["2".into()]
            }]),
            "SJ1\n12,2\n"
        );
    }

    #[test]
    fn postal_codes_are_split_off_addresses() {
        assert_eq!(
            split_postal("〒100-0001 東京都千代田区"),
            ("100-0001".to_string(), "東京都千代田区")
        );
        assert_eq!(
            split_postal("〒１００－０００１　東京都"),
            ("100-0001".to_string(), "東京都")
        );
        assert_eq!(split_postal("東京都"), (String::new(), "東京都"));
        assert_eq!(
            split_postal("〒1000001東京"),
            (String::new(), "〒1000001東京")
        );
        assert_eq!(split_postal("〒100-00012"), (String::new(), "〒100-00012"));
        assert_eq!(split_postal("〒"), (String::new(), "〒"));
    }

    #[test]
    fn numbers_are_written_without_needless_zeros() {
        for (raw, want) in [
            ("10.0", "10"),
            ("100", "100"),
            ("0.250", "0.25"),
            ("1.50", "1.5"),
            ("0.001", "0.001"),
        ] {
            assert_eq!(decimal_text(raw.parse().expect("decimal")), want);
        }
        assert_eq!(insurance_kind("138008"), "2");
        assert_eq!(insurance_kind("39131156"), "7");
        assert_eq!(insurance_kind("01130012"), "1");
    }

    // ---------------------------------------------------------------------------------------
    // Property test: a deterministic generator of valid prescriptions.
    // ---------------------------------------------------------------------------------------

    /// xorshift64: deterministic, so a failing case can be replayed by its number.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
        fn digits(&mut self, len: u64) -> String {
            (0..len)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    const NAMES: &[&str] = &[
        "髙橋 𠮷子",
        "山﨑 德",
        "電処　有効五二",
        "鈴木 一郎",
        "渡邊 邦彦",
        "齋藤 はな",
        "𩸽野 太郎",
        "ＳＭＩＴＨ　ＪＯＨＮ",
        "Smith John",
        "李 明",
        "草彅 剛",
    ];
    const KANA: &[&str] = &["ﾀｶﾊｼ ﾖｼｺ", "ヤマザキ トク", "ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ", "ｽｽﾞｷ ｲﾁﾛｳ"];
    const INSURERS: &[&str] = &[
        "01130012", "01270016", "39131156", "33120015", "31130842", "39101233", "02199990",
        "138008",
    ];
    const SYMBOLS: &[&str] = &["2022", "記号１", "ＡＢ", "12-3"];
    const PAYERS: &[&str] = &["54136015", "21130018", "12136008", "15130016"];
    const RECIPIENTS: &[&str] = &["1234566", "7654320", "0123455"];
    const DEPARTMENTS: &[&str] = &["内科", "整形外科", "皮膚科", "小児科"];
    const USAGES: &[&str] = &[
        "1日3回毎食後",
        "１日１回就寝前　服用",
        "疼痛時",
        "1日2回 患部に塗布",
        "発熱時；38.5℃以上",
        "朝・夕食後",
    ];
    const REMARK_LINES: &[&str] = &[
        "残薬調整のため日数を短縮",
        "次回受診 12月5日",
        "  字下げした行",
        "疑義照会済み（電話）",
        "𠮷野家の近く",
        "",
    ];
    const FORMS: &[DosageForm] = &[
        DosageForm::Oral,
        DosageForm::AsNeeded,
        DosageForm::External,
        DosageForm::OralDrops,
        DosageForm::Injection,
        DosageForm::Material,
    ];
    /// Real master codes (shared/data and the y.csv rows in shared/README.md).
    const DRUGS: &[(CodeSystem, &str, &str, &str)] = &[
        (CodeSystem::Yj, "1124001F1022", "ユーロジン１ｍｇ錠", "錠"),
        (CodeSystem::Yj, "2325003B2029", "ガスター散２％", "g"),
        (
            CodeSystem::Generic,
            "2325003B2ZZZ",
            "【般】ファモチジン散２％",
            "g",
        ),
        (CodeSystem::Receipt, "610406079", "ガスター散２％", "g"),
        (
            CodeSystem::Receipt,
            "622688101",
            "ミニリンメルトＯＤ錠２５μｇ",
            "錠",
        ),
        (CodeSystem::Receipt, "622306501", "ザルティア錠５ｍｇ", "錠"),
        (CodeSystem::Yj, "2590016F2027", "ザルティア錠５ｍｇ", "錠"),
        (
            CodeSystem::Generic,
            "2590016F2ZZZ",
            "【般】タダラフィル錠５ｍｇ：ＺＡ",
            "錠",
        ),
        (CodeSystem::Yj, "1141007F1063", "カロナール錠２００", "錠"),
        (CodeSystem::Yj, "2171022F2041", "アムロジン錠５ｍｇ", "錠"),
        (
            CodeSystem::Yj,
            "3339950M1137",
            "ヒルドイドソフト軟膏０．３％",
            "g",
        ),
        (
            CodeSystem::Yj,
            "2649735S3020",
            "ロキソニンテープ１００ｍｇ",
            "枚",
        ),
    ];

    fn some(rng: &mut Rng, percent: u64, items: &[&str]) -> Option<String> {
        rng.chance(percent).then(|| rng.pick(items).to_string())
    }

    fn random_draft(rng: &mut Rng) -> PrescriptionDraft {
        let issued_on = today()
            .checked_sub((rng.below(4) as i64).days())
            .expect("date");
        let valid_until = rng.chance(50).then(|| {
            issued_on
                .checked_add((3 + rng.below(60) as i64).days())
                .expect("date")
        });
        let rps = (0..1 + rng.below(5))
            .map(|_| RpDraft {
                dosage_form: *rng.pick(FORMS),
                quantity: 1 + rng.below(999) as i64,
                usage: UsageDraft {
                    code: some(rng, 40, &["1011100000000000"]),
                    text: rng.pick(USAGES).to_string(),
                    times_per_day: rng.chance(70).then(|| 1 + rng.below(24) as i64),
                },
                drugs: (0..1 + rng.below(4))
                    .map(|_| {
                        let &(code_system, code, name, unit) = rng.pick(DRUGS);
                        let scale = rng.below(4) as u32;
                        // Magnitudes from 0.001 up to 99999.999, trailing zeros included.
                        let limit = 10u64.pow(1 + rng.below(5) as u32) * 10u64.pow(scale);
                        let mantissa = 1 + rng.below(limit - 1);
                        DrugDraft {
                            code_system,
                            code: code.to_string(),
                            name: name.to_string(),
                            dose: Dose(Decimal::new(mantissa as i64, scale)),
                            unit: unit.to_string(),
                            no_substitution: rng.chance(30),
                        }
                    })
                    .collect(),
            })
            .collect();
        let remarks = rng.chance(40).then(|| {
            (0..1 + rng.below(3))
                .map(|_| *rng.pick(REMARK_LINES))
                .collect::<Vec<_>>()
                .join("\n")
        });
        PrescriptionDraft {
            issue_type: *rng.pick(&[IssueType::Electronic, IssueType::PaperWithExchangeNumber]),
            patient: PatientDraft {
                name: rng.pick(NAMES).to_string(),
                name_kana: some(rng, 60, KANA),
                sex: *rng.pick(&[Sex::Male, Sex::Female]),
                birth_date: date(
                    1930 + rng.below(90) as i16,
                    1 + rng.below(12) as i8,
                    1 + rng.below(28) as i8,
                ),
            },
            insurance: InsuranceDraft {
                insurer_number: rng.pick(INSURERS).to_string(),
                symbol: some(rng, 60, SYMBOLS),
                number: {
                    let len = 1 + rng.below(10);
                    rng.digits(len)
                },
                relationship: *rng.pick(&[Relationship::Insured, Relationship::Dependent]),
                branch: rng.digits(2),
                copay_rate: rng.chance(50).then(|| *rng.pick(&[0u8, 10, 20, 30, 100])),
            },
            public_expenses: (0..rng.below(4))
                .map(|_| PublicExpenseDraft {
                    payer_number: rng.pick(PAYERS).to_string(),
                    recipient_number: some(rng, 60, RECIPIENTS),
                })
                .collect(),
            doctor: rng.chance(70).then(|| DoctorDraft {
                name: rng.pick(NAMES).to_string(),
                name_kana: some(rng, 50, KANA),
            }),
            department: some(rng, 60, DEPARTMENTS),
            issued_on,
            valid_until,
            refill_count: rng.chance(30).then(|| *rng.pick(&[2u8, 3])),
            remarks,
            rps,
            check_id: None,
            acknowledge_check_unavailable: false,
        }
    }

    #[test]
    fn random_prescriptions_round_trip_losslessly() {
        let facilities = [
            facility(
                "9918000010",
                "検証用病院",
                Some("〒100-0001 東京都千代田区千代田１－１"),
                Some("03-1234-5678"),
            ),
            facility(
                "0110113719",
                "さっぽろ内科クリニック",
                Some("北海道札幌市"),
                None,
            ),
            facility("9918000028", "髙島𠮷田医院", None, Some("011-000-0000")),
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // What the cases wrote, to show the generator reaches every record and code.
        let mut seen: std::collections::BTreeSet<(u16, usize, String)> = Default::default();
        for case in 0..500 {
            let draft = random_draft(&mut rng);
            let p = draft.validate(today()).unwrap_or_else(|e| {
                panic!("case {case}: the generator made an invalid draft: {e:?}")
            });
            let exchange = rng.chance(80).then(|| {
                let len = 6 + rng.below(11);
                rng.digits(len)
            });
            let doc = DocumentInput {
                institution: rng.pick(&facilities),
                prescription: &p,
                exchange_number: exchange.as_deref(),
            };
            for r in records(&doc) {
                seen.insert((r.no, 0, String::new()));
                match r.no {
                    101 => seen.insert((101, 1, r.fields[1].clone())),
                    111 => seen.insert((111, 1, r.fields[1].clone())),
                    201 => {
                        seen.insert((201, 3, r.fields[3].clone()));
                        let decimals = r.fields[6].split_once('.').map_or(0, |(_, f)| f.len());
                        seen.insert((201, 6, decimals.to_string()))
                    }
                    _ => false,
                };
            }
            let back = round_trip(&doc, today());
            assert_eq!(
                serde_json::to_value(&back).expect("json"),
                serde_json::to_value(&p).expect("json"),
                "case {case}"
            );
        }
        for no in [
            1, 2, 3, 4, 5, 11, 12, 13, 21, 22, 23, 24, 27, 28, 29, 51, 52, 64, 81, 82, 101, 111,
            201, 281,
        ] {
            assert!(
                seen.contains(&(no, 0, String::new())),
                "no case wrote record {no}"
            );
        }
        let want = [
            (101, 1, "1"),
            (101, 1, "2"),
            (101, 1, "3"),
            (101, 1, "4"),
            (101, 1, "5"),
            (101, 1, "6"),
            (111, 1, "1"),
            (111, 1, "3"),
            (201, 3, "2"),
            (201, 3, "4"),
            (201, 3, "7"),
            (201, 6, "0"),
            (201, 6, "1"),
            (201, 6, "2"),
            (201, 6, "3"),
        ];
        for (no, field, value) in want {
            assert!(
                seen.contains(&(no, field, value.to_string())),
                "no case wrote record {no} with field {field} = {value}"
            );
        }
    }

    // ---------------------------------------------------------------------------------------
    // Invalid input: precise errors, never a panic.
    // ---------------------------------------------------------------------------------------

    type Located = (usize, Option<u16>, String, &'static str);

    fn errors_of(text: &str) -> Vec<Located> {
        match parse(text, IssueType::Electronic) {
            Ok(p) => panic!("expected errors, parsed {:?}", p.draft),
            Err(errors) => errors
                .into_iter()
                .map(|e| (e.line, e.record, e.field, e.code))
                .collect(),
        }
    }

    fn at(line: usize, record: Option<u16>, field: &str, code: &'static str) -> Located {
        (line, record, field.to_string(), code)
    }

    /// The public test prescription with line `n` (1-based) replaced by `lines` (none: removed).
    fn edited(n: usize, lines: &[&str]) -> String {
        let mut out: Vec<&str> = PUBLIC_TEST.lines().collect();
        out.splice(n - 1..n, lines.iter().copied());
        out.join("\n") + "\n"
    }

    fn line(n: usize) -> &'static str {
        PUBLIC_TEST.lines().nth(n - 1).expect("line")
    }

    #[test]
    fn crlf_line_endings_are_refused_naming_the_line() {
        let crlf = PUBLIC_TEST.replace('\n', "\r\n");
        let errors = parse(&crlf, IssueType::Electronic).expect_err("CR LF");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].code, "CR_LINE_ENDINGS");
        assert_eq!((errors[0].line, errors[0].record), (1, None));
        assert!(
            errors[0].message.contains("14 more lines"),
            "{}",
            errors[0].message
        );
        let one = edited(7, &["13,20110101\r"]);
        assert_eq!(errors_of(&one), [at(7, None, "", "CR_LINE_ENDINGS")]);
    }

    #[test]
    fn missing_mandatory_records_are_named_where_they_belong() {
        assert_eq!(
            errors_of(&edited(5, &[])),
            [at(5, Some(11), "患者氏名", "MISSING_RECORD")]
        );
        // 12 and 51 gone: expected before 13 (now line 6) and before 82 (now line 10).
        let text = edited(11, &[]);
        let text: String = text
            .lines()
            .filter(|l| *l != "12,2")
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            errors_of(&text),
            [
                at(6, Some(12), "性別", "MISSING_RECORD"),
                at(10, Some(51), "交付年月日", "MISSING_RECORD")
            ]
        );
        assert_eq!(
            errors_of(&edited(13, &[])),
            [at(13, Some(101), "剤形", "MISSING_RECORD")]
        );
        assert_eq!(
            errors_of(&edited(14, &[])),
            [at(14, Some(111), "用法", "MISSING_RECORD")]
        );
        assert_eq!(
            errors_of(&edited(15, &[])),
            [at(15, Some(201), "薬品", "MISSING_RECORD")]
        );
        let no_rp: String = PUBLIC_TEST
            .lines()
            .take(12)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            errors_of(&no_rp),
            [at(13, Some(101), "剤形", "MISSING_RECORD")]
        );
        assert_eq!(
            errors_of("SJ1\n"),
            [
                at(2, Some(1), "医療機関", "MISSING_RECORD"),
                at(2, Some(11), "患者氏名", "MISSING_RECORD"),
                at(2, Some(12), "性別", "MISSING_RECORD"),
                at(2, Some(13), "生年月日", "MISSING_RECORD"),
                at(2, Some(22), "保険者番号", "MISSING_RECORD"),
                at(2, Some(23), "記号番号", "MISSING_RECORD"),
                at(2, Some(51), "交付年月日", "MISSING_RECORD"),
                at(2, Some(101), "剤形", "MISSING_RECORD"),
            ]
        );
        // A second 公費 needs a first; an RP number may not skip.
        assert_eq!(
            errors_of(&edited(11, &["28,54136015,1234566", line(11)])),
            [at(11, Some(27), "第一公費", "MISSING_RECORD")]
        );
        let rp3 = "101,3,1,,14\n111,3,1,,眠前,1\n201,3,1,1,2,622688101,ミニリンメルトＯＤ錠２５μｇ,2,1,錠\n";
        assert_eq!(
            errors_of(&format!("{PUBLIC_TEST}{rp3}")),
            [at(16, Some(101), "RP番号", "MISSING_RECORD")]
        );
    }

    #[test]
    fn records_out_of_order_are_refused_naming_the_line() {
        // 201 before 101: the 101 on line 14 comes after a record it must precede.
        let swapped: String = edited(13, &[line(15), line(13), line(14)])
            .lines()
            .take(15)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            errors_of(&swapped),
            [at(14, Some(101), "剤形", "OUT_OF_ORDER")]
        );
        let e = parse(&swapped, IssueType::Electronic).expect_err("out of order");
        assert!(
            e[0].message.contains("record 201 on line 13"),
            "{}",
            e[0].message
        );
        // A header record after the RPs.
        let late: String = PUBLIC_TEST
            .lines()
            .filter(|l| *l != "12,2")
            .chain(["12,2"])
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(errors_of(&late), [at(15, Some(12), "性別", "OUT_OF_ORDER")]);
        // The same record twice.
        assert_eq!(
            errors_of(&edited(6, &["12,2", "12,2"])),
            [at(7, Some(12), "性別", "DUPLICATE_RECORD")]
        );
    }

    #[test]
    fn truncated_lines_name_the_missing_field() {
        assert_eq!(
            errors_of(&edited(
                15,
                &["201,1,1,1,2,622688101,ミニリンメルトＯＤ錠２５μｇ,2"]
            )),
            [at(15, Some(201), "力価", "TRUNCATED")]
        );
        // A line with only its record number.
        assert_eq!(
            errors_of(&edited(6, &["12"])),
            [at(6, Some(12), "性別", "TRUNCATED")]
        );
        assert_eq!(
            errors_of(&edited(15, &["201"])),
            [at(15, Some(201), "RP番号", "TRUNCATED")]
        );
        // An ASCII comma inside a name shifts the fields: refused, not misread.
        assert_eq!(
            errors_of(&edited(
                15,
                &["201,1,1,1,2,622688101,ミニリンメルト,ＯＤ錠２５μｇ,2,1,錠"]
            )),
            [at(15, Some(201), "薬品", "TOO_MANY_FIELDS")]
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            errors_of(&edited(2, &["1,1,8000011,99,検証用病院"])),
            [at(2, Some(1), "コード", "CHECK_DIGIT")]
        );
        let dose = edited(
            15,
            &["201,1,1,1,2,622688101,ミニリンメルトＯＤ錠２５μｇ,二,1,錠"],
        );
        let e = parse(&dose, IssueType::Electronic).expect_err("bad dose");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field_path(), "sj1 line 15, record 201, 用量");
        assert_eq!(e[0].code, "FORMAT");
        assert_eq!(
            errors_of(&edited(11, &["51,20220230"])),
            [at(11, Some(51), "交付年月日", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(13, &["101,1,9,,14"])),
            [at(13, Some(101), "剤形区分", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(
                15,
                &["201,1,1,1,3,622688101,ミニリンメルトＯＤ錠２５μｇ,2,1,錠"]
            )),
            [at(15, Some(201), "コード種別", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(
                15,
                &["201,1,1,1,2,622688101,ミニリンメルトＯＤ錠２５μｇ,2,2,錠"]
            )),
            [at(15, Some(201), "力価", "UNSUPPORTED")]
        );
        assert_eq!(
            errors_of(&edited(8, &["21,3"])),
            [at(8, Some(21), "保険種別", "UNSUPPORTED")]
        );
        assert_eq!(
            errors_of(&edited(11, &[line(11), "24,30,70"])),
            [at(12, Some(24), "負担・給付率", "OUT_OF_ORDER")]
        );
        assert_eq!(
            errors_of(&edited(10, &[line(10), "24,30,60"])),
            [at(11, Some(24), "給付率", "INCONSISTENT")]
        );
        assert_eq!(
            errors_of(&edited(6, &["12,3"])),
            [at(6, Some(12), "性別", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(13, &["101,0,1,,14"])),
            [at(13, Some(101), "RP番号", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(13, &["101,1,1,,-14"])),
            [at(13, Some(101), "調剤数量", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(12, &["82,1,12a"])),
            [at(12, Some(82), "引換番号", "FORMAT")]
        );
        // Regression (fuzz/corpus/sj1/regression-control-character-name): a name of NULs was
        // accepted, rendered as spaces, and that document was refused as nameless.
        for name in ["\0\0\0", "検証\u{7}病院"] {
            assert_eq!(
                errors_of(&edited(2, &[&format!("1,1,8000010,99,{name}")])),
                [at(2, Some(1), "名称", "FORMAT")],
                "{name:?}"
            );
        }
        // Every error at once, in line order.
        let many = edited(2, &["1,1,8000011,99,検証用病院"]);
        let many = many
            .replace("51,20220907", "51,20220230")
            .replace(",2,1,錠", ",x,1,錠");
        assert_eq!(
            errors_of(&many),
            [
                at(2, Some(1), "コード", "CHECK_DIGIT"),
                at(11, Some(51), "交付年月日", "FORMAT"),
                at(15, Some(201), "用量", "FORMAT")
            ]
        );
    }

    #[test]
    fn bad_documents_and_garbage_lines() {
        assert_eq!(errors_of(""), [at(1, None, "", "BAD_HEADER")]);
        assert_eq!(errors_of("\n"), [at(1, None, "", "BAD_HEADER")]);
        assert_eq!(
            errors_of(&PUBLIC_TEST.replacen("SJ1", "JAHIS10", 1)),
            [at(1, None, "", "BAD_HEADER")]
        );
        assert_eq!(errors_of("sj1\n"), [at(1, None, "", "BAD_HEADER")]);
        assert_eq!(
            errors_of(&edited(8, &["hello, world", line(8)])),
            [at(8, None, "レコード番号", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(8, &["", line(8)])),
            [at(8, None, "レコード番号", "FORMAT")]
        );
        assert_eq!(
            errors_of(&format!("{PUBLIC_TEST}\n")),
            [at(16, None, "レコード番号", "FORMAT")]
        );
        assert_eq!(
            errors_of(&edited(8, &["999,1", line(8)])),
            [at(8, Some(999), "", "UNKNOWN_RECORD")]
        );
        assert_eq!(
            errors_of(&edited(8, &["70000,1", line(8)])),
            [at(8, None, "", "UNKNOWN_RECORD")]
        );
        assert_eq!(
            errors_of(&edited(8, &["\u{1}\u{7f},,,", line(8)])),
            [at(8, None, "レコード番号", "FORMAT")]
        );
    }

    #[test]
    fn lenient_where_harmless() {
        let want = parse(PUBLIC_TEST, IssueType::Electronic).expect("parses");
        let want = serde_json::to_value(want.draft.validate(date(2022, 9, 8)).expect("valid"))
            .expect("json");
        let same = |text: &str| {
            let p = parse(text, IssueType::Electronic).unwrap_or_else(|e| panic!("{e:#?}"));
            let p = p.draft.validate(date(2022, 9, 8)).expect("valid");
            assert_eq!(serde_json::to_value(p).expect("json"), want);
        };
        // No final newline; a BOM.
        same(PUBLIC_TEST.trim_end_matches('\n'));
        same(&format!("\u{FEFF}{PUBLIC_TEST}"));
        // Records of the JAHIS ranges that the relay does not model.
        let extra = edited(7, &[line(7), "14,1"]);
        let extra = extra.replace(&format!("{}\n", line(12)), &format!("62,1\n{}\n", line(12)));
        let extra = extra.replace(
            &format!("{}\n", line(14)),
            &format!("{}\n181,1,1,1,眠前に服用\n", line(14)),
        );
        let extra = format!("{extra}241,1,1,1,2\n");
        same(&extra);
        // Optional trailing fields left off.
        same(&edited(
            5,
            &["11,000000000000001,電処　有効五二,ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ"],
        ));
    }

    #[test]
    fn from_records_numbers_lines_after_the_header() {
        let lines: Vec<(usize, &str)> = PUBLIC_TEST
            .lines()
            .enumerate()
            .skip(1)
            .map(|(i, l)| (i + 1, l))
            .collect();
        let recs = parse_records(&lines).expect("records");
        assert_eq!(recs.len(), 14);
        assert!(from_records(&recs, IssueType::Electronic).is_ok());
        let mut bad = recs.clone();
        bad[13].fields[6] = "二".into();
        let e = from_records(&bad, IssueType::Electronic).expect_err("bad dose");
        assert_eq!(e[0].field_path(), "sj1 line 15, record 201, 用量");
        let e = parse_records(&[(2, "1,1"), (3, "x,1"), (4, "")]).expect_err("bad lines");
        assert_eq!(e.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn huge_documents_get_a_capped_answer() {
        // 60,000 RPs, each missing its 111 and 201: every one is reported in one pass, then capped.
        let head: String = PUBLIC_TEST
            .lines()
            .take(12)
            .map(|l| format!("{l}\n"))
            .collect();
        let rps: String = (1..=60_000).map(|n| format!("101,{n},1,,1\n")).collect();
        let errors = parse(&format!("{head}{rps}"), IssueType::Electronic).expect_err("incomplete");
        assert_eq!(errors.len(), MAX_ERRORS + 1);
        assert_eq!(
            errors[0],
            Sj1Error::new(
                14,
                Some(111),
                "用法",
                "MISSING_RECORD",
                "RP 1 has no record 111 (用法)"
            )
        );
        assert_eq!(errors.last().map(|e| e.code), Some("TOO_MANY_ERRORS"));
    }

    /// Parses `text`; an answer of either kind is fine, a panic is not. Errors must point inside
    /// the document.
    fn survives(text: &str) {
        let lines = text.split('\n').count() + 1;
        match parse(text, IssueType::Electronic) {
            Ok(parsed) => {
                let _ = parsed.draft.validate(today());
            }
            Err(errors) => {
                assert!(!errors.is_empty());
                assert!(errors.len() <= MAX_ERRORS + 1);
                for e in errors {
                    assert!(e.line >= 1 && e.line <= lines, "{e:?} in {text:?}");
                    assert!(!e.message.is_empty() && !e.code.is_empty());
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        const ALPHABET: &[u8] = b"0123456789,,,,\n\n\n\r.-SJ1 ";
        for case in 0..2000 {
            let len = rng.below(300) as usize;
            let mut bytes: Vec<u8> = if case % 2 == 0 {
                b"SJ1\n".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..len {
                let b = if case % 4 < 2 {
                    *rng.pick(ALPHABET)
                } else {
                    rng.below(256) as u8
                };
                bytes.push(b);
            }
            survives(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn mangled_documents_never_panic() {
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        let mut docs = vec![PUBLIC_TEST.to_string()];
        for g in goldens() {
            docs.push(render(&DocumentInput {
                institution: &g.facility,
                prescription: &g.prescription,
                exchange_number: g.exchange,
            }));
        }
        const NUMBERS: &[&str] = &[
            "0", "1", "2", "3", "4", "5", "11", "12", "13", "14", "21", "22", "23", "24", "27",
            "28", "29", "51", "52", "62", "64", "81", "82", "101", "111", "181", "201", "281",
            "299", "300", "65535", "65536",
        ];
        const VALUES: &[&str] = &[
            "",
            "0",
            "1",
            "2",
            "3",
            "7",
            "9",
            "x",
            "-1",
            "1.5",
            ".5",
            "5.",
            "1e3",
            "20220230",
            "20220907",
            "99999999",
            "99999999999999999999",
            "9918000010",
            "31130842",
            "1000000000000001",
            "後発品変更不可",
            "𠮷",
            "\r",
            "，",
            "1011100000000000",
        ];
        for case in 0..2000 {
            let mut lines: Vec<String> = rng.pick(&docs).lines().map(str::to_string).collect();
            for _ in 0..1 + rng.below(4) {
                let n = lines.len().max(1);
                let i = rng.below(n as u64) as usize;
                match rng.below(6) {
                    0 if i < lines.len() => {
                        lines.remove(i);
                    }
                    1 if i < lines.len() => {
                        let copy = lines[i].clone();
                        lines.insert(rng.below(lines.len() as u64 + 1) as usize, copy);
                    }
                    2 if i < lines.len() => {
                        // Cut a line at a character boundary.
                        let chars: Vec<char> = lines[i].chars().collect();
                        let keep = rng.below(chars.len() as u64 + 1) as usize;
                        lines[i] = chars[..keep].iter().collect();
                    }
                    3 if i < lines.len() => {
                        // Replace one field with a tricky value.
                        let mut fields: Vec<String> =
                            lines[i].split(',').map(str::to_string).collect();
                        let f = rng.below(fields.len() as u64) as usize;
                        fields[f] = rng.pick(VALUES).to_string();
                        lines[i] = fields.join(",");
                    }
                    4 => {
                        let fields: Vec<&str> =
                            (0..rng.below(10)).map(|_| *rng.pick(VALUES)).collect();
                        let line = format!("{},{}", rng.pick(NUMBERS), fields.join(","));
                        lines.insert(i.min(lines.len()), line);
                    }
                    _ if lines.len() > 1 => {
                        let last = lines.len() - 1;
                        let j = rng.below(lines.len() as u64) as usize;
                        lines.swap(i.min(last), j);
                    }
                    _ => {}
                }
            }
            let mut text = lines.join("\n");
            if case % 3 != 0 {
                text.push('\n');
            }
            survives(&text);
        }
    }
}
