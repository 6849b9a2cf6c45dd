//! The mod-10 check digit shared by 保険者番号, 医療機関/薬局コード and 公費 numbers (domain.md §2).

/// The check digit for `base` (ASCII digits only): weights 2,1,2,1,… from the rightmost digit,
/// digit sums of the products, then `(10 − sum mod 10) mod 10`. `None` when `base` holds a non-digit.
pub fn mod10(base: &str) -> Option<u8> {
    let mut sum = 0u32;
    for (i, c) in base.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = u32::from(c - b'0');
        let product = if i % 2 == 0 { d * 2 } else { d };
        sum += product / 10 + product % 10;
    }
    Some(((10 - sum % 10) % 10) as u8)
}

/// True when `digits` is all ASCII digits and its last digit is the check digit of the rest.
pub fn is_valid(digits: &str) -> bool {
    let Some((base, last)) = digits.split_at_checked(digits.len().saturating_sub(1)) else {
        return false;
    };
    if base.is_empty() || !last.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    mod10(base).is_some_and(|check| last.as_bytes()[0] - b'0' == check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_domain_reference() {
        assert_eq!(mod10("011011371"), Some(9));
        assert!(is_valid("0110113719"));
        assert!(!is_valid("0110113710"));
    }

    #[test]
    fn published_valid_and_invalid_numbers() {
        for ok in [
            "01130012",
            "01270016",
            "39131156",
            "33120015",
            "31130842",
            "39101233",
            "02199990",
            "9918000010",
            "9948000014",
            "9918000028",
            "9948000022",
            "77777779",
        ] {
            assert!(is_valid(ok), "{ok} should be valid");
        }
        for bad in [
            "06123456",
            "12123456",
            "0110113710",
            "",
            "1",
            "12a4",
            "９９",
        ] {
            assert!(!is_valid(bad), "{bad} should be invalid");
        }
    }
}
