//! `relay master import --contraindications FILE [--table NAME] [--add] [--dry-run]`, run as the
//! real binary: the seed as table `seed`, a second table added next to it, a table replaced
//! without touching the other, and a bad file that changes nothing. The check engine's read path
//! (`contraindications_involving`) is asked afterwards, against the same database.

use relay_e2e::*;
use serde_json::{Value, json};

const SEED: &str = "../shared/data/contraindications-seed.csv";
const YAKKA: &str = "../shared/data/mhlw-yakka-list-20250716.csv";
const VENDOR: &str = "vendor-2026-11";
const HEADER: &str = "ingredient_a,route_a,ingredient_b,route_b,basis\n";

/// Pairs per table, e.g. `[("seed", 81), ("vendor-2026-11", 3)]`.
async fn tables(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    db.query(
        "SELECT table_name, count(*) FROM contraindications GROUP BY 1 ORDER BY 1",
        &[],
    )
    .await
    .expect("count per table")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Every row of one table, ids included: equal snapshots mean the table was not touched.
async fn snapshot(db: &tokio_postgres::Client, table: &str) -> String {
    db.query_one(
        "SELECT coalesce(string_agg(concat_ws(',', id, ingredient_a, route_a, ingredient_b, \
                                              route_b, basis, imported_at), '|' ORDER BY id), '') \
         FROM contraindications WHERE table_name = $1",
        &[&table],
    )
    .await
    .expect("snapshot")
    .get(0)
}

/// Runs `relay master import ARGS`, asserts success and returns the JSON report and stderr.
fn import(relay: &Relay, args: &[&str]) -> (Value, String) {
    let mut all = vec!["master", "import"];
    all.extend_from_slice(args);
    let out = relay.run(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let report: Value = serde_json::from_str(&stdout(&out)).expect("JSON report on stdout");
    (report, stderr(&out))
}

/// The counts of a contraindication report, in the order read, added, already_present,
/// duplicates_in_file, removed, in_other_tables, stored.
fn counts(report: &Value) -> [u64; 7] {
    let c = &report["contraindications"];
    [
        "read",
        "added",
        "already_present",
        "duplicates_in_file",
        "removed",
        "in_other_tables",
        "stored",
    ]
    .map(|k| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {report:#}")))
}

fn write(relay: &Relay, name: &str, rows: &str) -> String {
    let path = relay.work.join(name);
    std::fs::write(&path, format!("{HEADER}{rows}")).expect("write the CSV");
    path.to_str().expect("UTF-8 path").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn contraindication_tables_are_replaced_or_added_to_one_at_a_time() {
    let relay = Relay::new("master_import");
    let out = relay.run(&["master", "import", "--help"]);
    assert!(out.status.success());
    for word in [
        "--table <NAME>",
        "--add",
        "--dry-run",
        "Examples:",
        "vendor-2026-11",
    ] {
        assert!(stdout(&out).contains(word), "{word} in:\n{}", stdout(&out));
    }
    let out = relay.run(&["migrate"]);
    assert!(out.status.success(), "migrate: {}", stderr(&out));
    let db = relay.connect().await;
    // The drug master first: unknown ingredient names are judged against it.
    let (report, _) = import(&relay, &["--yakka", YAKKA]);
    assert_eq!(report["drugs"], 12434);
    assert_eq!(report["contraindications"], Value::Null);

    let seed_text = std::fs::read_to_string(repo_root().join(SEED)).expect("read the seed");
    let rows = seed_text.lines().skip(1).filter(|l| !l.is_empty()).count() as u64;
    assert!(rows > 0);
    let n = i64::try_from(rows).expect("row count");

    // The seed as table `seed`: every row of the file is added.
    let (report, summary) = import(&relay, &["--contraindications", SEED, "--table", "seed"]);
    assert_eq!(counts(&report), [rows, rows, 0, 0, 0, 0, rows]);
    let c = &report["contraindications"];
    assert_eq!(c["table"], "seed");
    assert_eq!(c["mode"], "replace");
    assert_eq!(c["unknown_ingredients"], json!([]));
    assert_eq!(c["tables"], json!([{"name": "seed", "pairs": rows}]));
    assert_eq!(report["dry_run"], false);
    assert!(
        summary.contains(&format!("pairs read:          {rows}")),
        "{summary}"
    );
    assert!(!summary.contains("warning"), "{summary}");
    assert_eq!(tables(&db).await, [("seed".to_owned(), n)]);
    let seed_rows = snapshot(&db, "seed").await;

    // Again with --add (and the default table, which is `seed`): everything is already there.
    let (report, _) = import(&relay, &["--contraindications", SEED, "--add"]);
    assert_eq!(counts(&report), [rows, 0, rows, 0, 0, 0, rows]);
    assert_eq!(report["contraindications"]["mode"], "add");
    assert_eq!(snapshot(&db, "seed").await, seed_rows);

    // A second table: line 2 is a seed pair in the other order, line 3 a new pair, line 4 names
    // an ingredient the drug master does not have.
    let vendor = write(
        &relay,
        "vendor.csv",
        "ニトログリセリン,*,シルデナフィルクエン酸塩,内用薬,ベンダーの根拠\n\
         ファモチジン,内用薬,エスタゾラム,内用薬,テスト用の組\n\
         テスト未収載成分,注射薬,エスタゾラム,*,未収載の成分\n",
    );
    let args = [
        "--contraindications",
        vendor.as_str(),
        "--table",
        VENDOR,
        "--add",
    ];
    // A dry run reports what the import would do and writes nothing.
    let (report, summary) = import(&relay, &[&args[..], &["--dry-run"][..]].concat());
    assert_eq!(report["dry_run"], true);
    assert_eq!(counts(&report), [3, 3, 0, 0, 0, 1, 3]);
    assert!(summary.contains("nothing was written"), "{summary}");
    assert_eq!(tables(&db).await, [("seed".to_owned(), n)]);

    let (report, summary) = import(&relay, &args);
    // Tables are independent: the seed pair is stored in this table too, and reported as listed
    // by another table, so the file adds 2 pairs to what the check engine sees.
    assert_eq!(counts(&report), [3, 3, 0, 0, 0, 1, 3]);
    let c = &report["contraindications"];
    assert_eq!(
        c["unknown_ingredients"],
        json!([{"name": "テスト未収載成分", "lines": [4]}])
    );
    assert_eq!(
        c["tables"],
        json!([{"name": "seed", "pairs": rows}, {"name": VENDOR, "pairs": 3}])
    );
    assert!(
        summary.contains("warning: 1 ingredient name(s)"),
        "{summary}"
    );
    assert!(summary.contains("テスト未収載成分 (line 4)"), "{summary}");
    assert_eq!(
        tables(&db).await,
        [("seed".to_owned(), n), (VENDOR.to_owned(), 3)]
    );
    assert_eq!(snapshot(&db, "seed").await, seed_rows);

    // Adding to the second table skips what it has, in either order.
    let more = write(
        &relay,
        "more.csv",
        "エスタゾラム,内用薬,ファモチジン,内用薬,逆順\n\
         ファモチジン,内用薬,アセトアミノフェン,*,もう一組\n",
    );
    let (report, _) = import(
        &relay,
        &[
            "--contraindications",
            more.as_str(),
            "--table",
            VENDOR,
            "--add",
        ],
    );
    assert_eq!(counts(&report), [2, 1, 1, 0, 0, 0, 4]);
    assert_eq!(
        report["contraindications"]["unknown_ingredients"],
        json!([])
    );

    // The engine's read path sees every table, a pair listed twice (in either order) once, with
    // the basis of its first listing.
    let pool = relay::db::pool(&relay::config::Settings::with_database(
        relay::config::DatabaseUrl::new(relay.database_url.clone()),
    ))
    .expect("pool");
    let client = pool.get().await.expect("pooled client");
    let found = relay::db::master::contraindications_involving(
        &client,
        &["シルデナフィルクエン酸塩", "ファモチジン"],
    )
    .await
    .expect("contraindications_involving");
    let sildenafil_rows = seed_text
        .lines()
        .filter(|l| l.contains("シルデナフィルクエン酸塩"))
        .count();
    assert_eq!(found.len(), sildenafil_rows + 2, "{found:#?}");
    let nitro: Vec<_> = found
        .iter()
        .filter(|p| {
            [&p.ingredient_a, &p.ingredient_b]
                .iter()
                .any(|i| *i == "ニトログリセリン")
                && [&p.ingredient_a, &p.ingredient_b]
                    .iter()
                    .any(|i| *i == "シルデナフィルクエン酸塩")
        })
        .collect();
    assert_eq!(nitro.len(), 1, "{nitro:#?}");
    assert_eq!(nitro[0].basis, "PDE5阻害剤 × 硝酸剤・NO供与剤");
    drop(client);

    // Replacing the second table with one pair leaves the seed alone.
    let one = write(
        &relay,
        "one.csv",
        "ファモチジン,内用薬,エスタゾラム,内用薬,置き換え\n",
    );
    let (report, _) = import(
        &relay,
        &["--contraindications", one.as_str(), "--table", VENDOR],
    );
    assert_eq!(counts(&report), [1, 0, 1, 0, 3, 0, 1]);
    assert_eq!(
        tables(&db).await,
        [("seed".to_owned(), n), (VENDOR.to_owned(), 1)]
    );
    assert_eq!(snapshot(&db, "seed").await, seed_rows);
    let vendor_rows = snapshot(&db, VENDOR).await;
    assert!(vendor_rows.contains("置き換え"), "{vendor_rows}");

    // A bad route on line 3: nothing changes, whichever mode, and the error says where.
    let bad = write(
        &relay,
        "bad.csv",
        "ファモチジン,内用薬,アセトアミノフェン,*,x\n\
         アセトアミノフェン,経口,エスタゾラム,*,x\n",
    );
    for extra in [&["--table", VENDOR][..], &["--add"], &["--yakka", YAKKA]] {
        let mut all = vec!["master", "import", "--contraindications", bad.as_str()];
        all.extend_from_slice(extra);
        let out = relay.run(&all);
        assert!(!out.status.success(), "{extra:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("line 3, column 2 (route_a): unknown route `経口`"),
            "{extra:?}: {err}"
        );
        assert!(err.contains("bad.csv"), "{err}");
        assert!(err.contains("nothing was imported"), "{err}");
        assert!(stdout(&out).is_empty(), "no report: {}", stdout(&out));
    }
    assert_eq!(
        tables(&db).await,
        [("seed".to_owned(), n), (VENDOR.to_owned(), 1)]
    );
    assert_eq!(snapshot(&db, "seed").await, seed_rows);
    assert_eq!(snapshot(&db, VENDOR).await, vendor_rows);

    // Options the command refuses before touching anything.
    let out = relay.run(&[
        "master",
        "import",
        "--contraindications",
        SEED,
        "--table",
        "Vendor",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a table name"),
        "{}",
        stderr(&out)
    );
    let out = relay.run(&["master", "import", "--yakka", YAKKA, "--add"]);
    assert!(!out.status.success(), "--add needs --contraindications");

    // `seed demo` reloads table `seed` and leaves the other alone.
    let out = relay.run(&["seed", "demo"]);
    assert!(out.status.success(), "seed demo: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{rows} contraindication pairs (table seed)")),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        tables(&db).await,
        [("seed".to_owned(), n), (VENDOR.to_owned(), 1)]
    );
    assert_eq!(snapshot(&db, VENDOR).await, vendor_rows);
}
