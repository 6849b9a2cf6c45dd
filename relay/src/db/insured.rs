//! SQL for `insured_persons` (the eligibility registry).

use uuid::Uuid;

use super::{DbError, GenericClient};
use crate::domain::facility::InsuredPerson;

/// Adds a coverage period; `None` when the same identity already has a coverage from that date.
pub async fn insert(c: &impl GenericClient, p: &InsuredPerson) -> Result<Option<Uuid>, DbError> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO insured_persons (id, insurer_number, symbol, number, branch, name, name_kana, sex,
                 birth_date, valid_from, valid_until, card_id, certificate_expires_on, documents)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (insurer_number, symbol, number, branch, valid_from) DO NOTHING
             RETURNING id",
        )
        .await?;
    let id = Uuid::now_v7();
    let documents: Vec<&str> = p.documents.iter().map(|d| d.as_str()).collect();
    let sex = match p.sex {
        crate::domain::prescription::Sex::Male => "male",
        crate::domain::prescription::Sex::Female => "female",
    };
    let row = c
        .query_opt(
            &stmt,
            &[
                &id,
                &p.insurer_number.as_str(),
                &p.symbol.as_str(),
                &p.number.as_str(),
                &p.branch.as_str(),
                &p.name,
                &p.name_kana,
                &sex,
                &p.birth_date,
                &p.valid_from,
                &p.valid_until,
                &p.card.as_ref().map(|c| c.card_id.as_str()),
                &p.card.as_ref().map(|c| c.certificate_expires_on),
                &documents,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
