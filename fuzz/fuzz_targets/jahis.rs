//! The JAHIS text of a 2-D code (Shift_JIS, CR LF, 0x1A) as a scanner hands it over: decoded, its
//! records read as SJ1 and validated. Never panics; whatever decodes re-encodes and decodes to the
//! same records; a valid prescription round-trips (see `relay_fuzz::check_parsed`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::domain::jahis;
use relay::domain::lifecycle::IssueType;
use relay::domain::sj1;

fuzz_target!(|bytes: &[u8]| {
    let records = match jahis::decode(bytes) {
        Ok(records) => records,
        Err(e) => {
            assert!(e.line() >= 1, "{e:?}");
            let message = e.to_string();
            assert!(!message.is_empty());
            relay_fuzz::explain(|| format!("jahis: refused: {message}"));
            return;
        }
    };
    let again = jahis::encode(&records);
    // A character the encoder cannot write back (a user-defined one from F0–F9) becomes ■.
    if again.replaced.is_empty() {
        assert_eq!(
            jahis::decode(&again.bytes).as_ref(),
            Ok(&records),
            "decode(encode(records)) differs"
        );
    }
    // The text read as SJ1 (from_records numbers the lines as `decode` does: JAHIS10 is line 1).
    for issue_type in [IssueType::Electronic, IssueType::PaperWithExchangeNumber] {
        match sj1::from_records(&records, issue_type) {
            Ok(parsed) => relay_fuzz::check_parsed(&parsed),
            Err(errors) => {
                relay_fuzz::check_sj1_errors(&errors, records.len() + 2);
                relay_fuzz::explain(|| format!("jahis as sj1: refused: {errors:?}"));
            }
        }
    }
});
