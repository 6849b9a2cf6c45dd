//! SQL for `receive_failures`: failed 引換番号 lookups counted per insurance identity and pharmacy.

use super::{DbError, GenericClient};

/// Failures inside the window, and the seconds until the oldest of them leaves it.
#[derive(Debug, Clone, Copy)]
pub struct Recent {
    pub count: i64,
    pub seconds_until_oldest_expires: i64,
}

/// Counts failures in the window where `column = key`; the expiry is that of the failure that must
/// leave the window before the count drops below `limit`.
async fn recent(
    c: &impl GenericClient,
    column: &str,
    key: &(dyn tokio_postgres::types::ToSql + Sync),
    window_seconds: i64,
    limit: i64,
) -> Result<Recent, DbError> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH w AS (SELECT at FROM receive_failures
                         WHERE {column} = $1 AND at > now() - make_interval(secs => $2))
             SELECT (SELECT count(*) FROM w),
                    (SELECT extract(epoch FROM at + make_interval(secs => $2) - now())::float8
                       FROM w ORDER BY at DESC OFFSET greatest($3::bigint - 1, 0) LIMIT 1)"
        ))
        .await?;
    let row = c
        .query_one(&stmt, &[key, &(window_seconds as f64), &limit])
        .await?;
    Ok(Recent {
        count: row.get(0),
        seconds_until_oldest_expires: row.get::<_, Option<f64>>(1).unwrap_or(0.0).ceil() as i64,
    })
}

/// Takes the transaction's locks on the pharmacy's and the identity's counters, so lookups by
/// 引換番号 for either run one after another: each counts the failures its predecessors
/// committed, and a burst of guesses sent at once gets no more than the limit. Always the
/// pharmacy first, then the identity: nobody holds an identity lock while waiting for a pharmacy's.
pub async fn serialize(
    c: &impl GenericClient,
    pharmacy_code: &str,
    identity_hash: &[u8],
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended('receive_failures/pharmacy/' || $1, 0)),
                    pg_advisory_xact_lock(hashtextextended('receive_failures/identity/' || encode($2, 'hex'), 0))",
        )
        .await?;
    c.execute(&stmt, &[&pharmacy_code, &identity_hash]).await?;
    Ok(())
}

/// Failures for one insurance identity (by its hash), from any pharmacy.
pub async fn identity_failures(
    c: &impl GenericClient,
    identity_hash: &[u8],
    window_seconds: i64,
    limit: i64,
) -> Result<Recent, DbError> {
    recent(c, "identity_hash", &identity_hash, window_seconds, limit).await
}

/// Failures from one pharmacy, for any identity.
pub async fn pharmacy_failures(
    c: &impl GenericClient,
    pharmacy_code: &str,
    window_seconds: i64,
    limit: i64,
) -> Result<Recent, DbError> {
    recent(c, "pharmacy_code", &pharmacy_code, window_seconds, limit).await
}

pub async fn record_failure(
    c: &impl GenericClient,
    pharmacy_code: &str,
    identity_hash: &[u8],
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO receive_failures (pharmacy_code, identity_hash) VALUES ($1, $2)",
        )
        .await?;
    c.execute(&stmt, &[&pharmacy_code, &identity_hash]).await?;
    Ok(())
}
