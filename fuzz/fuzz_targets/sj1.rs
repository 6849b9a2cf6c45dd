//! SJ1 CSV as `POST /v1/prescriptions` (`Content-Type: text/csv`) reads it: the raw body, refused
//! unless UTF-8, parsed for either `?issue_type=`, then validated like the JSON form. Never panics;
//! errors point inside the text; a valid document round-trips (see `relay_fuzz::check_parsed`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::domain::lifecycle::IssueType;
use relay::domain::sj1;

fuzz_target!(|body: &[u8]| {
    // The handler answers 422 ENCODING before parsing anything that is not UTF-8.
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    // Lines as sj1::parse counts them (a final LF ends the last line), plus one for errors about
    // a record missing at the end.
    let lines = text.strip_suffix('\n').unwrap_or(text).split('\n').count() + 1;
    for issue_type in [IssueType::Electronic, IssueType::PaperWithExchangeNumber] {
        match sj1::parse(text, issue_type) {
            Ok(parsed) => relay_fuzz::check_parsed(&parsed),
            Err(errors) => {
                relay_fuzz::check_sj1_errors(&errors, lines);
                relay_fuzz::explain(|| format!("sj1: refused: {errors:?}"));
            }
        }
    }
});
