//! The e-prescription domain: identifiers that parse once, the prescription and its lifecycle,
//! dispensing, and the drug master. Nothing here knows HTTP or SQL (see ARCHITECTURE.md).

pub mod access;
pub mod check_digit;
pub mod checks;
pub mod dispensing;
pub mod document;
pub mod eligibility;
pub mod errors;
pub mod facility;
pub mod fallback;
pub mod identifiers;
pub mod jahis;
pub mod lifecycle;
pub mod master;
pub mod prescription;
pub mod sj1;
pub mod text;
pub mod time;

pub use errors::{FieldError, FieldErrors};
