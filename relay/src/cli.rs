//! The `relay` command line: `serve`, `migrate`, `seed demo`, `token`, `master import`,
//! `insured import`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::auth::{Role, parse_ttl};
use crate::config::Settings;
use crate::contraindication_import::{DEFAULT_TABLE, Mode, TableName};
use crate::domain::identifiers::FacilityCode;
use crate::registry_import::{self, ImportError};
use crate::seed::{self, MasterFiles};
use crate::startup::{self, Application};
use crate::{db, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "E-prescription relay (電子処方箋 relay)"
)]
pub struct Cli {
    /// Directory holding default.toml, {RELAY_ENV}.toml and local.toml.
    #[arg(
        long,
        env = "RELAY_CONFIG_DIR",
        default_value = "config",
        global = true
    )]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (migrates first unless database.migrate_on_start = false).
    Serve,
    /// Apply the SQL migrations in sql/.
    Migrate,
    /// Load demo data.
    Seed {
        #[command(subcommand)]
        what: SeedCommand,
    },
    /// Print a signed JWT the server accepts.
    ///
    /// Example: relay token --facility 9918000010 --role doctor --staff doctor-1 --ttl 1h
    Token {
        /// 10-digit institution or pharmacy code (check digit verified).
        #[arg(long)]
        facility: String,
        /// doctor, clinic_clerk, pharmacist, pharmacy_clerk or admin.
        #[arg(long)]
        role: Role,
        /// Staff id (the token's `sub`).
        #[arg(long)]
        staff: String,
        /// Lifetime such as 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Drug master and contraindication tables.
    Master {
        #[command(subcommand)]
        what: MasterCommand,
    },
    /// The eligibility registry (insured persons and their coverages).
    Insured {
        #[command(subcommand)]
        what: InsuredCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Demo facilities, staff, insured persons and the default drug master; idempotent.
    Demo {
        /// Directory with the MHLW list and the contraindication seed (default: master.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MasterCommand {
    /// Import master files in one transaction and print a JSON report.
    ///
    /// Each given file replaces its table: --yakka the drug master, --receipt the レセ電 master,
    /// --contraindications the pairs of one named contraindication table (--table, default
    /// `seed`); other contraindication tables are left alone, and the check engine uses the pairs
    /// of all tables. With --add the file's pairs are added to the table instead, skipping those
    /// it already has (A × B and B × A are one pair). Every file is parsed before the database is
    /// touched, and a bad file (errors name the line and the column) changes nothing.
    ///
    /// The report (JSON on stdout, a summary on stderr) counts the pairs read, added, already
    /// present, repeated in the file and removed, and lists the ingredient names found nowhere in
    /// the drug master with the lines they are on: a warning, not an error, since a licensed
    /// table may be ahead of the master.
    ///
    /// Examples:
    ///
    ///   relay master import --yakka ../shared/data/mhlw-yakka-list-20250716.csv
    ///       --contraindications ../shared/data/contraindications-seed.csv --receipt y.csv
    ///
    ///   relay master import --contraindications vendor-2026-11.csv --table vendor-2026-11
    ///
    ///   relay master import --contraindications additions.csv --table vendor-2026-11 --add --dry-run
    #[command(verbatim_doc_comment)]
    Import {
        /// MHLW 薬価基準収載品目リスト (UTF-8 CSV with its header row).
        #[arg(long)]
        yakka: Option<PathBuf>,
        /// 併用禁忌 pairs: ingredient_a,route_a,ingredient_b,route_b,basis (UTF-8, header; route
        /// 内用薬, 注射薬, 外用薬, 歯科用薬剤 or * for any).
        #[arg(long)]
        contraindications: Option<PathBuf>,
        /// The contraindication table to replace or add to: a-z, 0-9, `.`, `_`, `-`.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_TABLE, requires = "contraindications")]
        table: TableName,
        /// Add the file's pairs to the table instead of replacing its pairs.
        #[arg(long, requires = "contraindications")]
        add: bool,
        /// レセ電 医薬品マスター y.csv (Shift_JIS, no header, official column order).
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// Import and report, then roll back: nothing is written.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum InsuredCommand {
    /// Add the coverages of a CSV file in one transaction: all rows or none.
    ///
    /// Example: relay insured import registry.csv
    ///
    /// The header names the columns, in any order: insurer_number, symbol, number, branch, name,
    /// name_kana, sex, birth_date, valid_from, valid_until, card_id, certificate_expires_on,
    /// documents, person_ref, address. Required: insurer_number, number, branch, name, sex,
    /// birth_date, valid_from. sex is male/female, 1/2 or 男/女; dates are YYYY-MM-DD or
    /// YYYY/MM/DD; documents is a `;`-separated list of qualification_certificate and
    /// eligibility_notice; card_id and certificate_expires_on go together. The file is UTF-8
    /// (with or without BOM) or Shift_JIS as Excel saves it. Every error is reported with its line
    /// and nothing is written unless every row is good; rows already registered are counted as
    /// already present, so importing the same file again changes nothing.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Check the file and report what would be added, then roll back.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(&cli.config_dir)?;
    if !matches!(cli.command, Command::Serve) {
        // `statement_timeout` bounds request handling; migrations and imports may take longer.
        settings.database.statement_timeout_ms = 0;
    }
    telemetry::init(&settings.log);
    match cli.command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until_stopped().await?;
            tracing::info!("relay stopped");
        }
        Command::Migrate => {
            let pool = db::pool(&settings)?;
            let applied = db::migrate_and_grant(&pool, &settings)
                .await
                .with_context(|| format!("cannot migrate {}", settings.database_url.redacted()))?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for m in applied {
                println!("applied {m}");
            }
        }
        Command::Seed {
            what: SeedCommand::Demo { data_dir },
        } => {
            let pool = db::pool(&settings)?;
            db::migrate(&pool).await?;
            let dir = data_dir.unwrap_or_else(|| settings.master.data_dir.clone());
            let report = seed::demo(&pool, &dir).await?;
            let pairs = report.contraindications.as_ref();
            println!(
                "demo seeded: {} facilities, {} staff, {} insured persons; master: {} drugs, {} ingredient rows, {} contraindication pairs (table {})",
                seed::demo_facilities().len(),
                seed::DEMO_STAFF.len(),
                seed::demo_insured(crate::domain::time::today()).len(),
                report.drugs,
                report.ingredients,
                pairs.map_or(0, |c| c.stored),
                DEFAULT_TABLE,
            );
            let unknown = pairs.map_or(&[][..], |c| c.unknown_ingredients.as_slice());
            if !unknown.is_empty() {
                let names: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("{} ({})", u.name, u.where_in_file()))
                    .collect();
                println!(
                    "contraindication ingredients not found in the drug master: {}",
                    names.join(", ")
                );
            }
        }
        Command::Token {
            facility,
            role,
            staff,
            ttl,
        } => {
            let facility =
                FacilityCode::parse(&facility).map_err(|e| anyhow::anyhow!("--facility: {e}"))?;
            if staff.trim().is_empty() {
                anyhow::bail!("--staff must not be empty");
            }
            let keys = startup::load_keys(&settings)?;
            println!("{}", keys.mint(staff.trim(), facility.as_str(), role, ttl)?);
        }
        Command::Master {
            what:
                MasterCommand::Import {
                    yakka,
                    contraindications,
                    table,
                    add,
                    receipt,
                    dry_run,
                },
        } => {
            if yakka.is_none() && contraindications.is_none() && receipt.is_none() {
                anyhow::bail!("give at least one of --yakka, --contraindications, --receipt");
            }
            let pool = db::pool(&settings)?;
            // A dry run writes nothing, not even the schema.
            if !dry_run {
                db::migrate(&pool).await?;
            }
            let report = seed::import_master(
                &pool,
                &MasterFiles {
                    yakka,
                    contraindications,
                    receipt,
                    contraindication_table: table,
                    contraindication_mode: if add { Mode::Add } else { Mode::Replace },
                    dry_run,
                },
            )
            .await
            .context("nothing was imported")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if let Some(c) = &report.contraindications {
                eprintln!("{c}");
            }
            if dry_run {
                eprintln!("dry run: rolled back, nothing was written");
            }
        }
        Command::Insured {
            what: InsuredCommand::Import { file, dry_run },
        } => import_insured(&settings, &file, dry_run).await?,
    }
    Ok(())
}

/// `relay insured import`: every row is checked before the database is touched.
async fn import_insured(
    settings: &Settings,
    file: &std::path::Path,
    dry_run: bool,
) -> anyhow::Result<()> {
    let shown = file.display();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {shown}"))?;
    let registry = match registry_import::parse(&bytes, crate::domain::time::today()) {
        Ok(r) => r,
        Err(rejected) => {
            for e in &rejected.errors {
                eprintln!("{e}");
            }
            let encoding = rejected
                .encoding
                .map(|e| format!(" (read as {e})"))
                .unwrap_or_default();
            anyhow::bail!(
                "{shown}{encoding}: {} error(s); nothing was imported",
                rejected.errors.len()
            );
        }
    };
    let pool = db::pool(settings)?;
    if !dry_run {
        db::migrate(&pool).await?;
    }
    let report = match registry_import::import(&pool, &registry.rows, dry_run).await {
        Ok(r) => r,
        Err(ImportError::Conflicts(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{shown}: {} row(s) conflict with the registry; nothing was imported",
                errors.len()
            );
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("{shown}: nothing was imported")));
        }
    };
    if dry_run {
        println!("dry run of {shown}: checked against the registry, nothing was written");
    } else {
        println!("imported {shown}");
    }
    println!("encoding:         {}", registry.encoding);
    println!("rows read:        {}", report.rows);
    println!("coverages added:  {}", report.added);
    println!("already present:  {}", report.already_present);
    println!("persons created:  {}", report.persons_created);
    println!(
        "persons linked:   {} (coverages joining a person of an earlier line: {}, \
         a person already registered: {})",
        report.linked_in_file + report.linked_existing,
        report.linked_in_file,
        report.linked_existing
    );
    Ok(())
}
