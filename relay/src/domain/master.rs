//! The drug masters as files: the MHLW 薬価基準収載品目リスト (UTF-8 CSV with a header), the
//! 併用禁忌 pair table (UTF-8 CSV with a header) and the レセ電 医薬品マスター `y.csv` (Shift_JIS,
//! no header). Pure parsing: no database, no I/O beyond the reader handed in. Every refusal is a
//! [`MasterError`] naming the line and the field, so an operator can fix the file.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// 投与経路 as the yakka list spells it in 区分 (domain.md §7: duplicates are the same ingredient
/// **and** the same route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Route {
    #[serde(rename = "内用薬")]
    Oral,
    #[serde(rename = "注射薬")]
    Injection,
    #[serde(rename = "外用薬")]
    External,
    #[serde(rename = "歯科用薬剤")]
    Dental,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Oral,
        Route::Injection,
        Route::External,
        Route::Dental,
    ];

    /// The 区分 word, which is also what the database stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Oral => "内用薬",
            Route::Injection => "注射薬",
            Route::External => "外用薬",
            Route::Dental => "歯科用薬剤",
        }
    }

    /// The `y.csv` 剤形 digit: 1 内用, 4 注射, 6 外用, 8 歯科. 3 その他 has no route (`Ok(None)`);
    /// any other value is an error rather than `None`, so a shifted column cannot pass silently.
    pub fn from_receipt_form(digit: &str) -> Result<Option<Route>, ParseRouteError> {
        match digit {
            "1" => Ok(Some(Route::Oral)),
            "3" => Ok(None),
            "4" => Ok(Some(Route::Injection)),
            "6" => Ok(Some(Route::External)),
            "8" => Ok(Some(Route::Dental)),
            other => Err(ParseRouteError(other.to_owned())),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Route {
    type Err = ParseRouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Route::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseRouteError(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown route `{0}` (expected 内用薬, 注射薬, 外用薬 or 歯科用薬剤)")]
pub struct ParseRouteError(pub String);

/// Why a master file was refused. `line` is 1-based and counts the header line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("line 1 (header), column {column}: expected `{expected}`, found `{found}`")]
    Header {
        column: usize,
        expected: &'static str,
        found: String,
    },
    #[error("line {line}, field {field}: {message}")]
    Row {
        line: usize,
        field: &'static str,
        message: String,
    },
    #[error("reading the master file: {0}")]
    Io(#[from] std::io::Error),
}

/// One product of the 薬価基準収載品目リスト.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrugRecord {
    /// 薬価基準収載医薬品コード (YJ), 12 ASCII alphanumerics.
    pub yj_code: String,
    pub route: Route,
    /// 成分名 as published, e.g. `トラマドール塩酸塩・アセトアミノフェン`.
    pub ingredient_name: String,
    /// [`split_ingredients`] of `ingredient_name`, never empty.
    pub ingredients: Vec<String>,
    /// 規格, e.g. `１ｍｇ１錠`.
    pub strength: String,
    /// 品名.
    pub product_name: String,
    /// メーカー名; empty for 局方品 without a maker.
    pub maker: String,
    /// The 後発医薬品 column is non-empty: `後発品`, or `★` for a generic priced at or above its
    /// brand (still a generic, just not counted for the 加算).
    pub is_generic: bool,
    /// The 先発医薬品 column is non-empty: `先発品` or `準先発品`.
    pub is_brand: bool,
    /// 薬価 in yen.
    pub price: Decimal,
}

/// Splits a 成分名 into its ingredients (domain.md §7: combination products count through each
/// ingredient). Combination names join ingredients with 「・」 and may end in 配合剤, which is
/// dropped. Two kinds of names stay whole because splitting would invent ingredients:
/// - no 「・」 at all (`鎮咳配合剤`, `リドカイン配合剤`): the components are not named, so the class
///   name is the only identity there is; stripping 配合剤 would make `リドカイン配合剤` look like
///   plain lidocaine.
/// - 除去 names (`ロイシン・イソロイシン・バリン除去ミルク`): the listed amino acids are what the
///   milk lacks, not what it contains.
pub fn split_ingredients(name: &str) -> Vec<String> {
    let name = name.trim();
    if name.is_empty() {
        return Vec::new();
    }
    if name.contains("除去") {
        return vec![name.to_owned()];
    }
    let body = match name.strip_suffix("配合剤") {
        Some(rest) if rest.contains('・') => rest,
        _ => name,
    };
    body.split('・')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Column names of the yakka list, in order, exactly as MHLW publishes them.
const YAKKA_HEADER: [&str; 15] = [
    "区分",
    "薬価基準収載医薬品コード",
    "成分名",
    "規格",
    "日本薬局方",
    "麻薬",
    "業者名追記",
    "品名",
    "メーカー名",
    "診療報酬において加算等の算定対象となる後発医薬品",
    "先発医薬品",
    "同一剤形・規格の後発医薬品がある先発医薬品",
    "薬価",
    "経過措置による使用期限",
    "備考",
];
const Y_ROUTE: usize = 0;
const Y_CODE: usize = 1;
const Y_INGREDIENT: usize = 2;
const Y_STRENGTH: usize = 3;
const Y_PRODUCT: usize = 7;
const Y_MAKER: usize = 8;
const Y_GENERIC: usize = 9;
const Y_BRAND: usize = 10;
const Y_PRICE: usize = 12;

/// Parses the 薬価基準収載品目リスト (UTF-8, a UTF-8 BOM is tolerated). The header must match the
/// published column names exactly; records come back in file order, duplicates included (the
/// import keeps the first).
pub fn parse_yakka_list(mut reader: impl Read) -> Result<Vec<DrugRecord>, MasterError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    let lines = Lines::new(&bytes);
    let mut csv = csv_reader(true, bytes.as_slice());
    check_header(&mut csv, &YAKKA_HEADER, &lines)?;
    let mut out = Vec::new();
    for result in csv.records() {
        let record = result.map_err(|e| csv_error(e, &lines))?;
        let row = Fields::new(&record, &YAKKA_HEADER, &lines)?;
        let route = row
            .required(Y_ROUTE)?
            .parse::<Route>()
            .map_err(|e| row.error(Y_ROUTE, e.to_string()))?;
        let yj_code = row.yj_code(Y_CODE)?;
        let ingredient_name = row.required(Y_INGREDIENT)?.to_owned();
        let ingredients = split_ingredients(&ingredient_name);
        if ingredients.is_empty() {
            return Err(row.error(Y_INGREDIENT, "names no ingredient".to_owned()));
        }
        out.push(DrugRecord {
            yj_code,
            route,
            ingredient_name,
            ingredients,
            strength: row.get(Y_STRENGTH).to_owned(),
            product_name: row.required(Y_PRODUCT)?.to_owned(),
            maker: row.get(Y_MAKER).to_owned(),
            is_generic: !row.get(Y_GENERIC).is_empty(),
            is_brand: !row.get(Y_BRAND).is_empty(),
            price: row.price(Y_PRICE)?,
        });
    }
    Ok(out)
}

/// One 併用禁忌 pair, keyed by 成分名 spelling and route (`None` = any route, `*` in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContraindicationRecord {
    pub ingredient_a: String,
    pub route_a: Option<Route>,
    pub ingredient_b: String,
    pub route_b: Option<Route>,
    /// Why the pair is listed (package insert wording); may be empty.
    pub basis: String,
}

const CONTRA_HEADER: [&str; 5] = [
    "ingredient_a",
    "route_a",
    "ingredient_b",
    "route_b",
    "basis",
];

/// Parses the 併用禁忌 table (UTF-8 with the header `ingredient_a,route_a,ingredient_b,route_b,basis`).
pub fn parse_contraindications(
    mut reader: impl Read,
) -> Result<Vec<ContraindicationRecord>, MasterError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    let lines = Lines::new(&bytes);
    let mut csv = csv_reader(true, bytes.as_slice());
    check_header(&mut csv, &CONTRA_HEADER, &lines)?;
    let mut out = Vec::new();
    for result in csv.records() {
        let record = result.map_err(|e| csv_error(e, &lines))?;
        let row = Fields::new(&record, &CONTRA_HEADER, &lines)?;
        out.push(ContraindicationRecord {
            ingredient_a: row.required(0)?.to_owned(),
            route_a: row.route_or_any(1)?,
            ingredient_b: row.required(2)?.to_owned(),
            route_b: row.route_or_any(3)?,
            basis: row.get(4).to_owned(),
        });
    }
    Ok(out)
}

/// One row of the レセ電 医薬品マスター (`y.csv`), reduced to what code validation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptDrugRecord {
    /// 医薬品コード: 9 digits starting with 6.
    pub receipt_code: String,
    /// 漢字名称.
    pub name: String,
    /// 単位漢字名称 (may be empty).
    pub unit: String,
    /// 剤形; `None` for 3 その他.
    pub route: Option<Route>,
    /// 薬価基準収載医薬品コード.
    pub yj_code: String,
    /// 一般名コード (`…ZZZ`), when the product has a 一般名処方 entry.
    pub generic_code: Option<String>,
    /// 一般名処方の標準的な記載 (`【般】…`).
    pub generic_name: Option<String>,
    /// 廃止年月日; `99999999` (or empty) means still listed.
    pub discontinued_on: Option<jiff::civil::Date>,
}

/// The `y.csv` columns in order (shared/README.md); only used to name fields in errors.
const RECEIPT_COLUMNS: [&str; 42] = [
    "変更区分",
    "マスター種別",
    "医薬品コード",
    "漢字有効桁数",
    "漢字名称",
    "カナ有効桁数",
    "カナ名称",
    "単位コード",
    "単位漢字有効桁数",
    "単位漢字名称",
    "金額種別",
    "新又は現金額",
    "予備",
    "麻薬・毒薬・覚醒剤原料・向精神薬",
    "神経破壊剤",
    "生物学的製剤",
    "後発品",
    "予備",
    "歯科特定薬剤",
    "造影（補助）剤",
    "注射容量",
    "収載方式等識別",
    "商品名等関連",
    "旧金額金額種別",
    "旧金額",
    "漢字名称変更区分",
    "カナ名称変更区分",
    "剤形",
    "予備",
    "変更年月日",
    "廃止年月日",
    "薬価基準収載医薬品コード",
    "公表順序番号",
    "経過措置年月日",
    "基本漢字名称",
    "薬価基準収載年月日",
    "一般名コード",
    "一般名処方の標準的な記載",
    "一般名処方加算対象区分",
    "抗ＨＩＶ薬区分",
    "長期収載品関連",
    "選定療養区分",
];
const R_KIND: usize = 1;
const R_CODE: usize = 2;
const R_NAME: usize = 4;
const R_UNIT: usize = 9;
const R_FORM: usize = 27;
const R_DISCONTINUED: usize = 30;
const R_YJ: usize = 31;
const R_GENERIC_CODE: usize = 36;
const R_GENERIC_NAME: usize = 37;

/// Parses the レセ電 医薬品マスター `y.csv` as distributed: Shift_JIS (decoded as the WHATWG
/// Shift_JIS, i.e. Windows-31J, which the master's NEC/IBM characters need), no header, the 42
/// columns listed in shared/README.md. Extra trailing columns are ignored so a future layout that
/// appends columns still loads; fewer columns is an error. The encoding is not guessed: bytes
/// that are valid non-ASCII UTF-8 (BOM or not) are refused with a hint to convert them back.
pub fn parse_receipt_master(bytes: &[u8]) -> Result<Vec<ReceiptDrugRecord>, MasterError> {
    // Japanese Shift_JIS text is practically never valid UTF-8, while UTF-8 text often decodes
    // "cleanly" as Shift_JIS into mojibake that would pass every field check.
    if !bytes.is_ascii() && std::str::from_utf8(bytes).is_ok() {
        return Err(MasterError::Row {
            line: 1,
            field: "(encoding)",
            message: "the file is UTF-8; y.csv must be Shift_JIS as distributed (iconv -f UTF-8 -t CP932)"
                .to_owned(),
        });
    }
    let Some(text) =
        encoding_rs::SHIFT_JIS.decode_without_bom_handling_and_without_replacement(bytes)
    else {
        return Err(MasterError::Row {
            line: first_undecodable_line(bytes),
            field: "(encoding)",
            message: "not valid Shift_JIS".to_owned(),
        });
    };
    let lines = Lines::new(text.as_bytes());
    let mut csv = csv_reader(false, text.as_bytes());
    let mut out = Vec::new();
    for result in csv.records() {
        let record = result.map_err(|e| csv_error(e, &lines))?;
        let row = Fields::new(&record, &RECEIPT_COLUMNS, &lines)?;
        let kind = row.get(R_KIND);
        if kind != "Y" {
            return Err(row.error(
                R_KIND,
                format!("`{kind}` is not `Y`; this is not the 医薬品マスター"),
            ));
        }
        let receipt_code = row.get(R_CODE);
        if !is_receipt_code(receipt_code) {
            return Err(row.error(
                R_CODE,
                format!("`{receipt_code}` is not 9 digits starting with 6"),
            ));
        }
        let route = Route::from_receipt_form(row.get(R_FORM))
            .map_err(|e| row.error(R_FORM, format!("`{}` is not one of 1, 3, 4, 6, 8", e.0)))?;
        let generic_code = match row.get(R_GENERIC_CODE) {
            "" => None,
            code if is_yj_shaped(code) => Some(code.to_owned()),
            code => {
                return Err(row.error(
                    R_GENERIC_CODE,
                    format!("`{code}` is not 12 ASCII letters or digits"),
                ));
            }
        };
        out.push(ReceiptDrugRecord {
            receipt_code: receipt_code.to_owned(),
            name: row.required(R_NAME)?.to_owned(),
            unit: row.get(R_UNIT).to_owned(),
            route,
            yj_code: row.yj_code(R_YJ)?,
            generic_code,
            generic_name: Some(row.get(R_GENERIC_NAME))
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            discontinued_on: row.end_date(R_DISCONTINUED)?,
        });
    }
    Ok(out)
}

fn csv_reader<R: Read>(has_headers: bool, reader: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(has_headers)
        // Column counts are checked per row so the error can name the missing field.
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader)
}

fn check_header<R: Read>(
    csv: &mut csv::Reader<R>,
    expected: &[&'static str],
    lines: &Lines,
) -> Result<(), MasterError> {
    let found = csv.headers().map_err(|e| csv_error(e, lines))?;
    for (i, want) in expected.iter().enumerate() {
        let got = found.get(i).unwrap_or("");
        if got != *want {
            return Err(MasterError::Header {
                column: i + 1,
                expected: want,
                found: got.to_owned(),
            });
        }
    }
    if let Some(extra) = found.get(expected.len()) {
        return Err(MasterError::Header {
            column: expected.len() + 1,
            expected: "(no more columns)",
            found: extra.to_owned(),
        });
    }
    Ok(())
}

fn csv_error(err: csv::Error, lines: &Lines) -> MasterError {
    let line = lines.line_of(err.position());
    let message = err.to_string();
    match err.into_kind() {
        csv::ErrorKind::Io(io) => MasterError::Io(io),
        _ => MasterError::Row {
            line,
            field: "(record)",
            message,
        },
    }
}

/// Maps csv positions to 1-based line numbers. csv's own `Position::line` miscounts after CRLF
/// line ends and blank lines (y.csv is CRLF), and its byte offset points at the end of the
/// previous line, so the line is recomputed from the bytes.
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

/// Reports where decoding failed; Shift_JIS trail bytes are never 0x0A, so splitting on LF is safe.
fn first_undecodable_line(bytes: &[u8]) -> usize {
    bytes
        .split(|b| *b == b'\n')
        .position(|line| {
            encoding_rs::SHIFT_JIS
                .decode_without_bom_handling_and_without_replacement(line)
                .is_none()
        })
        .map_or(0, |i| i + 1)
}

fn is_yj_shaped(code: &str) -> bool {
    code.len() == 12 && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_receipt_code(code: &str) -> bool {
    code.len() == 9 && code.starts_with('6') && code.bytes().all(|b| b.is_ascii_digit())
}

/// One record with its line number and column names, so every check can name both.
struct Fields<'a> {
    record: &'a csv::StringRecord,
    names: &'static [&'static str],
    line: usize,
}

impl<'a> Fields<'a> {
    /// Refuses short rows up front, naming the first missing column.
    fn new(
        record: &'a csv::StringRecord,
        names: &'static [&'static str],
        lines: &Lines,
    ) -> Result<Self, MasterError> {
        let line = lines.line_of(record.position());
        let fields = Fields {
            record,
            names,
            line,
        };
        if record.len() < names.len() {
            return Err(fields.error(
                record.len(),
                format!(
                    "missing: the row has {} columns, {} expected",
                    record.len(),
                    names.len()
                ),
            ));
        }
        Ok(fields)
    }

    fn get(&self, index: usize) -> &'a str {
        self.record.get(index).unwrap_or("")
    }

    fn error(&self, index: usize, message: String) -> MasterError {
        MasterError::Row {
            line: self.line,
            field: self.names.get(index).copied().unwrap_or("(extra column)"),
            message,
        }
    }

    fn required(&self, index: usize) -> Result<&'a str, MasterError> {
        match self.get(index) {
            "" => Err(self.error(index, "is empty".to_owned())),
            value => Ok(value),
        }
    }

    fn yj_code(&self, index: usize) -> Result<String, MasterError> {
        let code = self.get(index);
        if is_yj_shaped(code) {
            Ok(code.to_owned())
        } else {
            Err(self.error(index, format!("`{code}` is not 12 ASCII letters or digits")))
        }
    }

    /// Plain decimal yen (`6.1`, `1288.10`): no sign, exponent or grouping, which `Decimal` would
    /// otherwise partly accept.
    fn price(&self, index: usize) -> Result<Decimal, MasterError> {
        let raw = self.get(index);
        let bad = || self.error(index, format!("`{raw}` is not a price in yen"));
        let (whole, frac) = raw.split_once('.').unwrap_or((raw, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(frac) {
            return Err(bad());
        }
        Decimal::from_str(raw).map_err(|_| bad())
    }

    fn route_or_any(&self, index: usize) -> Result<Option<Route>, MasterError> {
        match self.required(index)? {
            "*" => Ok(None),
            word => word
                .parse()
                .map(Some)
                .map_err(|e: ParseRouteError| self.error(index, format!("{e}, or `*`"))),
        }
    }

    /// `YYYYMMDD`; `99999999` and empty mean "no end".
    fn end_date(&self, index: usize) -> Result<Option<jiff::civil::Date>, MasterError> {
        let raw = self.get(index);
        if raw.is_empty() || raw == "99999999" {
            return Ok(None);
        }
        let bad = || self.error(index, format!("`{raw}` is not a date YYYYMMDD"));
        if raw.len() != 8 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let year = raw.get(0..4).and_then(|s| s.parse::<i16>().ok());
        let month = raw.get(4..6).and_then(|s| s.parse::<i8>().ok());
        let day = raw.get(6..8).and_then(|s| s.parse::<i8>().ok());
        match (year, month, day) {
            (Some(y), Some(m), Some(d)) => {
                jiff::civil::Date::new(y, m, d).map(Some).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_data(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data")
            .join(name)
    }

    fn yakka() -> Vec<DrugRecord> {
        let file = std::fs::File::open(shared_data("mhlw-yakka-list-20250716.csv"))
            .expect("open yakka list");
        parse_yakka_list(std::io::BufReader::new(file)).expect("parse yakka list")
    }

    /// The two real rows documented in shared/README.md.
    const Y_ROWS: &str = "0,Y,610406079,7,ガスター散２％,09,ｶﾞｽﾀｰｻﾝ2%,33,1,ｇ,1,9.50,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,1,,20260401,99999999,2325003B2029,001413000,0,ガスター散２％,0,2325003B2ZZZ,【般】ファモチジン散２％,2,0,0,1\r\n\
0,Y,622306501,9,ザルティア錠５ｍｇ,13,ｻﾞﾙﾃｨｱｼﾞｮｳ5MG,16,1,錠,1,78.60,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,,20260401,99999999,2590016F2027,002238000,0,ザルティア錠５ｍｇ,0,2590016F2ZZZ,【般】タダラフィル錠５ｍｇ：ＺＡ,2,0,0,1\r\n";

    fn sjis(text: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        assert!(!unmappable, "test text must be representable in Shift_JIS");
        bytes.into_owned()
    }

    fn row_error(err: MasterError) -> (usize, &'static str, String) {
        match err {
            MasterError::Row {
                line,
                field,
                message,
            } => (line, field, message),
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn route_words_and_receipt_digits() {
        for route in Route::ALL {
            assert_eq!(route.as_str().parse::<Route>(), Ok(route));
        }
        assert!("内服".parse::<Route>().is_err());
        assert_eq!(Route::from_receipt_form("1"), Ok(Some(Route::Oral)));
        assert_eq!(Route::from_receipt_form("4"), Ok(Some(Route::Injection)));
        assert_eq!(Route::from_receipt_form("6"), Ok(Some(Route::External)));
        assert_eq!(Route::from_receipt_form("8"), Ok(Some(Route::Dental)));
        assert_eq!(Route::from_receipt_form("3"), Ok(None));
        assert!(Route::from_receipt_form("2").is_err());
    }

    #[test]
    fn splits_combination_names() {
        assert_eq!(
            split_ingredients("エルゴタミン酒石酸塩・無水カフェイン配合剤"),
            ["エルゴタミン酒石酸塩", "無水カフェイン"]
        );
        assert_eq!(split_ingredients(" タダラフィル "), ["タダラフィル"]);
        assert_eq!(split_ingredients("鎮咳配合剤"), ["鎮咳配合剤"]);
        assert_eq!(split_ingredients("Ａ・・Ｂ・"), ["Ａ", "Ｂ"]);
        assert!(split_ingredients("  ").is_empty());
    }

    #[test]
    fn yakka_list_parses_completely() {
        let drugs = yakka();
        assert_eq!(drugs.len(), 12_434);
        let count = |route| drugs.iter().filter(|d| d.route == route).count();
        assert_eq!(count(Route::Oral), 6_940);
        assert_eq!(count(Route::Injection), 3_486);
        assert_eq!(count(Route::External), 1_980);
        assert_eq!(count(Route::Dental), 28);
        assert_eq!(drugs.iter().filter(|d| d.is_generic).count(), 4_375 + 405);
        assert_eq!(drugs.iter().filter(|d| d.is_brand).count(), 4_151 + 88);
        assert!(drugs.iter().all(|d| !d.ingredients.is_empty()));
    }

    #[test]
    fn yakka_known_row() {
        let drugs = yakka();
        let estazolam = drugs
            .iter()
            .find(|d| d.yj_code == "1124001F1022")
            .expect("1124001F1022 in the list");
        assert_eq!(
            estazolam,
            &DrugRecord {
                yj_code: "1124001F1022".to_owned(),
                route: Route::Oral,
                ingredient_name: "エスタゾラム".to_owned(),
                ingredients: vec!["エスタゾラム".to_owned()],
                strength: "１ｍｇ１錠".to_owned(),
                product_name: "ユーロジン１ｍｇ錠".to_owned(),
                maker: "武田テバ薬品".to_owned(),
                is_generic: false,
                is_brand: true,
                price: Decimal::new(61, 1),
            }
        );
        // ★ marks a generic priced at or above its brand: still a generic.
        let star = drugs
            .iter()
            .find(|d| d.yj_code == "1124001F1030")
            .expect("1124001F1030");
        assert!(star.is_generic && !star.is_brand);
    }

    #[test]
    fn yakka_real_combinations_split() {
        let drugs = yakka();
        let by_code = |code: &str| {
            drugs
                .iter()
                .find(|d| d.yj_code == code)
                .unwrap_or_else(|| panic!("{code} in the list"))
        };
        // トラムセット配合錠: listed without the 配合剤 suffix.
        assert_eq!(
            by_code("1149117F1020").ingredients,
            ["トラマドール塩酸塩", "アセトアミノフェン"]
        );
        // ヒダントールＤ配合錠: 成分名 ends in 配合剤.
        let hydantol = by_code("1139103X1036");
        assert_eq!(
            hydantol.ingredient_name,
            "フェニトイン・フェノバルビタール配合剤"
        );
        assert_eq!(hydantol.ingredients, ["フェニトイン", "フェノバルビタール"]);
        // ユバンシ配合錠 contains タダラフィル too.
        assert_eq!(
            by_code("2190105F1029").ingredients,
            ["マシテンタン", "タダラフィル"]
        );
        // Full-width spaces inside an ingredient name are part of the name.
        assert_eq!(
            by_code("6250111F1022").ingredients,
            ["エムトリシタビン", "テノホビル　アラフェナミドフマル酸塩"]
        );
        // A milk free of three amino acids contains none of them.
        assert_eq!(
            by_code("3279104X2037").ingredients,
            ["ロイシン・イソロイシン・バリン除去ミルク"]
        );
    }

    #[test]
    fn tadalafil_under_219_and_259() {
        let drugs = yakka();
        let classes: std::collections::BTreeSet<&str> = drugs
            .iter()
            .filter(|d| d.route == Route::Oral && d.ingredients.iter().any(|i| i == "タダラフィル"))
            .filter_map(|d| d.yj_code.get(..3))
            .collect();
        assert!(classes.contains("219"), "{classes:?}");
        assert!(classes.contains("259"), "{classes:?}");
        assert!(
            drugs
                .iter()
                .any(|d| d.yj_code == "2190030F1029" && d.ingredient_name == "タダラフィル")
        );
        assert!(
            drugs
                .iter()
                .any(|d| d.yj_code == "2590016F2027" && d.ingredient_name == "タダラフィル")
        );
    }

    #[test]
    fn contraindication_seed_parses() {
        let file =
            std::fs::File::open(shared_data("contraindications-seed.csv")).expect("open seed");
        let pairs = parse_contraindications(file).expect("parse seed");
        assert_eq!(pairs.len(), 81);
        assert_eq!(
            pairs[0],
            ContraindicationRecord {
                ingredient_a: "シルデナフィルクエン酸塩".to_owned(),
                route_a: Some(Route::Oral),
                ingredient_b: "ニトログリセリン".to_owned(),
                route_b: None,
                basis: "PDE5阻害剤 × 硝酸剤・NO供与剤".to_owned(),
            }
        );
        assert_eq!(pairs.iter().filter(|p| p.route_a.is_none()).count(), 5);
        assert_eq!(pairs.iter().filter(|p| p.route_b.is_none()).count(), 54);
        // Every seed name is spelled as in the yakka list.
        let known: std::collections::HashSet<String> =
            yakka().into_iter().flat_map(|d| d.ingredients).collect();
        for p in &pairs {
            assert!(known.contains(&p.ingredient_a), "{}", p.ingredient_a);
            assert!(known.contains(&p.ingredient_b), "{}", p.ingredient_b);
        }
    }

    #[test]
    fn receipt_master_real_rows() {
        let rows = parse_receipt_master(&sjis(Y_ROWS)).expect("parse y.csv rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ReceiptDrugRecord {
                receipt_code: "610406079".to_owned(),
                name: "ガスター散２％".to_owned(),
                unit: "ｇ".to_owned(),
                route: Some(Route::Oral),
                yj_code: "2325003B2029".to_owned(),
                generic_code: Some("2325003B2ZZZ".to_owned()),
                generic_name: Some("【般】ファモチジン散２％".to_owned()),
                discontinued_on: None,
            }
        );
        assert_eq!(rows[1].receipt_code, "622306501");
        assert_eq!(rows[1].name, "ザルティア錠５ｍｇ");
        assert_eq!(rows[1].unit, "錠");
        assert_eq!(rows[1].yj_code, "2590016F2027");
        assert_eq!(
            rows[1].generic_name.as_deref(),
            Some("【般】タダラフィル錠５ｍｇ：ＺＡ")
        );
    }

    #[test]
    fn receipt_master_fixture_matches_readme_rows() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/y-sample.csv");
        let bytes = std::fs::read(path).expect("read fixture");
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "fixture must be Shift_JIS"
        );
        assert_eq!(
            parse_receipt_master(&bytes).expect("parse fixture"),
            parse_receipt_master(&sjis(Y_ROWS)).expect("parse rows")
        );
    }

    #[test]
    fn receipt_master_optional_fields() {
        // No 一般名 entry, 剤形 その他, a real 廃止年月日, LF line ends.
        let row = Y_ROWS
            .lines()
            .next()
            .expect("first row")
            .replace(",1,,20260401,99999999,", ",3,,20260401,20270331,")
            .replace("2325003B2ZZZ,【般】ファモチジン散２％", ",");
        let rows = parse_receipt_master(&sjis(&format!("{row}\n"))).expect("parse");
        assert_eq!(rows[0].route, None);
        assert_eq!(rows[0].generic_code, None);
        assert_eq!(rows[0].generic_name, None);
        assert_eq!(
            rows[0].discontinued_on,
            Some(jiff::civil::date(2027, 3, 31))
        );
    }

    #[test]
    fn bad_header_names_the_column() {
        let err = parse_yakka_list("区分,YJコード,成分名\n".as_bytes()).expect_err("bad header");
        match err {
            MasterError::Header {
                column, expected, ..
            } => {
                assert_eq!(column, 2);
                assert_eq!(expected, "薬価基準収載医薬品コード");
            }
            other => panic!("{other:?}"),
        }
        assert!(err_text(parse_contraindications("a,b\n".as_bytes())).contains("line 1"));
        assert!(matches!(
            parse_contraindications("".as_bytes()),
            Err(MasterError::Header { column: 1, .. })
        ));
    }

    fn err_text<T: fmt::Debug>(result: Result<T, MasterError>) -> String {
        result.expect_err("should fail").to_string()
    }

    fn yakka_with_row(row: &str) -> String {
        format!(
            "{}\n内用薬,1124001F1022,エスタゾラム,１ｍｇ１錠,,,,ユーロジン１ｍｇ錠,武田テバ薬品,,先発品,,6.1,,\n{row}\n",
            YAKKA_HEADER.join(",")
        )
    }

    #[test]
    fn bad_yakka_rows_name_line_and_field() {
        let short_code = yakka_with_row(
            "内用薬,1124001F102,エスタゾラム,１ｍｇ１錠,,,,ユーロジン１ｍｇ錠,武田テバ薬品,,先発品,,6.1,,",
        );
        let (line, field, message) =
            row_error(parse_yakka_list(short_code.as_bytes()).expect_err("11 chars"));
        assert_eq!((line, field), (3, "薬価基準収載医薬品コード"));
        assert!(message.contains("1124001F102"), "{message}");

        for price in ["６．１", "-6.1", "6.", "1e3", ""] {
            let bad_price = yakka_with_row(&format!(
                "内用薬,1124001F1030,エスタゾラム,１ｍｇ１錠,,,,エスタゾラム錠,共和薬品工業,★,,,{price},,"
            ));
            let (line, field, _) =
                row_error(parse_yakka_list(bad_price.as_bytes()).expect_err(price));
            assert_eq!((line, field), (3, "薬価"), "{price}");
        }

        let bad_route = yakka_with_row(
            "内服薬,1124001F1030,エスタゾラム,１ｍｇ１錠,,,,エスタゾラム錠,共和薬品工業,★,,,6.1,,",
        );
        assert_eq!(
            row_error(parse_yakka_list(bad_route.as_bytes()).expect_err("route")).1,
            "区分"
        );

        let short_row = yakka_with_row("内用薬,1124001F1030,エスタゾラム");
        let err = parse_yakka_list(short_row.as_bytes()).expect_err("short row");
        assert_eq!(
            err.to_string(),
            "line 3, field 規格: missing: the row has 3 columns, 15 expected"
        );

        let not_utf8 = [yakka_with_row("").as_bytes(), &sjis("内用薬,1,2,3\n")].concat();
        let (line, field, _) = row_error(parse_yakka_list(not_utf8.as_slice()).expect_err("sjis"));
        assert_eq!((line, field), (4, "(record)"));
    }

    #[test]
    fn bad_contraindication_rows() {
        let text =
            "ingredient_a,route_a,ingredient_b,route_b,basis\nＡ,内用薬,Ｂ,*,x\nＡ,経口,Ｂ,*,x\n";
        let (line, field, _) =
            row_error(parse_contraindications(text.as_bytes()).expect_err("route"));
        assert_eq!((line, field), (3, "route_a"));
        let text = "ingredient_a,route_a,ingredient_b,route_b,basis\nＡ,内用薬,,*,x\n";
        let (line, field, _) =
            row_error(parse_contraindications(text.as_bytes()).expect_err("empty"));
        assert_eq!((line, field), (2, "ingredient_b"));
    }

    #[test]
    fn bad_receipt_rows_name_line_and_field() {
        let first = Y_ROWS.lines().next().expect("first row");

        let truncated = format!(
            "{first}\n{}\n",
            &first[..first.find(",99999999").expect("cut point")]
        );
        let err = parse_receipt_master(&sjis(&truncated)).expect_err("truncated");
        let (line, field, message) = row_error(err);
        assert_eq!((line, field), (2, "廃止年月日"), "{message}");

        let not_y = format!("{first}\n{first}\n{}\n", first.replacen(",Y,", ",S,", 1));
        let (line, field, message) =
            row_error(parse_receipt_master(&sjis(&not_y)).expect_err("kind"));
        assert_eq!((line, field), (3, "マスター種別"));
        assert!(message.contains("`S`"), "{message}");

        // CRLF line ends and a blank line, as y.csv comes: still the physical line number.
        let crlf = format!("{Y_ROWS}\r\n{}\r\n", first.replacen(",Y,", ",S,", 1));
        let (line, field, _) = row_error(parse_receipt_master(&sjis(&crlf)).expect_err("crlf"));
        assert_eq!((line, field), (4, "マスター種別"));

        let bad_code = first.replacen("610406079", "710406079", 1);
        assert_eq!(
            row_error(parse_receipt_master(&sjis(&bad_code)).expect_err("code")).1,
            "医薬品コード"
        );

        let bad_form = first.replacen(",0,1,,20260401,", ",0,2,,20260401,", 1);
        assert_eq!(
            row_error(parse_receipt_master(&sjis(&bad_form)).expect_err("form")).1,
            "剤形"
        );

        let bad_date = first.replacen("99999999", "20270231", 1);
        assert_eq!(
            row_error(parse_receipt_master(&sjis(&bad_date)).expect_err("date")).1,
            "廃止年月日"
        );

        let short_yj = first.replacen("2325003B2029", "2325003B202", 1);
        assert_eq!(
            row_error(parse_receipt_master(&sjis(&short_yj)).expect_err("yj")).1,
            "薬価基準収載医薬品コード"
        );

        // A lone lead byte on line 2 is not Shift_JIS.
        let mut broken = sjis(&format!("{first}\n"));
        broken.extend_from_slice(b"0,Y,\x82\n");
        assert_eq!(
            row_error(parse_receipt_master(&broken).expect_err("sjis")).0,
            2
        );

        // The same rows saved as UTF-8, with or without a BOM, are refused, not read as mojibake.
        let bom = [b"\xEF\xBB\xBF".as_slice(), Y_ROWS.as_bytes()].concat();
        assert_eq!(
            row_error(parse_receipt_master(&bom).expect_err("bom")).1,
            "(encoding)"
        );
        let (line, field, _) =
            row_error(parse_receipt_master(Y_ROWS.as_bytes()).expect_err("utf-8"));
        assert_eq!((line, field), (1, "(encoding)"));

        assert!(parse_receipt_master(b"").expect("empty file").is_empty());
    }
}
