//! SQL for `idempotency_keys`. The key row is inserted inside the transaction that performs the
//! change: a concurrent request with the same key waits on the row lock until the first commits
//! (then sees its stored response) or rolls back (then proceeds itself).

use super::{DbError, GenericClient};

pub enum Claim {
    /// The key is new: perform the request and [`store`] its response before committing.
    Fresh,
    /// The key was used before with this request: answer the stored response.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used before with a different request.
    Mismatch,
}

pub async fn claim(
    c: &impl GenericClient,
    facility_code: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Claim, DbError> {
    // A placeholder row (status 0) holds the key until `store` fills it in the same transaction.
    let insert = c
        .prepare_cached(
            "INSERT INTO idempotency_keys (facility_code, key, request_hash, response_status, response_body)
             VALUES ($1, $2, $3, 0, 'null') ON CONFLICT DO NOTHING",
        )
        .await?;
    if c.execute(&insert, &[&facility_code, &key, &request_hash])
        .await?
        == 1
    {
        return Ok(Claim::Fresh);
    }
    let select = c
        .prepare_cached(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys
             WHERE facility_code = $1 AND key = $2",
        )
        .await?;
    let row = c.query_one(&select, &[&facility_code, &key]).await?;
    let stored_hash: Vec<u8> = row.get(0);
    if stored_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    Ok(Claim::Replay {
        status: row.get::<_, i16>(1) as u16,
        body: row.get(2),
    })
}

pub async fn store(
    c: &impl GenericClient,
    facility_code: &str,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), DbError> {
    let stmt = c
        .prepare_cached(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4
             WHERE facility_code = $1 AND key = $2",
        )
        .await?;
    c.execute(&stmt, &[&facility_code, &key, &(status as i16), body])
        .await?;
    Ok(())
}
