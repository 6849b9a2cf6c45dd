//! SQL for the drug master tables (`drugs`, `drug_ingredients`, `receipt_drugs`,
//! `contraindications`, created by `sql/V2__drug_master.sql`; named contraindication tables by
//! `sql/V6__contraindication_tables.sql`). No other module touches them.
//!
//! The writing functions (`replace_*`, and `delete_`/`insert_contraindications`) take the caller's
//! `tokio_postgres::Transaction` (a `deadpool_postgres::Transaction` derefs to one), so a whole
//! import commits or rolls back at once and readers keep seeing the previous master until then.
//! Each table is written with one `INSERT … SELECT … FROM UNNEST(…)`: a yakka list is ~12,000 rows
//! and row-by-row inserts would cost a round trip each. The lookups take the crate's
//! [`GenericClient`] (a pooled client or a transaction) and use `prepare_cached`.

use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};

use deadpool_postgres::GenericClient;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Transaction};

use crate::domain::master::{ContraindicationRecord, DrugRecord, ReceiptDrugRecord, Route};

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

/// A 併用禁忌 pair without its order: `A × B` and `B × A` (each route staying with its
/// ingredient, `None` = any route) are one pair, within a table and across tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey([(String, Option<Route>); 2]);

impl PairKey {
    pub fn of(pair: &ContraindicationRecord) -> Self {
        let a = (pair.ingredient_a.clone(), pair.route_a);
        let b = (pair.ingredient_b.clone(), pair.route_b);
        if a <= b {
            PairKey([a, b])
        } else {
            PairKey([b, a])
        }
    }
}

/// Takes the `contraindications` table for an import until the transaction ends: a concurrent
/// import waits (so its "already present" is computed after this one commits), readers do not.
pub async fn lock_contraindications(tx: &Transaction<'_>) -> Result<(), Error> {
    tx.batch_execute("LOCK TABLE contraindications IN SHARE ROW EXCLUSIVE MODE")
        .await
}

/// The pairs of one named table (`of_table`), or of every table but that one (for telling
/// which pairs of an import other tables list too), in import order.
pub async fn contraindications_by_table(
    client: &impl GenericClient,
    table: &str,
    of_table: bool,
) -> Result<Vec<ContraindicationRecord>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT ingredient_a, route_a, ingredient_b, route_b, basis FROM contraindications \
             WHERE (table_name = $1) = $2 ORDER BY id",
        )
        .await?;
    client
        .query(&stmt, &[&table, &of_table])
        .await?
        .iter()
        .map(contraindication)
        .collect()
}

/// Deletes every pair of one named table; returns how many there were.
pub async fn delete_contraindication_table(
    tx: &Transaction<'_>,
    table: &str,
) -> Result<usize, Error> {
    let deleted = tx
        .execute(
            "DELETE FROM contraindications WHERE table_name = $1",
            &[&table],
        )
        .await?;
    Ok(count(deleted))
}

/// Adds pairs to a named table, in the given order. The caller leaves out pairs the table
/// already has (in either order, see [`PairKey`]); the unique index refuses the same order.
pub async fn insert_contraindications(
    tx: &Transaction<'_>,
    table: &str,
    records: &[&ContraindicationRecord],
) -> Result<usize, Error> {
    let a: Vec<&str> = records.iter().map(|r| r.ingredient_a.as_str()).collect();
    let route_a: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.route_a.map(Route::as_str))
        .collect();
    let b: Vec<&str> = records.iter().map(|r| r.ingredient_b.as_str()).collect();
    let route_b: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.route_b.map(Route::as_str))
        .collect();
    let basis: Vec<&str> = records.iter().map(|r| r.basis.as_str()).collect();
    // WITH ORDINALITY keeps the file order in the ids, which is the read order.
    let stored = tx
        .execute(
            "INSERT INTO contraindications \
                 (table_name, ingredient_a, route_a, ingredient_b, route_b, basis) \
             SELECT $1::text, a, ra, b, rb, basis \
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                  WITH ORDINALITY AS u(a, ra, b, rb, basis, n) \
             ORDER BY n",
            &[&table, &a, &route_a, &b, &route_b, &basis],
        )
        .await?;
    Ok(count(stored))
}

/// Of `names`, those found in no `drug_ingredients` row, sorted and each once: a spelling that
/// differs from the yakka list's 成分名 would silently never match.
pub async fn unknown_ingredients(
    client: &impl GenericClient,
    names: &[&str],
) -> Result<Vec<String>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT DISTINCT u.name FROM UNNEST($1::text[]) AS u(name) \
             WHERE NOT EXISTS (SELECT 1 FROM drug_ingredients di WHERE di.ingredient = u.name) \
             ORDER BY u.name",
        )
        .await?;
    client
        .query(&stmt, &[&names])
        .await?
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect()
}

/// Every named contraindication table with its number of pairs, by name.
pub async fn contraindication_tables(
    client: &impl GenericClient,
) -> Result<Vec<(String, i64)>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT table_name, count(*) FROM contraindications \
             GROUP BY table_name ORDER BY table_name",
        )
        .await?;
    client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
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

/// Whether the drug master is loaded: asked by every check, so an EXISTS, not a count (counting
/// 12,000 rows was over half of a registration's database time, BENCHMARKS.md).
pub async fn drug_master_loaded(client: &impl GenericClient) -> Result<bool, Error> {
    exists(client, "SELECT EXISTS (SELECT 1 FROM drugs)", &[]).await
}

/// Rows in `drug_ingredients`, for [`crate::seed::ImportReport::ingredients`].
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

/// Every 併用禁忌 pair naming any of `ingredients` on either side, from all named tables; route
/// matching and which side is the new drug are the caller's rules. A pair several tables list (in
/// either order) comes back once: see [`merge_tables`].
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
    let rows = client
        .query(&stmt, &[&ingredients])
        .await?
        .iter()
        .map(contraindication)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge_tables(rows))
}

/// One record per [`PairKey`], at the place and in the order of its first row (import order);
/// its basis is the first non-empty one, so a table without 根拠 does not blank another's.
fn merge_tables(rows: Vec<ContraindicationRecord>) -> Vec<ContraindicationRecord> {
    let mut at: HashMap<PairKey, usize> = HashMap::with_capacity(rows.len());
    let mut out: Vec<ContraindicationRecord> = Vec::with_capacity(rows.len());
    for row in rows {
        match at.entry(PairKey::of(&row)) {
            Entry::Occupied(e) => {
                let kept = &mut out[*e.get()];
                if kept.basis.is_empty() {
                    kept.basis = row.basis;
                }
            }
            Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(row);
            }
        }
    }
    out
}

fn contraindication(row: &tokio_postgres::Row) -> Result<ContraindicationRecord, Error> {
    let route_a: Option<&str> = row.try_get(1)?;
    let route_b: Option<&str> = row.try_get(3)?;
    Ok(ContraindicationRecord {
        ingredient_a: row.try_get(0)?,
        // The CHECK constraints admit only the four route words.
        route_a: route_a.and_then(|r| r.parse().ok()),
        ingredient_b: row.try_get(2)?,
        route_b: route_b.and_then(|r| r.parse().ok()),
        basis: row.try_get(4)?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, route_a: Option<Route>, b: &str, basis: &str) -> ContraindicationRecord {
        ContraindicationRecord {
            ingredient_a: a.to_owned(),
            route_a,
            ingredient_b: b.to_owned(),
            route_b: None,
            basis: basis.to_owned(),
        }
    }

    #[test]
    fn a_pair_has_no_order_but_keeps_its_routes() {
        let oral = Some(Route::Oral);
        let ab = pair("Ａ", oral, "Ｂ", "");
        let mut ba = pair("Ｂ", None, "Ａ", "");
        ba.route_b = oral;
        assert_eq!(PairKey::of(&ab), PairKey::of(&ba));
        assert_ne!(PairKey::of(&ab), PairKey::of(&pair("Ａ", None, "Ｂ", "")));
        assert_ne!(PairKey::of(&ab), PairKey::of(&pair("Ｂ", oral, "Ａ", "")));
    }

    #[test]
    fn tables_merge_into_one_listing_per_pair() {
        let oral = Some(Route::Oral);
        let mut ba = pair("Ｂ", None, "Ａ", "vendor basis");
        ba.route_b = oral;
        let rows = vec![
            pair("Ａ", oral, "Ｂ", ""),
            pair("Ｃ", None, "Ｄ", "seed basis"),
            ba,
            pair("Ｄ", None, "Ｃ", "other basis"),
            pair("Ａ", None, "Ｂ", ""),
        ];
        let merged = merge_tables(rows);
        assert_eq!(
            merged,
            [
                // The first listing, with the first basis that is not empty.
                pair("Ａ", oral, "Ｂ", "vendor basis"),
                pair("Ｃ", None, "Ｄ", "seed basis"),
                pair("Ａ", None, "Ｂ", ""),
            ]
        );
    }
}
