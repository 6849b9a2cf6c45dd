//! The drug mixes, drawn from the real MHLW master already loaded into `drugs` (never invented codes).
//!
//! Popularity is approximated by the number of listed tablet products per ingredient: an ingredient
//! with dozens of generics (amlodipine, rosuvastatin, …) is one the whole country takes. The
//! `chronic` set (the 40 most listed) makes up everyone's history; the `fresh` set (the next ones
//! that appear in no 併用禁忌 pair) is what the benchmark prescribes new, so a registration or a
//! dispensing runs the whole check against a real history and finds nothing to refuse — while the
//! standalone check prescribes from the patient's own chronic drugs and finds real duplicates.

use anyhow::Context;
use tokio_postgres::Client;

#[derive(Debug, Clone)]
pub struct Product {
    pub yj_code: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Ingredient {
    pub name: String,
    pub products: Vec<Product>,
}

pub struct DrugSets {
    pub chronic: Vec<Ingredient>,
    pub fresh: Vec<Ingredient>,
}

const CHRONIC: usize = 40;
const FRESH: usize = 20;

impl DrugSets {
    pub async fn load(client: &Client) -> anyhow::Result<Self> {
        let rows = client
            .query(
                "SELECT di.ingredient, d.yj_code, d.product_name,
                        EXISTS (SELECT 1 FROM contraindications c
                                 WHERE c.ingredient_a = di.ingredient OR c.ingredient_b = di.ingredient)
                   FROM drugs d JOIN drug_ingredients di USING (yj_code)
                  WHERE d.route = '内用薬' AND d.product_name LIKE '%錠%'
                    AND NOT EXISTS (SELECT 1 FROM drug_ingredients x
                                     WHERE x.yj_code = d.yj_code AND x.position > 1)
                  ORDER BY di.ingredient, d.yj_code",
                &[],
            )
            .await
            .context("reading the drug master")?;
        let mut by_ingredient: Vec<(Ingredient, bool)> = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            let product = Product {
                yj_code: r.get(1),
                name: r.get(2),
            };
            match by_ingredient.last_mut() {
                Some((i, _)) if i.name == name => i.products.push(product),
                _ => by_ingredient.push((
                    Ingredient {
                        name,
                        products: vec![product],
                    },
                    r.get(3),
                )),
            }
        }
        // Most listed first; ties by name so every run picks the same sets.
        by_ingredient.sort_by(|a, b| {
            b.0.products
                .len()
                .cmp(&a.0.products.len())
                .then(a.0.name.cmp(&b.0.name))
        });
        let chronic: Vec<Ingredient> = by_ingredient
            .iter()
            .take(CHRONIC)
            .map(|(i, _)| i.clone())
            .collect();
        let fresh: Vec<Ingredient> = by_ingredient
            .iter()
            .skip(CHRONIC)
            .filter(|(_, contraindicated)| !contraindicated)
            .take(FRESH)
            .map(|(i, _)| i.clone())
            .collect();
        anyhow::ensure!(
            chronic.len() == CHRONIC && fresh.len() == FRESH,
            "the drug master has too few oral tablet ingredients ({} + {}); load it first (relay seed demo)",
            chronic.len(),
            fresh.len()
        );
        Ok(Self { chronic, fresh })
    }
}
