//! `bench-data`: the national-scale data set the benchmark (scripts/bench, BENCHMARKS.md) runs on.
//!
//!   bench-data prepare --database-url URL --out DIR [--persons 1000000] [--per-op 100000]
//!       facilities, insured persons (with マイナ保険証), the open prescriptions that receive,
//!       dispense and the card path work on, and the request bodies for each operation
//!   bench-data history --database-url URL --rounds 1..=5 [--persons 1000000]
//!       history: each round gives every person one more prescription of their regimen, issued
//!       in the last 90 days and dispensed (2 % cancelled), with its dispensing and events
//!
//! Everything goes in with COPY. Person `k` is a pure function of (seed, k) (people.rs), so the
//! rounds agree with `prepare` without reading anything back. The database must be migrated and
//! seeded (`relay seed demo`: the drug master and the demo facilities) first.
//!
//! Persons are split into groups of `per_op`, in this order: check, register (relay),
//! register (pgbench), receive (relay), receive (pgbench), dispense, card path; the rest have
//! history only. A group's request can succeed once per person, which is why the groups differ.

mod copy;
mod documents;
mod drugs;
mod people;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use rand::Rng;
use relay::domain::identifiers::ExchangeNumber;
use relay::domain::lifecycle::EventAction;
use relay::domain::time::{today, tokyo};
use serde_json::json;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::copy::Copy;
use crate::documents::{
    draft_json, fresh_product, items_json, oral_rp, regimen_products, validated,
};
use crate::drugs::DrugSets;
use crate::people::{CLINICS, PHARMACIES, Person, clinic, pharmacy};

/// The facilities the load generator acts as (demo seed): clinic 検証用病院 and pharmacy 検証用薬局.
const BENCH_CLINIC: &str = "9918000010";
const BENCH_PHARMACY: &str = "9948000014";

#[derive(Parser)]
#[command(
    name = "bench-data",
    about = "Benchmark data: national-scale registry and history via COPY"
)]
struct Cli {
    #[arg(long, env = "BENCH_DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    persons: u32,
    #[arg(long, default_value_t = 20_261_124)]
    seed: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Facilities, persons, open prescriptions and the request files.
    Prepare {
        #[arg(long)]
        out: PathBuf,
        /// Persons (and request lines) per operation group.
        #[arg(long, default_value_t = 100_000)]
        per_op: u32,
    },
    /// History rounds, e.g. `--rounds 1..=1` then `--rounds 2..=5`.
    History {
        #[arg(long, value_parser = parse_rounds)]
        rounds: RangeInclusive<u32>,
    },
}

fn parse_rounds(s: &str) -> Result<RangeInclusive<u32>, String> {
    let (a, b) = s
        .split_once("..=")
        .ok_or_else(|| format!("rounds must look like 1..=5, got {s}"))?;
    let a: u32 = a.parse().map_err(|_| format!("bad first round {a}"))?;
    let b: u32 = b.parse().map_err(|_| format!("bad last round {b}"))?;
    if a == 0 || b < a {
        return Err("rounds start at 1 and must not run backwards".into());
    }
    Ok(a..=b)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = connect(&cli.database_url).await?;
    let drugs = DrugSets::load(&client).await?;
    match cli.command {
        Command::Prepare { out, per_op } => {
            anyhow::ensure!(
                u64::from(per_op) * 7 <= u64::from(cli.persons),
                "--persons must be at least 7 × --per-op"
            );
            prepare(
                &cli.database_url,
                &client,
                &drugs,
                cli.seed,
                cli.persons,
                per_op,
                &out,
            )
            .await
        }
        Command::History { rounds } => {
            history(
                &cli.database_url,
                &client,
                &drugs,
                cli.seed,
                cli.persons,
                rounds,
            )
            .await
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| "connecting to the benchmark database")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("database connection: {e}");
        }
    });
    // Bulk load: a lost tail would be regenerated, so don't wait for each commit's flush.
    client.batch_execute("SET synchronous_commit = off").await?;
    Ok(client)
}

struct Groups {
    per_op: u32,
}

impl Groups {
    fn range(&self, n: u32) -> std::ops::Range<u32> {
        n * self.per_op..(n + 1) * self.per_op
    }
    fn check(&self) -> std::ops::Range<u32> {
        self.range(0)
    }
    fn register(&self) -> std::ops::Range<u32> {
        self.range(1)
    }
    fn register_pgbench(&self) -> std::ops::Range<u32> {
        self.range(2)
    }
    fn receive(&self) -> std::ops::Range<u32> {
        self.range(3)
    }
    fn receive_pgbench(&self) -> std::ops::Range<u32> {
        self.range(4)
    }
    fn dispense(&self) -> std::ops::Range<u32> {
        self.range(5)
    }
    fn card(&self) -> std::ops::Range<u32> {
        self.range(6)
    }
}

fn lines(out: &Path, name: &str) -> anyhow::Result<BufWriter<File>> {
    let path = out.join(name);
    Ok(BufWriter::new(
        File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    ))
}

fn took(what: &str, rows: u64, started: Instant) {
    let s = started.elapsed().as_secs_f64();
    println!(
        "  {what:<34} {rows:>10} rows in {s:>6.1} s ({:>8.0} rows/s)",
        rows as f64 / s
    );
}

async fn prepare(
    url: &str,
    client: &Client,
    drugs: &DrugSets,
    seed: u64,
    persons: u32,
    per_op: u32,
    out: &Path,
) -> anyhow::Result<()> {
    let already: i64 = client
        .query_one(
            "SELECT count(*) FROM persons WHERE card_id LIKE 'BENCH-%'",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        already == 0,
        "this database already holds benchmark persons; use a fresh database"
    );
    std::fs::create_dir_all(out)?;
    let g = Groups { per_op };
    let all = Instant::now();
    println!("prepare: {persons} persons, {per_op} per operation, seed {seed}");

    let t = Instant::now();
    let mut f = Copy::start(client, "facilities", "code, kind, name, phone, email").await?;
    for n in 0..CLINICS {
        f.text(&clinic(n))
            .text("clinic")
            .text(&format!("ベンチ診療所{n}"));
        f.text("03-0000-0000")
            .text("clinic@bench.invalid")
            .end_row()
            .await?;
    }
    for n in 0..PHARMACIES {
        f.text(&pharmacy(n))
            .text("pharmacy")
            .text(&format!("ベンチ薬局{n}"));
        f.text("03-0000-0000")
            .text("pharmacy@bench.invalid")
            .end_row()
            .await?;
    }
    took("facilities", f.finish().await?, t);

    let t = Instant::now();
    let mut p = Copy::start(
        client,
        "persons",
        "id, card_id, certificate_expires_on, name, name_kana, sex, birth_date",
    )
    .await?;
    let second = connect(url).await?;
    let mut i = Copy::start(
        &second,
        "insured_persons",
        "id, person_id, insurer_number, symbol, number, branch, name, name_kana, sex, birth_date, valid_from",
    )
    .await?;
    for k in 0..persons {
        let person = Person::new(seed, k, drugs);
        p.plain(person.id).text(&person.card_id).plain("2030-03-31");
        p.text(&person.name)
            .text(&person.name_kana)
            .text(person.sex);
        p.plain(person.birth_date).end_row().await?;
        i.plain(person.id)
            .plain(person.id)
            .text(&person.insurer_number);
        i.text(&person.symbol)
            .text(&person.number)
            .text(person.branch);
        i.text(&person.name)
            .text(&person.name_kana)
            .text(person.sex);
        i.plain(person.birth_date)
            .plain("2020-04-01")
            .end_row()
            .await?;
    }
    took("persons", p.finish().await?, t);
    took("insured_persons (one coverage each)", i.finish().await?, t);

    // Open prescriptions: registered today (receive by number, card path) or held by the bench
    // pharmacy (dispense), each with a fresh drug.
    let t = Instant::now();
    let today = today();
    client
        .batch_execute(
            "CREATE TABLE bench_receive (k integer PRIMARY KEY, prescription_id uuid NOT NULL,
                 exchange_number text NOT NULL, insurer_number text NOT NULL, symbol text NOT NULL,
                 number text NOT NULL, branch text NOT NULL, birth_date date NOT NULL);
             CREATE TABLE bench_register (k integer PRIMARY KEY, insurer_number text NOT NULL,
                 symbol text NOT NULL, number text NOT NULL, branch text NOT NULL,
                 birth_date date NOT NULL, drug_code text NOT NULL, document jsonb NOT NULL);",
        )
        .await?;
    let mut rx = Copy::start(client, "prescriptions", PRESCRIPTION_COLUMNS).await?;
    let mut ev = Copy::deferred();
    let mut receive = lines(out, "receive.jsonl")?;
    let mut dispense = lines(out, "dispense.tsv")?;
    let mut qualify = lines(out, "qualify.jsonl")?;
    let third = connect(url).await?;
    let mut pg_receive = Copy::start(
        &third,
        "bench_receive",
        "k, prescription_id, exchange_number, insurer_number, symbol, number, branch, birth_date",
    )
    .await?;
    let mut rng = people::rng(seed, 2, 0);
    let now = Timestamp::now();
    let open = g.receive().start..g.card().end;
    // Each was registered through the relay, so each has the check that ran inside registration;
    // committed first, as prescriptions point at it.
    let check_id =
        |k: u32| Uuid::from_u64_pair(0xC4EC_0000_0000_0000 | (seed & 0xFFFF_FFFF), u64::from(k));
    let mut ck = Copy::start(
        &second,
        "checks",
        "id, at, facility_code, staff_id, role, context, person_id, insurer_number, symbol, number,
         branch, birth_date, outcome, details_visible, drug_codes, hits",
    )
    .await?;
    for k in open.clone() {
        let person = Person::new(seed, k, drugs);
        let fresh = fresh_product(&person, drugs);
        ck.plain(check_id(k))
            .plain(now)
            .text(BENCH_CLINIC)
            .text("doctor-1")
            .text("doctor");
        ck.text("prescribing")
            .plain(person.id)
            .text(&person.insurer_number)
            .text(&person.symbol);
        ck.text(&person.number)
            .text(person.branch)
            .plain(person.birth_date)
            .text("clear");
        ck.text("f")
            .text(&format!("{{{}}}", fresh.yj_code))
            .text("[]")
            .end_row()
            .await?;
    }
    took("checks of the open prescriptions", ck.finish().await?, t);
    for k in open.clone() {
        let person = Person::new(seed, k, drugs);
        let fresh = fresh_product(&person, drugs);
        let draft = draft_json(&person, today, vec![oral_rp(&[fresh], 14)]);
        let document = validated(&draft, today)?;
        let id = Uuid::now_v7();
        let number = ExchangeNumber::random(&mut rng);
        let held = g.dispense().contains(&k);
        let row = Row {
            id,
            issuer: BENCH_CLINIC,
            status: if held { "dispensing" } else { "registered" },
            number: number.as_str(),
            person: &person,
            issued_on: today,
            valid_until: document.valid_until,
            document: &serde_json::to_value(&document)?,
            holder: held.then_some(BENCH_PHARMACY),
            held_since: held.then_some(now),
            created_at: now,
            check_id: Some(check_id(k)),
        };
        row.copy(&mut rx).await?;
        event(
            &mut ev,
            id,
            now,
            BENCH_CLINIC,
            "doctor",
            EventAction::Registered,
        )
        .await?;
        if held {
            event(
                &mut ev,
                id,
                now,
                BENCH_PHARMACY,
                "pharmacist",
                EventAction::Received,
            )
            .await?;
            let body =
                json!({"dispensed_on": today.to_string(), "items": items_json(&[fresh], 14)});
            writeln!(dispense, "{id}\t{body}")?;
        }
        let receive_body = json!({"exchange_number": number.as_str(), "insured": person.insured_json(),
                                  "birth_date": person.birth_date.to_string()});
        if g.receive().contains(&k) {
            writeln!(receive, "{receive_body}")?;
        }
        if g.receive_pgbench().contains(&k) {
            pg_receive
                .plain(k - g.receive_pgbench().start + 1)
                .plain(id)
                .text(number.as_str());
            pg_receive
                .text(&person.insurer_number)
                .text(&person.symbol)
                .text(&person.number);
            pg_receive
                .text(person.branch)
                .plain(person.birth_date)
                .end_row()
                .await?;
        }
        if g.card().contains(&k) {
            let body = json!({"card_id": person.card_id, "auth": "face",
                              "consent": {"medication": true, "diagnosis": false, "checkups": false}});
            writeln!(qualify, "{body}")?;
        }
    }
    took("open prescriptions", rx.finish().await?, t);
    ev.finish_into(&second, "prescription_events", EVENT_COLUMNS)
        .await?;
    pg_receive.finish().await?;
    receive.flush()?;
    dispense.flush()?;
    qualify.flush()?;

    // Requests that create: registrations with a fresh drug, checks of a chronic one.
    let t = Instant::now();
    let mut register = lines(out, "register.jsonl")?;
    let mut check = lines(out, "check.jsonl")?;
    let mut pg_register = Copy::start(
        &third,
        "bench_register",
        "k, insurer_number, symbol, number, branch, birth_date, drug_code, document",
    )
    .await?;
    for k in g.check().start..g.register_pgbench().end {
        let person = Person::new(seed, k, drugs);
        if g.check().contains(&k) {
            let chronic = regimen_products(&person, drugs);
            let body = json!({
                "patient": {"insured": person.insured_json(), "birth_date": person.birth_date.to_string()},
                "context": "prescribing",
                "rps": [oral_rp(&chronic[..1], 28)],
            });
            writeln!(check, "{body}")?;
            continue;
        }
        let fresh = fresh_product(&person, drugs);
        let draft = draft_json(&person, today, vec![oral_rp(&[fresh], 14)]);
        if g.register().contains(&k) {
            writeln!(register, "{draft}")?;
        } else {
            let document = serde_json::to_value(validated(&draft, today)?)?;
            pg_register
                .plain(k - g.register_pgbench().start + 1)
                .text(&person.insurer_number);
            pg_register
                .text(&person.symbol)
                .text(&person.number)
                .text(person.branch);
            pg_register.plain(person.birth_date).text(&fresh.yj_code);
            pg_register.text(&document.to_string()).end_row().await?;
        }
    }
    took(
        "request bodies, pgbench tables",
        pg_register.finish().await?,
        t,
    );
    register.flush()?;
    check.flush()?;

    let t = Instant::now();
    client.batch_execute("ANALYZE").await?;
    took("ANALYZE", 0, t);
    println!("prepare: done in {:.1} s", all.elapsed().as_secs_f64());
    Ok(())
}

const PRESCRIPTION_COLUMNS: &str =
    "id, issuer_code, issued_by, issue_type, status, exchange_number,
    insurer_number, symbol, number, branch, birth_date, issued_on, valid_until, uses_dispensed,
    document, holder_code, held_since, cancellation_reason, cancelled_at, created_at, updated_at,
    check_id";
const EVENT_COLUMNS: &str = "prescription_id, at, actor, facility_code, role, action";

struct Row<'a> {
    id: Uuid,
    issuer: &'a str,
    status: &'a str,
    number: &'a str,
    person: &'a Person,
    issued_on: Date,
    valid_until: Date,
    document: &'a serde_json::Value,
    holder: Option<&'a str>,
    held_since: Option<Timestamp>,
    created_at: Timestamp,
    check_id: Option<Uuid>,
}

impl Row<'_> {
    async fn copy(&self, c: &mut Copy) -> anyhow::Result<()> {
        let p = self.person;
        c.plain(self.id)
            .text(self.issuer)
            .text("doctor-1")
            .text("electronic");
        c.text(self.status)
            .text(self.number)
            .text(&p.insurer_number)
            .text(&p.symbol);
        c.text(&p.number)
            .text(p.branch)
            .plain(p.birth_date)
            .plain(self.issued_on);
        c.plain(self.valid_until);
        c.plain(if self.status == "dispensed" { 1 } else { 0 });
        c.text(&self.document.to_string()).opt(self.holder);
        match self.held_since {
            Some(t) => c.plain(t),
            None => c.opt(None),
        };
        if self.status == "cancelled" {
            c.text("患者の申し出により取消").plain(self.created_at);
        } else {
            c.opt(None).opt(None);
        }
        c.plain(self.created_at).plain(self.created_at);
        match self.check_id {
            Some(id) => c.plain(id),
            None => c.opt(None),
        };
        c.end_row().await
    }
}

async fn event(
    c: &mut Copy,
    id: Uuid,
    at: Timestamp,
    facility: &str,
    role: &str,
    action: EventAction,
) -> anyhow::Result<()> {
    let actor = if role == "doctor" {
        "doctor-1"
    } else {
        "pharmacist-1"
    };
    c.plain(id)
        .plain(at)
        .text(actor)
        .text(facility)
        .text(role)
        .text(action.as_str());
    c.end_row().await
}

/// One prescription per person per round, issued in the last 90 days, mostly dispensed.
async fn history(
    url: &str,
    client: &Client,
    drugs: &DrugSets,
    seed: u64,
    persons: u32,
    rounds: RangeInclusive<u32>,
) -> anyhow::Result<()> {
    let today = today();
    let tz = tokyo();
    let second = connect(url).await?;
    let third = connect(url).await?;
    for round in rounds {
        let t = Instant::now();
        let mut rx = Copy::start(client, "prescriptions", PRESCRIPTION_COLUMNS).await?;
        // Both point at prescriptions by foreign key: sent once those are committed.
        let mut ds = Copy::deferred();
        let mut ev = Copy::deferred();
        for k in 0..persons {
            let person = Person::new(seed, k, drugs);
            let mut r = people::rng(seed, 3 + u64::from(round), u64::from(k));
            let issued_on = today - r.random_range(1..90).days();
            let products = regimen_products(&person, drugs);
            let days = [14, 28, 28, 30][r.random_range(0..4)];
            let draft = draft_json(&person, issued_on, vec![oral_rp(&products, days)]);
            let document = validated(&draft, issued_on)?;
            let issuer = clinic(r.random_range(0..CLINICS));
            let at = issued_on
                .at(r.random_range(9..18), r.random_range(0..60), 0, 0)
                .to_zoned(tz.clone())?
                .timestamp();
            let cancelled = r.random_bool(0.02);
            let id = Uuid::now_v7();
            let number = ExchangeNumber::random(&mut r);
            Row {
                id,
                issuer: &issuer,
                status: if cancelled { "cancelled" } else { "dispensed" },
                number: number.as_str(),
                person: &person,
                issued_on,
                valid_until: document.valid_until,
                document: &serde_json::to_value(&document)?,
                holder: None,
                held_since: None,
                created_at: at,
                check_id: None,
            }
            .copy(&mut rx)
            .await?;
            event(&mut ev, id, at, &issuer, "doctor", EventAction::Registered).await?;
            if cancelled {
                event(&mut ev, id, at, &issuer, "doctor", EventAction::Cancelled).await?;
                continue;
            }
            let dispensed_on = (issued_on + r.random_range(0..3).days()).min(today);
            let pharmacy = pharmacy(r.random_range(0..PHARMACIES));
            let recorded = dispensed_on
                .at(r.random_range(9..19), r.random_range(0..60), 0, 0)
                .to_zoned(tz.clone())?
                .timestamp()
                .max(at);
            ds.plain(id)
                .plain(1)
                .text(&pharmacy)
                .text("pharmacist-1")
                .plain(dispensed_on);
            ds.text(&items_json(&products, days).to_string())
                .plain(recorded);
            ds.end_row().await?;
            event(
                &mut ev,
                id,
                recorded,
                &pharmacy,
                "pharmacist",
                EventAction::Dispensed,
            )
            .await?;
        }
        took(
            &format!("history round {round}: prescriptions"),
            rx.finish().await?,
            t,
        );
        let (d, e) = tokio::try_join!(
            ds.finish_into(
                &second,
                "dispensings",
                "prescription_id, use_number, pharmacy_code, pharmacist, dispensed_on, items, recorded_at",
            ),
            ev.finish_into(&third, "prescription_events", EVENT_COLUMNS),
        )?;
        took("  dispensings", d, t);
        took("  events", e, t);
    }
    let t = Instant::now();
    client
        .batch_execute("ANALYZE prescriptions; ANALYZE dispensings; ANALYZE prescription_events")
        .await?;
    took("ANALYZE", 0, t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_an_inclusive_range_from_one() {
        assert_eq!(parse_rounds("2..=5"), Ok(2..=5));
        for bad in ["0..=3", "5..=2", "1..5", "x..=2"] {
            assert!(parse_rounds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn groups_do_not_overlap() {
        let g = Groups { per_op: 10 };
        let all = [
            g.check(),
            g.register(),
            g.register_pgbench(),
            g.receive(),
            g.receive_pgbench(),
            g.dispense(),
            g.card(),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(a.end <= b.start, "{a:?} and {b:?}");
            }
        }
    }
}
