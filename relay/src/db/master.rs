//! SQL for the drug master tables (`drugs`, `drug_ingredients`, `receipt_drugs`,
//! `contraindications`, created by `sql/V2__drug_master.sql`). No other module touches them.
//!
//! The `replace_*` functions take the caller's `tokio_postgres::Transaction` (a
//! `deadpool_postgres::Transaction` derefs to one), so a whole import commits or rolls back at once
//! and readers keep seeing the previous master until then. Each table is written with one
//! `INSERT … SELECT * FROM UNNEST(…)`: a yakka list is ~12,000 rows and row-by-row inserts would
//! cost a round trip each. The lookups take the crate's [`GenericClient`] (a pooled client or a
//! transaction) and use `prepare_cached`.

use std::collections::HashSet;

use deadpool_postgres::GenericClient;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Transaction};

use crate::domain::master::{ContraindicationRecord, DrugRecord, ReceiptDrugRecord, Route};

/// What an import changed, for the `relay master import` output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub drugs: usize,
    pub ingredients: usize,
    pub contraindications: usize,
    pub receipt_drugs: usize,
    /// Contraindication ingredient names found in no `drug_ingredients` row: a spelling that
    /// differs from the yakka list's 成分名 would silently never match, so the import shows them.
    pub unknown_ingredients: Vec<String>,
}

/// One ingredient of a product, with the route duplicates are compared under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DrugIngredient {
    pub yj_code: String,
    pub ingredient: String,
    pub route: Route,
}

/// Replaces the whole yakka master (drugs and their ingredients). Duplicate YJ codes in `records`
/// keep the first occurrence. Returns the number of drugs now stored.
pub async fn replace_drugs(tx: &Transaction<'_>, records: &[DrugRecord]) -> Result<usize, Error> {
    let mut seen = HashSet::with_capacity(records.len());
    let unique: Vec<&DrugRecord> = records
        .iter()
        .filter(|r| seen.insert(r.yj_code.as_str()))
        .collect();

    // Children first: drug_ingredients references drugs.
    tx.execute("DELETE FROM drug_ingredients", &[]).await?;
    tx.execute("DELETE FROM drugs", &[]).await?;

    let codes: Vec<&str> = unique.iter().map(|r| r.yj_code.as_str()).collect();
    let routes: Vec<&str> = unique.iter().map(|r| r.route.as_str()).collect();
    let names: Vec<&str> = unique.iter().map(|r| r.ingredient_name.as_str()).collect();
    let strengths: Vec<&str> = unique.iter().map(|r| r.strength.as_str()).collect();
    let products: Vec<&str> = unique.iter().map(|r| r.product_name.as_str()).collect();
    let makers: Vec<&str> = unique.iter().map(|r| r.maker.as_str()).collect();
    let generic: Vec<bool> = unique.iter().map(|r| r.is_generic).collect();
    let brand: Vec<bool> = unique.iter().map(|r| r.is_brand).collect();
    let prices: Vec<Decimal> = unique.iter().map(|r| r.price).collect();
    let drugs = tx
        .execute(
            "INSERT INTO drugs (yj_code, route, ingredient_name, strength, product_name, maker, \
                                is_generic, is_brand, price) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::text[], $7::bool[], $8::bool[], $9::numeric[])",
            &[
                &codes, &routes, &names, &strengths, &products, &makers, &generic, &brand, &prices,
            ],
        )
        .await?;

    let mut ing_codes: Vec<&str> = Vec::new();
    let mut positions: Vec<i16> = Vec::new();
    let mut ingredients: Vec<&str> = Vec::new();
    let mut ing_routes: Vec<&str> = Vec::new();
    for r in &unique {
        // 1-based; zipping with the i16 range needs no fallible cast (no product has 32,767).
        for (position, ingredient) in (1..=i16::MAX).zip(&r.ingredients) {
            ing_codes.push(&r.yj_code);
            positions.push(position);
            ingredients.push(ingredient);
            ing_routes.push(r.route.as_str());
        }
    }
    tx.execute(
        "INSERT INTO drug_ingredients (yj_code, position, ingredient, route) \
         SELECT * FROM UNNEST($1::text[], $2::int2[], $3::text[], $4::text[])",
        &[&ing_codes, &positions, &ingredients, &ing_routes],
    )
    .await?;

    Ok(count(drugs))
}

/// Replaces the 併用禁忌 table. Duplicate pairs (same names and routes, `*` = `*`) keep the first.
/// Returns the number of pairs stored and, sorted, the names that match no ingredient in
/// `drug_ingredients` — so run it after [`replace_drugs`] when both are imported together.
pub async fn replace_contraindications(
    tx: &Transaction<'_>,
    records: &[ContraindicationRecord],
) -> Result<(usize, Vec<String>), Error> {
    let mut seen = HashSet::with_capacity(records.len());
    let unique: Vec<&ContraindicationRecord> = records
        .iter()
        .filter(|r| {
            seen.insert((
                r.ingredient_a.as_str(),
                r.route_a,
                r.ingredient_b.as_str(),
                r.route_b,
            ))
        })
        .collect();

    tx.execute("DELETE FROM contraindications", &[]).await?;
    let a: Vec<&str> = unique.iter().map(|r| r.ingredient_a.as_str()).collect();
    let route_a: Vec<Option<&str>> = unique
        .iter()
        .map(|r| r.route_a.map(Route::as_str))
        .collect();
    let b: Vec<&str> = unique.iter().map(|r| r.ingredient_b.as_str()).collect();
    let route_b: Vec<Option<&str>> = unique
        .iter()
        .map(|r| r.route_b.map(Route::as_str))
        .collect();
    let basis: Vec<&str> = unique.iter().map(|r| r.basis.as_str()).collect();
    let stored = tx
        .execute(
            "INSERT INTO contraindications (ingredient_a, route_a, ingredient_b, route_b, basis) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])",
            &[&a, &route_a, &b, &route_b, &basis],
        )
        .await?;

    let names: Vec<&str> = a.iter().chain(&b).copied().collect();
    let unknown = tx
        .query(
            "SELECT DISTINCT u.name FROM UNNEST($1::text[]) AS u(name) \
             WHERE NOT EXISTS (SELECT 1 FROM drug_ingredients di WHERE di.ingredient = u.name) \
             ORDER BY u.name",
            &[&names],
        )
        .await?
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;

    Ok((count(stored), unknown))
}

/// Replaces the レセ電 医薬品マスター. Duplicate 医薬品コード keep the first. Returns the rows stored.
pub async fn replace_receipt_drugs(
    tx: &Transaction<'_>,
    records: &[ReceiptDrugRecord],
) -> Result<usize, Error> {
    let mut seen = HashSet::with_capacity(records.len());
    let unique: Vec<&ReceiptDrugRecord> = records
        .iter()
        .filter(|r| seen.insert(r.receipt_code.as_str()))
        .collect();

    tx.execute("DELETE FROM receipt_drugs", &[]).await?;
    let codes: Vec<&str> = unique.iter().map(|r| r.receipt_code.as_str()).collect();
    let names: Vec<&str> = unique.iter().map(|r| r.name.as_str()).collect();
    let units: Vec<&str> = unique.iter().map(|r| r.unit.as_str()).collect();
    let routes: Vec<Option<&str>> = unique.iter().map(|r| r.route.map(Route::as_str)).collect();
    let yj: Vec<&str> = unique.iter().map(|r| r.yj_code.as_str()).collect();
    let generic_codes: Vec<Option<&str>> =
        unique.iter().map(|r| r.generic_code.as_deref()).collect();
    let generic_names: Vec<Option<&str>> =
        unique.iter().map(|r| r.generic_name.as_deref()).collect();
    let discontinued: Vec<Option<jiff::civil::Date>> =
        unique.iter().map(|r| r.discontinued_on).collect();
    let stored = tx
        .execute(
            "INSERT INTO receipt_drugs (receipt_code, name, unit, route, yj_code, generic_code, \
                                        generic_name, discontinued_on) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::text[], $7::text[], $8::date[])",
            &[
                &codes,
                &names,
                &units,
                &routes,
                &yj,
                &generic_codes,
                &generic_names,
                &discontinued,
            ],
        )
        .await?;
    Ok(count(stored))
}

/// Whether a 薬価基準収載医薬品コード is in the yakka master.
pub async fn yj_code_exists(client: &impl GenericClient, code: &str) -> Result<bool, Error> {
    exists(
        client,
        "SELECT EXISTS (SELECT 1 FROM drugs WHERE yj_code = $1)",
        &[&code],
    )
    .await
}

/// Whether a 一般名コード (first 9 characters of a YJ code + `ZZZ`) names a listed product group.
/// Anything not shaped like one (a full YJ code included) is `false` without a query.
pub async fn generic_code_exists(client: &impl GenericClient, code: &str) -> Result<bool, Error> {
    let Some(prefix) = generic_prefix(code) else {
        return Ok(false);
    };
    // Written as left(yj_code, 9) so the expression index drugs_yj_prefix_idx serves it.
    exists(
        client,
        "SELECT EXISTS (SELECT 1 FROM drugs WHERE left(yj_code, 9) = $1)",
        &[&prefix],
    )
    .await
}

/// Whether a レセ電コード is in the loaded レセ電 master (discontinued codes included; the
/// `discontinued_on` column is there for a caller that wants to refuse them by date).
pub async fn receipt_code_exists(client: &impl GenericClient, code: &str) -> Result<bool, Error> {
    exists(
        client,
        "SELECT EXISTS (SELECT 1 FROM receipt_drugs WHERE receipt_code = $1)",
        &[&code],
    )
    .await
}

/// Whether any レセ電 master has been imported (it is licensed separately from the yakka list, so
/// a deployment may not have one).
pub async fn receipt_master_loaded(client: &impl GenericClient) -> Result<bool, Error> {
    exists(client, "SELECT EXISTS (SELECT 1 FROM receipt_drugs)", &[]).await
}

pub async fn drug_count(client: &impl GenericClient) -> Result<i64, Error> {
    let stmt = client.prepare_cached("SELECT count(*) FROM drugs").await?;
    client.query_one(&stmt, &[]).await?.try_get(0)
}

/// Rows in `drug_ingredients`, for [`ImportReport::ingredients`].
pub async fn ingredient_count(client: &impl GenericClient) -> Result<i64, Error> {
    let stmt = client
        .prepare_cached("SELECT count(*) FROM drug_ingredients")
        .await?;
    client.query_one(&stmt, &[]).await?.try_get(0)
}

/// Ingredients (with route) of the given YJ codes, in code and position order; unknown codes
/// contribute nothing. For the duplicate check (same ingredient and same route, domain.md §7).
pub async fn ingredients_of_yj_codes(
    client: &impl GenericClient,
    yj_codes: &[&str],
) -> Result<Vec<DrugIngredient>, Error> {
    ingredients(
        client,
        "SELECT yj_code, ingredient, route FROM drug_ingredients \
         WHERE yj_code = ANY($1::text[]) ORDER BY yj_code, position",
        yj_codes,
    )
    .await
}

/// Ingredients of the products behind a 一般名コード, one row per distinct (ingredient, route),
/// reported under the generic code itself.
pub async fn ingredients_of_generic_code(
    client: &impl GenericClient,
    generic_code: &str,
) -> Result<Vec<DrugIngredient>, Error> {
    let Some(prefix) = generic_prefix(generic_code) else {
        return Ok(Vec::new());
    };
    let stmt = client
        .prepare_cached(
            "SELECT DISTINCT di.ingredient, di.route FROM drugs d \
             JOIN drug_ingredients di ON di.yj_code = d.yj_code \
             WHERE left(d.yj_code, 9) = $1 ORDER BY di.ingredient, di.route",
        )
        .await?;
    let rows = client.query(&stmt, &[&prefix]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let route: &str = row.try_get(1)?;
        // The CHECK constraint admits only the four route words.
        if let Ok(route) = route.parse() {
            out.push(DrugIngredient {
                yj_code: generic_code.to_owned(),
                ingredient: row.try_get(0)?,
                route,
            });
        }
    }
    Ok(out)
}

/// Ingredients of the products behind レセ電コード, through the 薬価基準収載医薬品コード the レセ電
/// master records for each; reported under that YJ code.
pub async fn ingredients_of_receipt_codes(
    client: &impl GenericClient,
    receipt_codes: &[&str],
) -> Result<Vec<DrugIngredient>, Error> {
    ingredients(
        client,
        "SELECT di.yj_code, di.ingredient, di.route FROM receipt_drugs rd \
         JOIN drug_ingredients di ON di.yj_code = rd.yj_code \
         WHERE rd.receipt_code = ANY($1::text[]) ORDER BY di.yj_code, di.position",
        receipt_codes,
    )
    .await
}

/// Every 併用禁忌 pair naming any of `ingredients` on either side; route matching and which side
/// is the new drug are the caller's rules.
pub async fn contraindications_involving(
    client: &impl GenericClient,
    ingredients: &[&str],
) -> Result<Vec<ContraindicationRecord>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT ingredient_a, route_a, ingredient_b, route_b, basis FROM contraindications \
             WHERE ingredient_a = ANY($1::text[]) OR ingredient_b = ANY($1::text[]) ORDER BY id",
        )
        .await?;
    let rows = client.query(&stmt, &[&ingredients]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let route_a: Option<&str> = row.try_get(1)?;
        let route_b: Option<&str> = row.try_get(3)?;
        out.push(ContraindicationRecord {
            ingredient_a: row.try_get(0)?,
            route_a: route_a.and_then(|r| r.parse().ok()),
            ingredient_b: row.try_get(2)?,
            route_b: route_b.and_then(|r| r.parse().ok()),
            basis: row.try_get(4)?,
        });
    }
    Ok(out)
}

async fn exists(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<bool, Error> {
    let stmt = client.prepare_cached(sql).await?;
    client.query_one(&stmt, params).await?.try_get(0)
}

async fn ingredients(
    client: &impl GenericClient,
    sql: &str,
    codes: &[&str],
) -> Result<Vec<DrugIngredient>, Error> {
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, &[&codes]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let route: &str = row.try_get(2)?;
        // The CHECK constraint admits only the four route words.
        if let Ok(route) = route.parse() {
            out.push(DrugIngredient {
                yj_code: row.try_get(0)?,
                ingredient: row.try_get(1)?,
                route,
            });
        }
    }
    Ok(out)
}

/// The 9-character YJ prefix of a well-formed 一般名コード.
fn generic_prefix(code: &str) -> Option<&str> {
    code.strip_suffix("ZZZ")
        .filter(|p| p.len() == 9 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn count(rows: u64) -> usize {
    usize::try_from(rows).unwrap_or(usize::MAX)
}
