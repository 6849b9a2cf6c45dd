//! What every printed or exported form of a prescription is made from: the issuing institution as
//! registered, the validated prescription, and its 引換番号.

use super::facility::Facility;
use super::prescription::Prescription;

#[derive(Debug, Clone, Copy)]
pub struct DocumentInput<'a> {
    /// The issuing 医療機関 (code, name, address, phone) from the facility registry.
    pub institution: &'a Facility,
    pub prescription: &'a Prescription,
    /// 引換番号; absent for a plain paper prescription.
    pub exchange_number: Option<&'a str>,
}
