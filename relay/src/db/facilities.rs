//! SQL for `facilities`.

use super::{DbError, GenericClient};
use crate::domain::facility::Facility;
use crate::domain::identifiers::{FacilityCode, FacilityKind, MunicipalityCode};

const COLUMNS: &str = "code, kind, name, address, phone, email, fax_email, accepts_e_prescriptions, municipality_code";

fn from_row(row: &tokio_postgres::Row) -> Facility {
    let code: String = row.get(0);
    let kind: String = row.get(1);
    Facility {
        // Rows only come from validated inserts (and a CHECK on the column).
        code: FacilityCode::parse(&code)
            .unwrap_or_else(|_| panic!("stored facility code {code} is invalid")),
        kind: if kind == "pharmacy" {
            FacilityKind::Pharmacy
        } else {
            FacilityKind::Clinic
        },
        name: row.get(2),
        address: row.get(3),
        phone: row.get(4),
        email: row.get(5),
        fax_email: row.get(6),
        accepts_e_prescriptions: row.get(7),
        municipality_code: row
            .get::<_, Option<String>>(8)
            .and_then(|m| MunicipalityCode::parse(&m).ok()),
    }
}

/// Inserts a new facility; `false` when the code is already registered.
pub async fn insert(c: &impl GenericClient, f: &Facility) -> Result<bool, DbError> {
    Ok(write(c, f, "DO NOTHING").await? == 1)
}

/// Inserts or replaces a facility (used by the demo seed).
pub async fn upsert(c: &impl GenericClient, f: &Facility) -> Result<(), DbError> {
    write(
        c,
        f,
        "DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name, address = EXCLUDED.address,
             phone = EXCLUDED.phone, email = EXCLUDED.email, fax_email = EXCLUDED.fax_email,
             accepts_e_prescriptions = EXCLUDED.accepts_e_prescriptions,
             municipality_code = EXCLUDED.municipality_code, updated_at = now()",
    )
    .await?;
    Ok(())
}

async fn write(c: &impl GenericClient, f: &Facility, on_conflict: &str) -> Result<u64, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO facilities ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (code) {on_conflict}"
        ))
        .await?;
    Ok(c.execute(
        &stmt,
        &[
            &f.code.as_str(),
            &f.kind.as_str(),
            &f.name,
            &f.address,
            &f.phone,
            &f.email,
            &f.fax_email,
            &f.accepts_e_prescriptions,
            &f.municipality_code.as_ref().map(MunicipalityCode::as_str),
        ],
    )
    .await?)
}

pub async fn get(c: &impl GenericClient, code: &FacilityCode) -> Result<Option<Facility>, DbError> {
    let stmt = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM facilities WHERE code = $1"))
        .await?;
    Ok(c.query_opt(&stmt, &[&code.as_str()])
        .await?
        .as_ref()
        .map(from_row))
}

/// Name of a facility for messages such as "held by …".
pub async fn name_of(c: &impl GenericClient, code: &str) -> Result<Option<String>, DbError> {
    let stmt = c
        .prepare_cached("SELECT name FROM facilities WHERE code = $1")
        .await?;
    Ok(c.query_opt(&stmt, &[&code]).await?.map(|r| r.get(0)))
}

/// Every registered facility, by code, with the latest `updated_at` of them all (the directory's
/// version; `None` when there are none).
pub async fn list_all(
    c: &impl GenericClient,
) -> Result<(Vec<Facility>, Option<jiff::Timestamp>), DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, max(updated_at) OVER () FROM facilities ORDER BY code"
        ))
        .await?;
    let rows = c.query(&stmt, &[]).await?;
    let latest = rows.first().map(|r| r.get::<_, jiff::Timestamp>(9));
    Ok((rows.iter().map(from_row).collect(), latest))
}
