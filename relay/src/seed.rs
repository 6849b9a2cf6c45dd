//! `relay master import` and `relay seed demo`: the drug master from the MHLW list, a named
//! contraindication table (`contraindication_import`), an optional レセ電 医薬品マスター, and the
//! demo registry.

use std::path::{Path, PathBuf};

use anyhow::Context;
use jiff::ToSpan;
use jiff::civil::{Date, date};
use serde::Serialize;

use crate::contraindication_import::{self, Mode, TableName};
use crate::db::{self, Pool, facilities, insured, master, staff};
use crate::domain::facility::{CardDraft, Facility, HeldDocument, InsuredPerson};
use crate::domain::identifiers::{
    Branch, FacilityCode, FacilityKind, InsuredNumber, InsuredSymbol, InsurerNumber,
    MunicipalityCode,
};
use crate::domain::master as parse;
use crate::domain::prescription::Sex;

/// Files for `relay master import`; each is optional. What is given replaces its table — for the
/// contraindications, the named table [`MasterFiles::contraindication_table`], or adds to it.
#[derive(Debug, Default, Clone)]
pub struct MasterFiles {
    /// MHLW 薬価基準収載品目リスト (UTF-8 CSV with header).
    pub yakka: Option<PathBuf>,
    /// 併用禁忌 pairs (`ingredient_a,route_a,ingredient_b,route_b,basis`).
    pub contraindications: Option<PathBuf>,
    /// レセプト電算処理システム 医薬品マスター `y.csv` (Shift_JIS, no header).
    pub receipt: Option<PathBuf>,
    /// The contraindication table the pairs go to (default `seed`).
    pub contraindication_table: TableName,
    /// Replace that table's pairs (default) or add the new ones.
    pub contraindication_mode: Mode,
    /// Import and report, then roll back.
    pub dry_run: bool,
}

impl MasterFiles {
    /// The two files shipped in `shared/data`; the pairs go to table `seed`.
    pub fn from_data_dir(dir: &Path) -> Self {
        Self {
            yakka: Some(dir.join("mhlw-yakka-list-20250716.csv")),
            contraindications: Some(dir.join("contraindications-seed.csv")),
            contraindication_table: TableName::default(),
            ..Self::default()
        }
    }
}

/// What `relay master import` changed (in a dry run: would have changed). The counts of a file
/// not given are 0, its report `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub drugs: usize,
    pub ingredients: usize,
    pub receipt_drugs: usize,
    pub contraindications: Option<contraindication_import::Report>,
    /// Everything was rolled back.
    pub dry_run: bool,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses every given file first, then replaces the tables (adds to the contraindication table in
/// [`Mode::Add`]) in one transaction: a bad file changes nothing.
pub async fn import_master(pool: &Pool, files: &MasterFiles) -> anyhow::Result<ImportReport> {
    let drugs = match &files.yakka {
        Some(p) => Some(
            parse::parse_yakka_list(read(p)?.as_slice())
                .with_context(|| format!("in {}", p.display()))?,
        ),
        None => None,
    };
    let pairs = match &files.contraindications {
        Some(p) => Some(
            contraindication_import::parse(&read(p)?)
                .with_context(|| format!("in {}", p.display()))?,
        ),
        None => None,
    };
    let receipt = match &files.receipt {
        Some(p) => Some(
            parse::parse_receipt_master(&read(p)?)
                .with_context(|| format!("in {}", p.display()))?,
        ),
        None => None,
    };
    let mut client = pool.get().await.map_err(db::DbError::from)?;
    let tx = client.transaction().await?;
    let mut report = ImportReport {
        dry_run: files.dry_run,
        ..ImportReport::default()
    };
    if let Some(d) = &drugs {
        report.drugs = master::replace_drugs(&tx, d).await?;
        report.ingredients = master::ingredient_count(&tx).await? as usize;
    }
    // After the drugs, so unknown ingredient names are judged against the new master.
    if let Some(p) = &pairs {
        report.contraindications = Some(
            contraindication_import::import(
                &tx,
                &files.contraindication_table,
                files.contraindication_mode,
                p,
            )
            .await?,
        );
    }
    if let Some(r) = &receipt {
        report.receipt_drugs = master::replace_receipt_drugs(&tx, r).await?;
    }
    if files.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(report)
}

fn code(s: &str) -> FacilityCode {
    FacilityCode::parse(s).unwrap_or_else(|e| panic!("demo facility code {s}: {e}"))
}

/// The demo facilities of the contract (check digits valid).
pub fn demo_facilities() -> Vec<Facility> {
    let f = |c: &str, kind, name: &str, email: &str, fax: Option<&str>| Facility {
        code: code(c),
        kind,
        name: name.into(),
        address: Some("東京都千代田区霞が関1-2-2".into()),
        phone: Some("03-0000-0000".into()),
        email: email.into(),
        fax_email: fax.map(Into::into),
        accepts_e_prescriptions: true,
        // 99 is the test prefecture; 991007 is a made-up municipality there (valid check digit).
        municipality_code: matches!(c, "9918000010" | "9948000014")
            .then(|| MunicipalityCode::parse("991007").expect("demo municipality")),
    };
    vec![
        f(
            "9918000010",
            FacilityKind::Clinic,
            "検証用病院",
            "clinic-1@demo.invalid",
            None,
        ),
        f(
            "9918000028",
            FacilityKind::Clinic,
            "検証用診療所二",
            "clinic-2@demo.invalid",
            None,
        ),
        f(
            "9948000014",
            FacilityKind::Pharmacy,
            "検証用薬局",
            "pharmacy-1@demo.invalid",
            Some("fax-9948000014@demo.invalid"),
        ),
        f(
            "9948000022",
            FacilityKind::Pharmacy,
            "検証用薬局二",
            "pharmacy-2@demo.invalid",
            Some("fax-9948000022@demo.invalid"),
        ),
    ]
}

/// Demo staff: (facility, staff id, role, name, kana).
pub const DEMO_STAFF: &[(&str, &str, &str, &str, &str)] = &[
    ("9918000010", "doctor-1", "doctor", "医者　三郎", "ｲｼｬｻﾌﾞﾛｳ"),
    (
        "9918000010",
        "clerk-1",
        "clinic_clerk",
        "受付　花子",
        "ｳｹﾂｹﾊﾅｺ",
    ),
    (
        "9918000010",
        "admin-1",
        "admin",
        "運用　管理者",
        "ｳﾝﾖｳｶﾝﾘｼｬ",
    ),
    ("9918000028", "doctor-2", "doctor", "髙橋　德子", "ﾀｶﾊｼﾄｸｺ"),
    (
        "9948000014",
        "pharmacist-1",
        "pharmacist",
        "薬剤　一郎",
        "ﾔｸｻﾞｲｲﾁﾛｳ",
    ),
    (
        "9948000014",
        "pharmacy-clerk-1",
        "pharmacy_clerk",
        "事務　次郎",
        "ｼﾞﾑｼﾞﾛｳ",
    ),
    (
        "9948000022",
        "pharmacist-2",
        "pharmacist",
        "調剤　﨑子",
        "ﾁｮｳｻﾞｲｻｷｺ",
    ),
];

/// Demo insured persons, including the public test patient and names outside JIS X 0208, plus
/// one person for each card-path situation: an insurance change (two coverages), no current
/// coverage (資格無効), a certificate in its 3-month grace and one past it.
pub fn demo_insured(today: Date) -> Vec<InsuredPerson> {
    let p = |insurer: &str,
             symbol: &str,
             number: &str,
             name: &str,
             kana: &str,
             sex,
             birth,
             card: Option<(&str, Date)>| InsuredPerson {
        insurer_number: InsurerNumber::parse(insurer).expect("demo insurer number"),
        symbol: InsuredSymbol::parse(symbol).expect("demo symbol"),
        number: InsuredNumber::parse(number).expect("demo number"),
        branch: Branch::parse("01").expect("demo branch"),
        name: name.into(),
        name_kana: Some(kana.into()),
        sex,
        birth_date: birth,
        valid_from: date(2024, 4, 1),
        valid_until: None,
        card: card.map(|(id, expires)| CardDraft {
            card_id: id.into(),
            certificate_expires_on: expires,
        }),
        documents: vec![HeldDocument::EligibilityNotice],
        person_ref: None,
        address: Some("東京都千代田区霞が関1-2-2".into()),
    };
    let far = date(2030, 3, 31);
    let days_ago = |n: i64| today.checked_sub(n.days()).unwrap_or(today);
    let mut changed_old = p(
        "01130012",
        "5555",
        "0001",
        "佐藤　花子",
        "ｻﾄｳ ﾊﾅｺ",
        Sex::Female,
        date(1988, 5, 5),
        Some(("CARD-0004", far)),
    );
    changed_old.valid_until = Some(date(2026, 3, 31));
    changed_old.person_ref = Some("DEMO-P-0004".into());
    let mut changed_new = p(
        "01270016",
        "7777",
        "0002",
        "佐藤　花子",
        "ｻﾄｳ ﾊﾅｺ",
        Sex::Female,
        date(1988, 5, 5),
        Some(("CARD-0004", far)),
    );
    changed_new.valid_from = date(2026, 4, 1);
    changed_new.person_ref = Some("DEMO-P-0004".into());
    let mut lapsed = p(
        "01130012",
        "6666",
        "0003",
        "鈴木　一郎",
        "ｽｽﾞｷ ｲﾁﾛｳ",
        Sex::Male,
        date(1970, 10, 10),
        Some(("CARD-0005", far)),
    );
    lapsed.valid_until = Some(date(2026, 9, 30));
    let mut expired = p(
        "01130012",
        "8888",
        "0005",
        "伊藤　健",
        "ｲﾄｳ ｹﾝ",
        Sex::Male,
        date(1960, 1, 15),
        Some(("CARD-0007", days_ago(120))),
    );
    expired.documents = vec![HeldDocument::QualificationCertificate];
    vec![
        p(
            "31130842",
            "2022",
            "010001",
            "電処　有効五二",
            "ﾃﾞﾝｼｮ ﾕｳｺｳｺﾞﾆ",
            Sex::Female,
            date(2011, 1, 1),
            Some(("CARD-0001", far)),
        ),
        p(
            "01130012",
            "1234",
            "5678",
            "髙橋　𠮷子",
            "ﾀｶﾊｼ ﾖｼｺ",
            Sex::Female,
            date(1975, 7, 7),
            Some(("CARD-0002", far)),
        ),
        p(
            "39131156",
            "",
            "12345678",
            "山﨑　德太郎",
            "ﾔﾏｻｷ ﾄｸﾀﾛｳ",
            Sex::Male,
            date(1940, 2, 29),
            None,
        ),
        changed_old,
        changed_new,
        lapsed,
        p(
            "01130012",
            "7777",
            "0004",
            "田中　美咲",
            "ﾀﾅｶ ﾐｻｷ",
            Sex::Female,
            date(1995, 12, 1),
            Some(("CARD-0006", days_ago(30))),
        ),
        expired,
    ]
}

/// Idempotent: upserts facilities and staff, adds insured persons once, reloads the master (the
/// contraindication seed into table `seed`; other tables are left alone).
pub async fn demo(pool: &Pool, data_dir: &Path) -> anyhow::Result<ImportReport> {
    let client = pool.get().await.map_err(db::DbError::from)?;
    for f in demo_facilities() {
        facilities::upsert(&client, &f).await?;
    }
    for (facility, id, role, name, kana) in DEMO_STAFF {
        staff::upsert(
            &client,
            &staff::StaffMember {
                facility_code: facility,
                staff_id: id,
                role,
                name,
                name_kana: Some(kana),
                // The pharmacist of the first pharmacy has a 目視確認用パスコード.
                visual_check_enabled: *id == "pharmacist-1",
            },
        )
        .await?;
    }
    for person in demo_insured(crate::domain::time::today()) {
        insured::insert(&client, &person).await?;
    }
    drop(client);
    import_master(pool, &MasterFiles::from_data_dir(data_dir)).await
}
