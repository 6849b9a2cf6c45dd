//! Reading the QR code of a 処方内容（控え） from a photo or scan (PNG or JPEG).
//!
//! Payload: `保険者番号,記号,番号,枝番,生年月日(YYYYMMDD),引換番号`; an empty field (e.g. no 記号)
//! is read as empty, and missing trailing fields are asked for.

use std::path::Path;

use image::GrayImage;

use crate::api::Failure;

/// What a 控え's QR code carries. `None`: not in the code (ask); `Some("")`: empty in the code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyData {
    pub insurer_number: Option<String>,
    pub symbol: Option<String>,
    pub number: Option<String>,
    pub branch: Option<String>,
    /// `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    pub exchange_number: Option<String>,
}

pub fn parse_payload(text: &str) -> Result<CopyData, String> {
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{1a}');
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() < 2 || parts.len() > 6 {
        return Err(format!(
            "控えのQRコードではありません（「保険者番号,記号,番号,枝番,生年月日,引換番号」の形ではない: {} 項目）",
            parts.len()
        ));
    }
    let field = |i: usize, keep_empty: bool| -> Option<String> {
        parts
            .get(i)
            .map(|s| s.to_string())
            .filter(|s| keep_empty || !s.is_empty())
    };
    let birth_date = match field(4, false) {
        None => None,
        Some(b) if b.len() == 8 && b.bytes().all(|c| c.is_ascii_digit()) => {
            Some(format!("{}-{}-{}", &b[0..4], &b[4..6], &b[6..8]))
        }
        Some(b) => return Err(format!("生年月日「{b}」が YYYYMMDD ではありません")),
    };
    Ok(CopyData {
        insurer_number: field(0, false),
        // 記号 may legitimately be empty (e.g. 国民健康保険 without 記号): keep "" when present.
        symbol: field(1, true),
        number: field(2, false),
        branch: field(3, false),
        birth_date,
        exchange_number: field(5, false),
    })
}

/// Decodes every QR symbol in the image and returns the first that is a 控え payload.
pub fn read_image(path: &Path) -> Result<(String, CopyData), Failure> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Failure::Usage(format!("画像 {} を開けません: {e}", path.display())))?
        .with_guessed_format()
        .map_err(|e| Failure::Usage(format!("画像 {} を読めません: {e}", path.display())))?
        .decode()
        .map_err(|e| {
            Failure::Usage(format!(
                "画像 {} を読めません（PNG か JPEG にしてください）: {e}",
                path.display()
            ))
        })?
        .to_luma8();
    let payloads = decode_all(&img);
    if payloads.is_empty() {
        return Err(Failure::Usage(format!(
            "画像 {} にQRコードが見つかりません。控え全体が写るように、明るく正面から撮り直すか、\
             pharmacy-client receive --number … で手入力してください。",
            path.display()
        )));
    }
    let mut last = String::new();
    for p in &payloads {
        match parse_payload(p) {
            Ok(d) => return Ok((p.clone(), d)),
            Err(e) => last = e,
        }
    }
    Err(Failure::Usage(last))
}

/// rqrr misses symbols whose modules are many pixels wide (a 200–300 dpi scan), so a failed
/// attempt is retried on smaller copies of the image.
fn decode_all(img: &GrayImage) -> Vec<String> {
    for scale in [1u32, 2, 3, 4, 6] {
        let attempt = if scale == 1 {
            decode_at(img.clone())
        } else {
            let (w, h) = (img.width() / scale, img.height() / scale);
            if w < 21 || h < 21 {
                break;
            }
            decode_at(image::imageops::resize(
                img,
                w,
                h,
                image::imageops::FilterType::Triangle,
            ))
        };
        if !attempt.is_empty() {
            return attempt;
        }
    }
    Vec::new()
}

fn decode_at(img: GrayImage) -> Vec<String> {
    let mut prepared = rqrr::PreparedImage::prepare(img);
    prepared
        .detect_grids()
        .iter()
        .filter_map(|g| g.decode().ok().map(|(_, text)| text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_with_every_field() {
        let d = parse_payload("31130842,2022,010001,01,20110101,012345").unwrap();
        assert_eq!(d.insurer_number.as_deref(), Some("31130842"));
        assert_eq!(d.symbol.as_deref(), Some("2022"));
        assert_eq!(d.number.as_deref(), Some("010001"));
        assert_eq!(d.branch.as_deref(), Some("01"));
        assert_eq!(d.birth_date.as_deref(), Some("2011-01-01"));
        assert_eq!(d.exchange_number.as_deref(), Some("012345"));
    }

    #[test]
    fn empty_symbol_is_kept_and_missing_fields_are_none() {
        let d = parse_payload("01130012,,5678,01").unwrap();
        assert_eq!(d.symbol.as_deref(), Some(""));
        assert_eq!(d.birth_date, None);
        assert_eq!(d.exchange_number, None);
    }

    #[test]
    fn other_codes_are_refused() {
        assert!(parse_payload("https://example.com").is_err());
        assert!(parse_payload("01130012,1,2,01,1975-07-07,123456").is_err());
    }
}
