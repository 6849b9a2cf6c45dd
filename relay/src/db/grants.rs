//! Least privilege in the database: the role `relay serve` connects as (`database.serving_role`)
//! may read every table, insert into the audit tables and change only the tables the relay
//! updates — never UPDATE, DELETE or TRUNCATE an audit table, never DELETE anywhere, never alter
//! or drop a table (it owns none, so it cannot disable the append-only triggers either).
//! Migrations and imports run as the owner; `relay migrate` re-applies these grants each time so a
//! new table can never be left out (an unclassified table stops the migration with its name).

use super::{DbError, GenericClient};

/// Audit tables: read and append, nothing else (their triggers refuse changes even to the owner).
pub const APPEND_ONLY: &[&str] = &[
    "access_log",
    "check_consents",
    "check_overrides",
    "checks",
    "fallback_events",
    "outage_events",
    "prescription_events",
    "qualifications",
    "receive_failures",
];

/// Tables the serving relay inserts into and updates (never deletes from).
pub const MUTABLE: &[&str] = &[
    "disasters",
    "dispensings",
    "facilities",
    "fallbacks",
    "idempotency_keys",
    "insured_persons",
    "outages",
    "outbox",
    "outbox_attachments",
    "persons",
    "prescriptions",
    "presends",
    "staff",
];

/// Tables loaded by the owner's import commands and only read while serving.
pub const READ_ONLY: &[&str] = &[
    "contraindications",
    "drug_ingredients",
    "drugs",
    "receipt_drugs",
    // refinery's migration history.
    "refinery_schema_history",
];

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "database.serving_role {0:?}: must be a PostgreSQL role name of lower-case letters, digits and _ (at most 63, not starting with a digit)"
    )]
    BadName(String),
    #[error(
        "database.serving_role {0:?} does not exist: create it first (CREATE ROLE {0} LOGIN PASSWORD '…')"
    )]
    NoSuchRole(String),
    #[error(
        "database.serving_role {0:?} owns tables or is a superuser: the serving role must be a separate, unprivileged role"
    )]
    Privileged(String),
    #[error(
        "table {0} has no privileges assigned for the serving role: add it to APPEND_ONLY, MUTABLE or READ_ONLY in relay/src/db/grants.rs"
    )]
    Unclassified(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for GrantError {
    fn from(e: tokio_postgres::Error) -> Self {
        GrantError::Db(DbError::from(e))
    }
}

fn valid_role_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Grants `role` exactly what `relay serve` needs on the current database (idempotent: it revokes
/// everything on the schema's tables first). Run as the owner, after the migrations.
pub async fn grant_serving_role(c: &impl GenericClient, role: &str) -> Result<(), GrantError> {
    if !valid_role_name(role) {
        return Err(GrantError::BadName(role.to_string()));
    }
    let found = c
        .query_opt(
            "SELECT r.rolsuper OR EXISTS (SELECT 1 FROM pg_tables t
                                           WHERE t.schemaname = 'public' AND t.tableowner = r.rolname)
               FROM pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await?;
    match found {
        None => return Err(GrantError::NoSuchRole(role.to_string())),
        Some(r) if r.get::<_, bool>(0) => return Err(GrantError::Privileged(role.to_string())),
        Some(_) => {}
    }
    let tables: Vec<String> = c
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(t) = tables.iter().find(|t| {
        let t = t.as_str();
        !(APPEND_ONLY.contains(&t) || MUTABLE.contains(&t) || READ_ONLY.contains(&t))
    }) {
        return Err(GrantError::Unclassified(t.clone()));
    }
    // The role name is checked above and quoted here: it cannot carry SQL.
    let r = format!("\"{role}\"");
    let mut sql = format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {r};
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {r};
         GRANT USAGE ON SCHEMA public TO {r};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {r};"
    );
    for t in &tables {
        if APPEND_ONLY.contains(&t.as_str()) {
            sql.push_str(&format!("GRANT INSERT ON {t} TO {r};"));
        } else if MUTABLE.contains(&t.as_str()) {
            sql.push_str(&format!("GRANT INSERT, UPDATE ON {t} TO {r};"));
        }
    }
    c.batch_execute(&sql).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_plain_identifiers() {
        for ok in ["relay_app", "_x", "r2"] {
            assert!(valid_role_name(ok), "{ok}");
        }
        for bad in [
            "",
            "2r",
            "Relay",
            "r-x",
            "r\"; DROP TABLE x; --",
            &"a".repeat(64),
        ] {
            assert!(!valid_role_name(bad), "{bad}");
        }
    }

    #[test]
    fn no_table_is_in_two_classes() {
        for t in APPEND_ONLY {
            assert!(!MUTABLE.contains(t) && !READ_ONLY.contains(t), "{t}");
        }
        for t in MUTABLE {
            assert!(!READ_ONLY.contains(t), "{t}");
        }
    }
}
