//! `relay insured import`, run as the real binary: a registry CSV in UTF-8 and in Shift_JIS, a
//! second run that finds everything already present, and bad files that change nothing.

use relay_e2e::*;

const GOOD: &str = "relay/tests/fixtures/insured/registry.csv";
const BAD: &str = "relay/tests/fixtures/insured/bad.csv";

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

fn import(relay: &Relay, args: &[&str]) -> std::process::Output {
    let mut all = vec!["insured", "import"];
    all.extend_from_slice(args);
    relay.run(&all)
}

fn assert_line(out: &str, line: &str) {
    assert!(
        out.lines().any(|l| l.trim_end() == line),
        "`{line}` in:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_imports_once_and_links_insurance_changes() {
    let relay = Relay::new("insured_import_good");
    let out = relay.run(&["migrate"]);
    assert!(out.status.success(), "migrate: {}", stderr(&out));
    let db = relay.connect().await;

    // A dry run checks against the registry and writes nothing.
    let out = import(&relay, &["--dry-run", GOOD]);
    assert!(out.status.success(), "dry run: {}", stderr(&out));
    assert!(
        stdout(&out).contains("nothing was written"),
        "{}",
        stdout(&out)
    );
    assert_line(&stdout(&out), "coverages added:  6");
    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 0);

    let out = import(&relay, &[GOOD]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    let report = stdout(&out);
    assert_line(&report, "encoding:         UTF-8");
    assert_line(&report, "rows read:        6");
    assert_line(&report, "coverages added:  6");
    assert_line(&report, "already present:  0");
    assert_line(&report, "persons created:  4");
    assert!(report.contains("persons linked:   2"), "{report}");

    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 6);
    assert_eq!(count(&db, "SELECT count(*) FROM persons").await, 4);
    // 佐藤 花子 changed insurance (same person_ref), 鈴木 一郎 too (same card).
    for numbers in ["'1001', '2002'", "'3003', '6006'"] {
        let sql = format!(
            "SELECT count(DISTINCT person_id) FROM insured_persons WHERE number IN ({numbers})"
        );
        assert_eq!(count(&db, &sql).await, 1, "{numbers} share their person");
    }
    let row = db
        .query_one(
            "SELECT p.ref, p.card_id, p.address, i.symbol, i.documents
               FROM insured_persons i JOIN persons p ON p.id = i.person_id
              WHERE i.number = '2002'",
            &[],
        )
        .await
        .expect("佐藤's second coverage");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("P-0001"));
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("CARD-0001")
    );
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("東京都千代田区1-1")
    );
    assert_eq!(row.get::<_, String>(3), "");
    assert_eq!(
        row.get::<_, Vec<String>>(4),
        ["eligibility_notice", "qualification_certificate"]
    );

    // The same file again: everything is already present and nothing changes.
    let out = import(&relay, &[GOOD]);
    assert!(out.status.success(), "second import: {}", stderr(&out));
    assert_line(&stdout(&out), "coverages added:  0");
    assert_line(&stdout(&out), "already present:  6");
    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 6);
    assert_eq!(count(&db, "SELECT count(*) FROM persons").await, 4);

    // A new person and then a row giving 佐藤's card to 山本 (P-0005): the registry refuses the
    // second row, and the first is rolled back with it.
    let conflict = relay.work.join("conflict.csv");
    std::fs::write(
        &conflict,
        "person_ref,insurer_number,number,branch,name,sex,birth_date,valid_from,card_id,certificate_expires_on\n\
         P-0010,01130012,8008,01,新規 太郎,1,2000-01-01,2024-04-01,,\n\
         P-0005,33120015,5005,02,山本 健,1,1990-01-15,2024-04-01,CARD-0001,2030-12-31\n",
    )
    .expect("write conflict.csv");
    let out = import(&relay, &[conflict.to_str().unwrap()]);
    assert!(!out.status.success(), "a conflict fails: {}", stdout(&out));
    assert!(
        stderr(&out).contains("line 3, column card_id: CARD_IN_USE"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 6);
    assert_eq!(count(&db, "SELECT count(*) FROM persons").await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shift_jis_file_from_excel_is_imported_intact() {
    let relay = Relay::new("insured_import_sjis");
    // As Excel writes it: CRLF, YYYY/M/D dates, half-width kana and CP932-only kanji.
    let csv = "insurer_number,number,branch,name,name_kana,sex,birth_date,valid_from,address\r\n\
               01130012,9009,01,髙橋 一郎,ﾀｶﾊｼ ｲﾁﾛｳ,1,1962/3/4,2024/04/01,神奈川県横浜市～１丁目\r\n\
               06132013,9010,01,德永 はな,トクナガ ハナ,女,1999/12/31,2024/04/01,\r\n";
    let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(csv);
    assert!(!unmappable, "every character exists in Windows-31J");
    assert!(std::str::from_utf8(&bytes).is_err(), "really not UTF-8");
    let file = relay.work.join("sjis.csv");
    std::fs::write(&file, &bytes).expect("write sjis.csv");

    let out = import(&relay, &[file.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    assert_line(&stdout(&out), "encoding:         Shift_JIS (Windows-31J)");
    assert_line(&stdout(&out), "coverages added:  2");

    let db = relay.connect().await;
    let row = db
        .query_one(
            "SELECT i.name, i.name_kana, p.address, i.birth_date::text
               FROM insured_persons i JOIN persons p ON p.id = i.person_id
              WHERE i.number = '9009'",
            &[],
        )
        .await
        .expect("髙橋's coverage");
    assert_eq!(row.get::<_, String>(0), "髙橋 一郎");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("ﾀｶﾊｼ ｲﾁﾛｳ")
    );
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("神奈川県横浜市～１丁目")
    );
    assert_eq!(row.get::<_, String>(3), "1962-03-04");
    let name: String = db
        .query_one("SELECT name FROM persons WHERE name LIKE '德%'", &[])
        .await
        .expect("德永")
        .get(0);
    assert_eq!(name, "德永 はな");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_are_refused_whole_with_every_error() {
    let relay = Relay::new("insured_import_bad");
    let out = import(&relay, &[GOOD]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    let db = relay.connect().await;
    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 6);

    let out = import(&relay, &[BAD]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("line 3, column insurer_number: CHECK_DIGIT:"),
        "{err}"
    );
    assert!(
        err.contains("line 4, column birth_date: REQUIRED:"),
        "{err}"
    );
    assert!(err.contains("2 error(s); nothing was imported"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Line 2 of the bad file is good, but nothing is written.
    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 6);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM insured_persons WHERE number = '7007'"
        )
        .await,
        0
    );

    // Missing and empty files: a clear message, no panic, nothing written.
    let out = import(&relay, &["relay/tests/fixtures/insured/no-such-file.csv"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read relay/tests/fixtures/insured/no-such-file.csv"),
        "{}",
        stderr(&out)
    );
    let empty = relay.work.join("empty.csv");
    std::fs::write(&empty, b"").expect("write empty.csv");
    let out = import(&relay, &[empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("EMPTY: the file is empty"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(count(&db, "SELECT count(*) FROM insured_persons").await, 6);

    let out = relay.run(&["insured", "import", "--help"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("relay insured import registry.csv"),
        "{}",
        stdout(&out)
    );
}
