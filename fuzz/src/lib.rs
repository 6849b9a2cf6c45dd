//! What the fuzz targets share: the properties of a parsed SJ1 or JAHIS document.
//!
//! A document that parses and validates is a prescription the relay would register; rendering it
//! again (as SJ1 text, and as the JAHIS text of the printed 2-D code) and reading that back must
//! give the same prescription, and rendering the result must give the same bytes. Also here: the
//! allocator that turns an oversized allocation into a crash.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

use jiff::civil::Date;
use relay::domain::document::DocumentInput;
use relay::domain::facility::Facility;
use relay::domain::identifiers::FacilityKind;
use relay::domain::prescription::Prescription;
use relay::domain::sj1::{self, Parsed, Sj1Error};
use relay::domain::{FieldError, jahis};

/// `sj1::MAX_ERRORS` (200) plus the one `TOO_MANY_ERRORS` line.
const MAX_SJ1_ERRORS: usize = 201;

/// The largest single allocation an input of a few kilobytes may cause. Without a sanitizer (the
/// stable toolchain, see README.md) libFuzzer's `-malloc_limit_mb` has no malloc hooks to work
/// with, so a size taken from the input (`Vec::with_capacity(n)`) would only show as a slow run.
const MAX_ALLOCATION: usize = 64 << 20;

/// The system allocator, aborting (a crash libFuzzer saves) on an allocation over
/// [`MAX_ALLOCATION`].
struct Capped;

// SAFETY: every call is passed on unchanged to `System`, which upholds the contract.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        too_large(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        too_large(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        too_large(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

fn too_large(size: usize) {
    if size > MAX_ALLOCATION {
        // An allocator may neither unwind nor allocate: a fixed message, then abort.
        let _ = std::io::stderr()
            .write_all(b"relay-fuzz: an allocation of more than 64 MiB (unbounded allocation)\n");
        std::process::abort();
    }
}

/// Set `RELAY_FUZZ_EXPLAIN=1` to have each input's outcome printed (e.g. to see why a seed stops
/// short of validation): `RELAY_FUZZ_EXPLAIN=1 cargo fuzz run json_bodies fuzz/corpus/json_bodies/*`.
pub fn explain(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("RELAY_FUZZ_EXPLAIN").is_some()) {
        eprintln!("{}", what());
    }
}

/// SJ1 errors as the HTTP layer turns them into field errors; they must point inside the text.
pub fn check_sj1_errors(errors: &[Sj1Error], lines: usize) {
    assert!(!errors.is_empty(), "a refusal names at least one problem");
    assert!(
        errors.len() <= MAX_SJ1_ERRORS,
        "{} errors: the list is capped",
        errors.len()
    );
    for e in errors {
        assert!(
            (1..=lines).contains(&e.line),
            "error on line {} of a {lines}-line text: {e:?}",
            e.line
        );
        assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
        let _ = FieldError {
            field: e.field_path(),
            code: e.code,
            message: e.message.clone(),
        };
    }
}

/// Validates what a document said, as registration does, and round-trips a valid prescription.
///
/// "Today" is the document's own 交付年月日, so that a valid document stays valid whatever the date
/// of the run (and a crash reproduces on any day).
pub fn check_parsed(parsed: &Parsed) {
    let today = parsed.draft.issued_on;
    let prescription = match parsed.draft.validate(today) {
        Ok(p) => p,
        Err(errors) => {
            // Registration also names the line and record each invalid field came from.
            for e in &errors {
                let _ = parsed.locate(&e.field);
            }
            let _ = parsed.draft.drug_refs();
            explain(|| format!("sj1: parsed, invalid: {errors:?}"));
            return;
        }
    };
    let _ = prescription.drug_refs();
    let institution = Facility {
        code: parsed.institution_code.clone(),
        kind: FacilityKind::Clinic,
        name: parsed.institution_name.clone(),
        address: None,
        phone: None,
        email: "fuzz@example.jp".into(),
        fax_email: None,
        accepts_e_prescriptions: true,
        municipality_code: None,
    };
    let doc = DocumentInput {
        institution: &institution,
        prescription: &prescription,
        exchange_number: parsed.exchange_number.as_deref(),
    };

    // SJ1 text. (The institution name is not compared: the relay takes it from its registry, and
    // rendering turns control characters in it into spaces.)
    let text = sj1::render(&doc);
    let back = sj1::parse(&text, prescription.issue_type)
        .unwrap_or_else(|e| panic!("the rendered SJ1 does not parse: {e:#?}\n{text}"));
    assert_eq!(back.institution_code, parsed.institution_code);
    assert_eq!(back.exchange_number, parsed.exchange_number);
    let again = same_prescription(&back, &prescription, today, &text);
    assert_eq!(
        sj1::render(&DocumentInput {
            prescription: &again,
            ..doc
        }),
        text,
        "re-rendered SJ1 differs"
    );

    // JAHIS text of the 2-D code, unless a character had to be replaced by ■.
    let symbol = jahis::encode(&sj1::records(&doc));
    if !symbol.replaced.is_empty() {
        explain(|| format!("jahis: replaced {:?}", symbol.replaced));
        return;
    }
    let records = jahis::decode(&symbol.bytes)
        .unwrap_or_else(|e| panic!("the encoded JAHIS text does not decode: {e}\n{text}"));
    let back = sj1::from_records(&records, prescription.issue_type)
        .unwrap_or_else(|e| panic!("the JAHIS records do not parse: {e:#?}\n{text}"));
    assert_eq!(back.institution_code, parsed.institution_code);
    assert_eq!(back.exchange_number, parsed.exchange_number);
    let again = same_prescription(&back, &prescription, today, &text);
    let again = jahis::encode(&sj1::records(&DocumentInput {
        prescription: &again,
        ..doc
    }));
    assert_eq!(again, symbol, "re-encoded JAHIS text differs");
    explain(|| "round trip: ok".into());
}

/// `back` validates to exactly `want` (compared as the JSON the API shows).
fn same_prescription(back: &Parsed, want: &Prescription, today: Date, text: &str) -> Prescription {
    let got = back
        .draft
        .validate(today)
        .unwrap_or_else(|e| panic!("the re-read prescription is invalid: {e:#?}\n{text}"));
    let json = |p: &Prescription| serde_json::to_value(p).expect("a prescription serializes");
    assert_eq!(
        json(&got),
        json(want),
        "the round trip changed the prescription\n{text}"
    );
    got
}
