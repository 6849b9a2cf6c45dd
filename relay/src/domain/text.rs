//! Normalisation of what people type at a counter: full-width digits and letters, spaces, hyphens.

/// Full-width ASCII variants (U+FF01–U+FF5E) to ASCII and the ideographic space to a space.
/// Kana and kanji are left alone (a 記号 may be written in kanji).
pub fn fold_width(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c),
            '\u{3000}' => ' ',
            _ => c,
        })
        .collect()
}

/// Characters people type as separators inside a number: spaces and the many hyphens and dashes
/// (including the katakana prolonged sound mark, which IMEs produce for "-").
pub fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '\u{2010}'
                | '\u{2011}'
                | '\u{2012}'
                | '\u{2013}'
                | '\u{2014}'
                | '\u{2015}'
                | '\u{2212}'
                | '\u{30FC}'
                | '\u{FF70}'
                | '\u{FE63}'
        )
}

/// Width-folded digits with separators removed; `None` if anything else remains or nothing does.
pub fn digits_only(s: &str) -> Option<String> {
    let folded: String = fold_width(s)
        .chars()
        .filter(|c| !is_separator(*c))
        .collect();
    (!folded.is_empty() && folded.bytes().all(|b| b.is_ascii_digit())).then_some(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_full_width_and_strips_separators() {
        assert_eq!(fold_width("ＡＢ１２　x"), "AB12 x");
        assert_eq!(digits_only(" ０１２-３４５ ").as_deref(), Some("012345"));
        assert_eq!(digits_only("012ー345").as_deref(), Some("012345"));
        assert_eq!(digits_only("01a345"), None);
        assert_eq!(digits_only(" - "), None);
    }
}
