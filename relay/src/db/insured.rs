//! SQL for the eligibility registry: `persons` and their coverages in `insured_persons`.

use jiff::civil::Date;
use uuid::Uuid;

use super::{DbError, GenericClient};
use crate::domain::eligibility::{Card, Coverage, PersonRecord};
use crate::domain::facility::{HeldDocument, InsuredPerson};
use crate::domain::identifiers::{
    Branch, InsuranceIdentity, InsuredNumber, InsuredSymbol, InsurerNumber,
};
use crate::domain::prescription::Sex;

/// The outcome of adding a coverage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Created {
        coverage_id: Uuid,
        person_id: Uuid,
    },
    /// The same identity already has a coverage from that date.
    Exists,
    /// The card belongs to another person of the registry.
    CardInUse,
    /// The person found by `person_ref`, card or identity has another birth date or reference.
    PersonMismatch,
    /// Another request created the same person at the same moment; retrying succeeds.
    Concurrent,
}

fn sex_str(s: Sex) -> &'static str {
    match s {
        Sex::Male => "male",
        Sex::Female => "female",
    }
}

#[derive(Clone)]
struct Found {
    id: Uuid,
    birth_date: Date,
    person_ref: Option<String>,
}

async fn find_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Found>, DbError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?.map(|r| Found {
        id: r.get(0),
        birth_date: r.get(1),
        person_ref: r.get(2),
    }))
}

/// Adds a coverage, linking it to its person: the one named by `person_ref`, else the holder of
/// the same card, else the person already holding the same insurance identity; a new person
/// otherwise. The person's card, certificate expiry and address are updated when given.
pub async fn insert(c: &impl GenericClient, p: &InsuredPerson) -> Result<Inserted, DbError> {
    // A coverage already registered changes nothing, not even the person's details.
    let exists = c
        .prepare_cached(
            "SELECT 1 FROM insured_persons WHERE insurer_number = $1 AND symbol = $2 AND number = $3
                AND branch = $4 AND valid_from = $5",
        )
        .await?;
    if c.query_opt(
        &exists,
        &[
            &p.insurer_number.as_str(),
            &p.symbol.as_str(),
            &p.number.as_str(),
            &p.branch.as_str(),
            &p.valid_from,
        ],
    )
    .await?
    .is_some()
    {
        return Ok(Inserted::Exists);
    }
    let by_ref = match &p.person_ref {
        Some(r) => {
            find_one(
                c,
                "SELECT id, birth_date, ref FROM persons WHERE ref = $1",
                &[r],
            )
            .await?
        }
        None => None,
    };
    let by_card = match &p.card {
        Some(card) => {
            find_one(
                c,
                "SELECT id, birth_date, ref FROM persons WHERE card_id = $1",
                &[&card.card_id],
            )
            .await?
        }
        None => None,
    };
    let by_identity = find_one(
        c,
        "SELECT p.id, p.birth_date, p.ref FROM insured_persons i JOIN persons p ON p.id = i.person_id
          WHERE i.insurer_number = $1 AND i.symbol = $2 AND i.number = $3 AND i.branch = $4
          ORDER BY i.valid_from DESC LIMIT 1",
        &[
            &p.insurer_number.as_str(),
            &p.symbol.as_str(),
            &p.number.as_str(),
            &p.branch.as_str(),
        ],
    )
    .await?;
    let card_holder = by_card.as_ref().map(|f| f.id);
    let found = by_ref.or(by_card).or(by_identity);
    if let (Some(holder), Some(f)) = (card_holder, &found)
        && holder != f.id
    {
        return Ok(Inserted::CardInUse);
    }
    let person_id = match found {
        Some(f) => {
            let other_ref = match (&f.person_ref, &p.person_ref) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            };
            if f.birth_date != p.birth_date || other_ref {
                return Ok(Inserted::PersonMismatch);
            }
            let stmt = c
                .prepare_cached(
                    "UPDATE persons
                        SET ref = COALESCE(ref, $2), card_id = COALESCE($3, card_id),
                            certificate_expires_on = COALESCE($4, certificate_expires_on),
                            address = COALESCE($5, address), name = $6,
                            name_kana = COALESCE($7, name_kana), updated_at = now()
                      WHERE id = $1",
                )
                .await?;
            c.execute(
                &stmt,
                &[
                    &f.id,
                    &p.person_ref,
                    &p.card.as_ref().map(|c| c.card_id.as_str()),
                    &p.card.as_ref().map(|c| c.certificate_expires_on),
                    &p.address,
                    &p.name,
                    &p.name_kana,
                ],
            )
            .await?;
            f.id
        }
        None => {
            let stmt = c
                .prepare_cached(
                    "INSERT INTO persons (id, ref, card_id, certificate_expires_on, name, name_kana,
                         sex, birth_date, address)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT DO NOTHING RETURNING id",
                )
                .await?;
            let row = c
                .query_opt(
                    &stmt,
                    &[
                        &Uuid::now_v7(),
                        &p.person_ref,
                        &p.card.as_ref().map(|c| c.card_id.as_str()),
                        &p.card.as_ref().map(|c| c.certificate_expires_on),
                        &p.name,
                        &p.name_kana,
                        &sex_str(p.sex),
                        &p.birth_date,
                        &p.address,
                    ],
                )
                .await?;
            match row {
                Some(r) => r.get(0),
                None => return Ok(Inserted::Concurrent),
            }
        }
    };
    let stmt = c
        .prepare_cached(
            "INSERT INTO insured_persons (id, person_id, insurer_number, symbol, number, branch, name,
                 name_kana, sex, birth_date, valid_from, valid_until, documents)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (insurer_number, symbol, number, branch, valid_from) DO NOTHING
             RETURNING id",
        )
        .await?;
    let documents: Vec<&str> = p.documents.iter().map(|d| d.as_str()).collect();
    let row = c
        .query_opt(
            &stmt,
            &[
                &Uuid::now_v7(),
                &person_id,
                &p.insurer_number.as_str(),
                &p.symbol.as_str(),
                &p.number.as_str(),
                &p.branch.as_str(),
                &p.name,
                &p.name_kana,
                &sex_str(p.sex),
                &p.birth_date,
                &p.valid_from,
                &p.valid_until,
                &documents,
            ],
        )
        .await?;
    Ok(match row {
        Some(r) => Inserted::Created {
            coverage_id: r.get(0),
            person_id,
        },
        None => Inserted::Exists,
    })
}

const PERSON_COLUMNS: &str =
    "id, name, name_kana, sex, birth_date, address, card_id, certificate_expires_on";

/// Persons with all their coverages, in the order of `ids`.
async fn load(c: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<PersonRecord>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let persons = c
        .prepare_cached(&format!(
            "SELECT {PERSON_COLUMNS} FROM persons WHERE id = ANY($1)"
        ))
        .await?;
    let coverages = c
        .prepare_cached(
            "SELECT person_id, id, insurer_number, symbol, number, branch, valid_from, valid_until,
                    documents
               FROM insured_persons WHERE person_id = ANY($1) ORDER BY valid_from",
        )
        .await?;
    let ids_vec = ids.to_vec();
    // Both in one round trip (pipelined on the connection): every check and card path loads a person.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids_vec];
    let (coverage_rows, person_rows) =
        tokio::try_join!(c.query(&coverages, &params), c.query(&persons, &params))?;
    let mut out = Vec::new();
    for row in person_rows {
        let id: Uuid = row.get(0);
        let corrupt = |what: &str| DbError::Corrupt(format!("person {id}: unreadable {what}"));
        let sex: String = row.get(3);
        let card_id: Option<String> = row.get(6);
        let expires: Option<Date> = row.get(7);
        let mut record = PersonRecord {
            id,
            name: row.get(1),
            name_kana: row.get(2),
            sex: if sex == "male" {
                Sex::Male
            } else {
                Sex::Female
            },
            birth_date: row.get(4),
            address: row.get(5),
            card: card_id
                .zip(expires)
                .map(|(card_id, certificate_expires_on)| Card {
                    card_id,
                    certificate_expires_on,
                }),
            coverages: Vec::new(),
        };
        for cr in coverage_rows.iter().filter(|r| r.get::<_, Uuid>(0) == id) {
            let identity = InsuranceIdentity {
                insurer_number: InsurerNumber::parse(cr.get(2))
                    .map_err(|_| corrupt("insurer_number"))?,
                symbol: InsuredSymbol::parse(cr.get(3)).map_err(|_| corrupt("symbol"))?,
                number: InsuredNumber::parse(cr.get(4)).map_err(|_| corrupt("number"))?,
                branch: Branch::parse(cr.get(5)).map_err(|_| corrupt("branch"))?,
            };
            let documents: Vec<String> = cr.get(8);
            record.coverages.push(Coverage {
                id: cr.get(1),
                identity,
                valid_from: cr.get(6),
                valid_until: cr.get(7),
                documents: documents
                    .iter()
                    .filter_map(|d| match d.as_str() {
                        "qualification_certificate" => Some(HeldDocument::QualificationCertificate),
                        "eligibility_notice" => Some(HeldDocument::EligibilityNotice),
                        _ => None,
                    })
                    .collect(),
            });
        }
        out.push(record);
    }
    out.sort_by_key(|p| ids.iter().position(|i| *i == p.id));
    Ok(out)
}

pub async fn person(c: &impl GenericClient, id: Uuid) -> Result<Option<PersonRecord>, DbError> {
    Ok(load(c, &[id]).await?.pop())
}

/// The person a マイナ保険証 belongs to.
pub async fn person_by_card(
    c: &impl GenericClient,
    card_id: &str,
) -> Result<Option<PersonRecord>, DbError> {
    let stmt = c
        .prepare_cached("SELECT id FROM persons WHERE card_id = $1")
        .await?;
    match c.query_opt(&stmt, &[&card_id]).await? {
        Some(r) => person(c, r.get(0)).await,
        None => Ok(None),
    }
}

/// The person holding (or having held) `identity`, with the birth date registered for it.
pub async fn person_by_identity(
    c: &impl GenericClient,
    identity: &InsuranceIdentity,
) -> Result<Option<PersonRecord>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT person_id FROM insured_persons
              WHERE insurer_number = $1 AND symbol = $2 AND number = $3 AND branch = $4
              ORDER BY valid_from DESC LIMIT 1",
        )
        .await?;
    let row = c
        .query_opt(
            &stmt,
            &[
                &identity.insurer_number.as_str(),
                &identity.symbol.as_str(),
                &identity.number.as_str(),
                &identity.branch.as_str(),
            ],
        )
        .await?;
    match row {
        Some(r) => person(c, r.get(0)).await,
        None => Ok(None),
    }
}

/// Persons of one birth date and sex (disaster mode compares the names).
pub async fn persons_by_demographics(
    c: &impl GenericClient,
    birth_date: Date,
    sex: Sex,
) -> Result<Vec<PersonRecord>, DbError> {
    let stmt = c
        .prepare_cached(
            "SELECT id FROM persons WHERE birth_date = $1 AND sex = $2 ORDER BY id LIMIT 500",
        )
        .await?;
    let ids: Vec<Uuid> = c
        .query(&stmt, &[&birth_date, &sex_str(sex)])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    load(c, &ids).await
}
