//! Request bodies and stored documents. Every prescription goes through the relay's own parsing
//! and validation (`PrescriptionDraft::validate`), so the generated history is what registrations
//! would have stored, and a change of the document format breaks the generator, not the benchmark.

use jiff::civil::Date;
use relay::domain::prescription::{Prescription, PrescriptionDraft};
use serde_json::{Value, json};

use crate::drugs::{DrugSets, Product};
use crate::people::Person;

pub fn drug_json(p: &Product) -> Value {
    json!({"code_system": "yj", "code": p.yj_code, "name": p.name, "dose": 1, "unit": "錠"})
}

/// The oral RP of `products` for `days`, once a day after breakfast.
pub fn oral_rp(products: &[&Product], days: u32) -> Value {
    json!({
        "dosage_form": "oral",
        "quantity": days,
        "usage": {"text": "1日1回朝食後", "times_per_day": 1},
        "drugs": products.iter().map(|p| drug_json(p)).collect::<Vec<_>>(),
    })
}

pub fn draft_json(person: &Person, issued_on: Date, rps: Vec<Value>) -> Value {
    json!({
        "issue_type": "electronic",
        "patient": {"name": person.name, "name_kana": person.name_kana, "sex": person.sex,
                    "birth_date": person.birth_date.to_string()},
        "insurance": {"insurer_number": person.insurer_number, "symbol": person.symbol,
                      "number": person.number, "relationship": "insured", "branch": person.branch,
                      "copay_rate": 30},
        "issued_on": issued_on.to_string(),
        "rps": rps,
    })
}

/// The document the relay stores for `draft`, validated as of its issue date.
pub fn validated(draft: &Value, issued_on: Date) -> anyhow::Result<Prescription> {
    let parsed: PrescriptionDraft = serde_json::from_value(draft.clone())?;
    parsed
        .validate(issued_on)
        .map_err(|e| anyhow::anyhow!("generated prescription is invalid: {e:?}"))
}

pub fn regimen_products<'a>(person: &Person, drugs: &'a DrugSets) -> Vec<&'a Product> {
    person
        .regimen
        .iter()
        .map(|&(i, p)| &drugs.chronic[i].products[p])
        .collect()
}

pub fn fresh_product<'a>(person: &Person, drugs: &'a DrugSets) -> &'a Product {
    &drugs.fresh[person.fresh.0].products[person.fresh.1]
}

/// The items of a dispensing of `products` for `days`.
pub fn items_json(products: &[&Product], days: u32) -> Value {
    Value::Array(
        products
            .iter()
            .map(|p| {
                json!({"code_system": "yj", "code": p.yj_code, "name": p.name, "dose": 1,
                       "unit": "錠", "days": days})
            })
            .collect(),
    )
}
