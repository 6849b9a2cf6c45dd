//! The JAHIS 2-D symbol text of a paper prescription (domain.md §3.3): the SJ1 records, but with
//! the first line `JAHIS10`, Shift_JIS, CR LF line ends, a final 0x1A, and full-width commas
//! inside text. This module is the pure text codec; `documents::qr` turns the bytes into QR
//! symbols and back.
//!
//! Shift_JIS is encoding_rs's (the WHATWG encoding, i.e. the Windows code page 932 repertoire:
//! JIS X 0208 plus the NEC and IBM extensions, so 髙 and 﨑 are carried as FB FC and FA B1).
//! A character it cannot encode (𠮷, most of JIS X 0213, emoji), and CR, LF or 0x1A inside a field
//! (which would break the line structure), is written as `■` and reported in
//! [`JahisText::replaced`] so the clinic can see which name was changed on paper.
//!
//! Six JIS X 0208 characters have two Unicode spellings (the JIS one and the Windows one, e.g.
//! 〜 U+301C WAVE DASH and ～ U+FF5E); encoding_rs knows only the Windows one, so the JIS spelling
//! is written as the same JIS code (〜 → 81 60) instead of `■`, and reads back in the Windows
//! spelling.

use encoding_rs::{DecoderResult, SHIFT_JIS};

use super::sj1::{self, Record, Sj1Error};

/// The first line of every JAHIS text.
pub const HEADER: &str = "JAHIS10";
/// The end-of-file byte that closes the text.
pub const END_OF_FILE: u8 = 0x1A;
/// What stands in for a character Shift_JIS cannot carry.
pub const REPLACEMENT: char = '■';

/// A JAHIS text ready for the 2-D symbol, and the characters it could not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JahisText {
    pub bytes: Vec<u8>,
    pub replaced: Vec<Replacement>,
}

/// One character replaced by `■`: in record `record` (its number, e.g. 11 患者氏名), field
/// `field_index` (0-based index into [`Record::fields`], i.e. the field after the record number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub record: u16,
    pub field_index: usize,
    pub original: char,
}

/// Why bytes are not a JAHIS text. Lines are numbered from 1 (line 1 is `JAHIS10`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JahisError {
    #[error("line 1: the text is empty; a JAHIS text starts with the line `JAHIS10`")]
    Empty,
    #[error("line 1: the first line must be `JAHIS10`, found `{found}`")]
    Header { found: String },
    #[error("line {line}: a line ends in a lone {what}; JAHIS lines end in CR LF")]
    LineBreak { line: usize, what: &'static str },
    #[error("line {line}: the end-of-file byte 0x1A before the end of the text")]
    EndOfFile { line: usize },
    #[error("line {line}: byte {column} is not valid Shift_JIS")]
    ShiftJis { line: usize, column: usize },
    #[error("{}", describe(.0))]
    Records(Vec<Sj1Error>),
}

/// `line 4, record 201, 用量: …; line 7: …` (Sj1Error's own text says "sj1 line").
fn describe(errors: &[Sj1Error]) -> String {
    let one = |e: &Sj1Error| {
        let mut s = format!("line {}", e.line);
        if let Some(record) = e.record {
            s.push_str(&format!(", record {record}"));
        }
        if !e.field.is_empty() {
            s.push_str(&format!(", {}", e.field));
        }
        format!("{s}: {}", e.message)
    };
    errors.iter().map(one).collect::<Vec<_>>().join("; ")
}

impl JahisError {
    /// The line the problem is on (the first one, for record errors).
    pub fn line(&self) -> usize {
        match self {
            JahisError::Empty | JahisError::Header { .. } => 1,
            JahisError::LineBreak { line, .. }
            | JahisError::EndOfFile { line }
            | JahisError::ShiftJis { line, .. } => *line,
            JahisError::Records(errors) => errors.first().map_or(1, |e| e.line),
        }
    }
}

/// Encodes records as a JAHIS text: `JAHIS10` CR LF, one `no,field,…` CR LF per record, 0x1A.
pub fn encode(records: &[Record]) -> JahisText {
    let mut bytes = Vec::with_capacity(16 + records.len() * 48);
    let mut replaced = Vec::new();
    bytes.extend_from_slice(HEADER.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    for record in records {
        bytes.extend_from_slice(record.no.to_string().as_bytes());
        for (field_index, field) in record.fields.iter().enumerate() {
            bytes.push(b',');
            for c in field.chars() {
                // sj1 already writes "，" for a comma inside text; this keeps the line intact
                // whoever built the record.
                let c = if c == ',' { '，' } else { c };
                if !push_shift_jis(&mut bytes, c) {
                    push_shift_jis(&mut bytes, REPLACEMENT);
                    replaced.push(Replacement {
                        record: record.no,
                        field_index,
                        original: c,
                    });
                }
            }
        }
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.push(END_OF_FILE);
    JahisText { bytes, replaced }
}

/// Appends `c` in Shift_JIS; false if it cannot be carried.
fn push_shift_jis(out: &mut Vec<u8>, c: char) -> bool {
    let c = match c {
        '\r' | '\n' | '\u{1A}' => return false,
        // the JIS spelling → the Windows spelling of the same JIS X 0208 character
        '\u{301C}' => '\u{FF5E}', // 〜 WAVE DASH, 81 60
        '\u{2016}' => '\u{2225}', // ‖ DOUBLE VERTICAL LINE, 81 61
        '\u{2014}' => '\u{2015}', // — EM DASH, 81 5C
        '\u{00A2}' => '\u{FFE0}', // ¢, 81 91
        '\u{00A3}' => '\u{FFE1}', // £, 81 92
        '\u{00AC}' => '\u{FFE2}', // ¬, 81 CA
        c => c,
    };
    let mut utf8 = [0u8; 4];
    let (encoded, _, unmappable) = SHIFT_JIS.encode(c.encode_utf8(&mut utf8));
    if unmappable {
        return false;
    }
    out.extend_from_slice(&encoded);
    true
}

/// Decodes a JAHIS text back into its records (the inverse of [`encode`] for records whose
/// characters were all carried and hold no ASCII comma). The final 0x1A and the final CR LF may be
/// missing; everything else is checked: the header, CR LF between lines, Shift_JIS, and each
/// record line as SJ1 reads it.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, JahisError> {
    let body = bytes.strip_suffix(&[END_OF_FILE]).unwrap_or(bytes);
    if body.is_empty() {
        return Err(JahisError::Empty);
    }
    // Splitting the bytes before decoding is safe: no Shift_JIS trail byte is CR, LF or 0x1A.
    let lines = split_crlf(body);
    for (i, line) in lines.iter().enumerate() {
        if let Some(&b) = line
            .iter()
            .find(|&&b| matches!(b, b'\r' | b'\n' | END_OF_FILE))
        {
            return Err(match b {
                END_OF_FILE => JahisError::EndOfFile { line: i + 1 },
                b'\r' => JahisError::LineBreak {
                    line: i + 1,
                    what: "CR",
                },
                _ => JahisError::LineBreak {
                    line: i + 1,
                    what: "LF",
                },
            });
        }
    }
    if lines[0] != HEADER.as_bytes() {
        let (shown, _) = SHIFT_JIS.decode_without_bom_handling(lines[0]);
        let mut found: String = shown.chars().take(24).collect();
        if shown.chars().count() > 24 {
            found.push('…');
        }
        return Err(JahisError::Header { found });
    }
    let mut text = Vec::with_capacity(lines.len() - 1);
    for (i, line) in lines.iter().enumerate().skip(1) {
        text.push((i + 1, decode_line(line, i + 1)?));
    }
    let lines: Vec<(usize, &str)> = text.iter().map(|(n, s)| (*n, s.as_str())).collect();
    sj1::parse_records(&lines).map_err(JahisError::Records)
}

/// The lines of `body`, each without its CR LF; a last line without CR LF counts too.
fn split_crlf(body: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                lines.push(&rest[..end]);
                rest = &rest[end + 2..];
            }
            None => {
                lines.push(rest);
                break;
            }
        }
    }
    lines
}

fn decode_line(line: &[u8], number: usize) -> Result<String, JahisError> {
    let mut decoder = SHIFT_JIS.new_decoder_without_bom_handling();
    let capacity = decoder
        .max_utf8_buffer_length_without_replacement(line.len())
        .unwrap_or(line.len() * 3 + 16);
    let mut out = String::with_capacity(capacity);
    let (result, read) = decoder.decode_to_string_without_replacement(line, &mut out, true);
    match result {
        DecoderResult::InputEmpty => Ok(out),
        DecoderResult::Malformed(bad, after) => Err(JahisError::ShiftJis {
            line: number,
            column: (read + 1).saturating_sub(bad as usize + after as usize),
        }),
        DecoderResult::OutputFull => Err(JahisError::ShiftJis {
            line: number,
            column: read + 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn rec(no: u16, fields: &[&str]) -> Record {
        Record {
            no,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            rec(1, &["1", "1234567", "13", "テスト,病院"]),
            rec(5, &["", "ｲｼｬ", "医者　三郎"]),
            rec(12, &["2"]),
            rec(
                201,
                &[
                    "1",
                    "1",
                    "1",
                    "2",
                    "622688101",
                    "ミニリンメルトＯＤ錠２５μｇ",
                    "0.25",
                    "1",
                    "錠",
                ],
            ),
        ]
    }

    #[test]
    fn jahis_encode_is_byte_exact() {
        // Expected bytes written out by hand from the JIS X 0208 code table (checked with
        // `iconv -t SHIFT_JIS`, independent of encoding_rs).
        let expected: &[u8] = b"JAHIS10\r\n\
            1,1,1234567,13,\x83\x65\x83\x58\x83\x67\x81\x43\x95\x61\x89\x40\r\n\
            5,,\xb2\xbc\xac,\x88\xe3\x8e\xd2\x81\x40\x8e\x4f\x98\x59\r\n\
            12,2\r\n\
            201,1,1,1,2,622688101,\x83\x7e\x83\x6a\x83\x8a\x83\x93\x83\x81\x83\x8b\x83\x67\
            \x82\x6e\x82\x63\x8f\xf9\x82\x51\x82\x54\x83\xca\x82\x87,0.25,1,\x8f\xf9\r\n\
            \x1a";
        let text = encode(&sample());
        assert_eq!(text.bytes, expected);
        assert!(text.replaced.is_empty());
        assert_eq!(encode(&[]).bytes, b"JAHIS10\r\n\x1a");
    }

    #[test]
    fn jahis_characters_outside_shift_jis_become_squares_and_are_reported() {
        let records = vec![
            rec(11, &["", "𠮷田　𠮷子", "ﾖｼﾀﾞ ﾖｼｺ"]),
            rec(81, &["1", "1", "改行\nあり😀"]),
        ];
        let text = encode(&records);
        let square = [0x81, 0xA1];
        let expected: Vec<u8> = [
            &b"JAHIS10\r\n11,,"[..],
            &square,
            &[0x93, 0x63, 0x81, 0x40], // 田, ideographic space
            &square,
            &[0x8e, 0x71], // 子
            b",\xd6\xbc\xc0\xde \xd6\xbc\xba\r\n81,1,1,",
            &[0x89, 0xfc, 0x8d, 0x73], // 改行
            &square,
            &[0x82, 0xa0, 0x82, 0xe8], // あり
            &square,
            b"\r\n\x1a",
        ]
        .concat();
        assert_eq!(text.bytes, expected);
        let at = |record, field_index, original| Replacement {
            record,
            field_index,
            original,
        };
        assert_eq!(
            text.replaced,
            vec![
                at(11, 1, '𠮷'),
                at(11, 1, '𠮷'),
                at(81, 2, '\n'),
                at(81, 2, '😀')
            ]
        );
        let back = decode(&text.bytes).unwrap();
        assert_eq!(back[0].fields[1], "■田　■子");
    }

    #[test]
    fn jahis_jis_spellings_are_written_as_their_jis_code() {
        let text = encode(&[rec(111, &["1", "3", "", "２〜３錠‖—¢£¬"])]);
        assert!(text.replaced.is_empty(), "{:?}", text.replaced);
        assert_eq!(
            text.bytes,
            b"JAHIS10\r\n111,1,3,,\x82\x51\x81\x60\x82\x52\x8f\xf9\x81\x61\x81\x5c\x81\x91\x81\x92\x81\xca\r\n\x1a"
        );
        assert_eq!(
            decode(&text.bytes).unwrap()[0].fields[3],
            "２～３錠∥―￠￡￢"
        );
    }

    #[test]
    fn jahis_windows_932_extensions_are_carried() {
        // 髙 and 﨑 are outside JIS X 0208 but in code page 932 (IBM extensions), which is what
        // encoding_rs's Shift_JIS writes; they come back unchanged.
        let records = vec![rec(11, &["", "髙橋　﨑子", "ﾀｶﾊｼ ｻｷｺ"])];
        let text = encode(&records);
        assert!(text.replaced.is_empty());
        assert!(text.bytes.windows(2).any(|w| w == [0xFB, 0xFC]));
        assert!(text.bytes.windows(2).any(|w| w == [0xFA, 0xB1]));
        assert_eq!(decode(&text.bytes).unwrap(), records);
    }

    #[test]
    fn jahis_ascii_comma_in_a_field_becomes_full_width() {
        let text = encode(&[rec(81, &["1", "1", "朝,夕"])]);
        assert_eq!(
            text.bytes,
            b"JAHIS10\r\n81,1,1,\x92\xa9\x81\x43\x97\x5b\r\n\x1a"
        );
        assert_eq!(
            decode(&text.bytes).unwrap(),
            vec![rec(81, &["1", "1", "朝，夕"])]
        );
    }

    #[test]
    fn jahis_decode_inverts_encode() {
        // sj1 never hands over an ASCII comma inside a field
        let mut records = sample();
        records[0].fields[3] = "テスト，病院".into();
        assert_eq!(decode(&encode(&records).bytes).unwrap(), records);
        // random records from a pool of characters Shift_JIS carries (no ASCII comma)
        let pool: Vec<char> = "0123456789.-abcXYZ ｱｲｳｶﾞﾊﾟﾞﾟ･ｰ あいうアイウ漢字処方箋錠剤散\
                               ，、。（）「」【】～－×μｇｍｌ　①Ⅱ髙﨑德"
            .chars()
            .collect();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let records: Vec<Record> = (0..rng.random_range(0..12))
                .map(|_| Record {
                    no: rng.random_range(0..=u16::MAX),
                    fields: (0..rng.random_range(0..10))
                        .map(|_| {
                            (0..rng.random_range(0..8))
                                .map(|_| pool[rng.random_range(0..pool.len())])
                                .collect()
                        })
                        .collect(),
                })
                .collect();
            let text = encode(&records);
            assert!(text.replaced.is_empty());
            assert_eq!(decode(&text.bytes).unwrap(), records);
        }
    }

    #[test]
    fn jahis_decode_tolerates_a_missing_final_crlf_and_end_of_file_byte() {
        let want = vec![rec(12, &["2"]), rec(13, &["20110101"])];
        for bytes in [
            &b"JAHIS10\r\n12,2\r\n13,20110101\r\n\x1a"[..],
            b"JAHIS10\r\n12,2\r\n13,20110101\r\n",
            b"JAHIS10\r\n12,2\r\n13,20110101\x1a",
            b"JAHIS10\r\n12,2\r\n13,20110101",
        ] {
            assert_eq!(decode(bytes).unwrap(), want, "{bytes:?}");
        }
        assert_eq!(decode(b"JAHIS10\x1a").unwrap(), vec![]);
    }

    #[test]
    fn jahis_decode_errors_name_the_problem_and_the_line() {
        let cases: [(&[u8], JahisError); 11] = [
            (b"", JahisError::Empty),
            (b"\x1a", JahisError::Empty),
            (
                b"SJ1\r\n12,2\r\n\x1a",
                JahisError::Header {
                    found: "SJ1".into(),
                },
            ),
            (
                b"JAHIS9\r\n12,2\r\n\x1a",
                JahisError::Header {
                    found: "JAHIS9".into(),
                },
            ),
            (
                b"JAHIS10 \r\n12,2\r\n\x1a",
                JahisError::Header {
                    found: "JAHIS10 ".into(),
                },
            ),
            (
                b"JAHIS10\n12,2\n\x1a",
                JahisError::LineBreak {
                    line: 1,
                    what: "LF",
                },
            ),
            (
                b"JAHIS10\r\n12,2\r\n13,20110101\n21,1\r\n\x1a",
                JahisError::LineBreak {
                    line: 3,
                    what: "LF",
                },
            ),
            (
                b"JAHIS10\r\n12,2\r13,20110101\r\n\x1a",
                JahisError::LineBreak {
                    line: 2,
                    what: "CR",
                },
            ),
            (
                b"JAHIS10\r\n12,2\r\n\x1a13,20110101\r\n",
                JahisError::EndOfFile { line: 3 },
            ),
            (
                b"JAHIS10\r\n12,2\r\n11,,\x88\xe3\xff\x8e\xd2\r\n\x1a",
                JahisError::ShiftJis { line: 3, column: 7 },
            ),
            (
                b"JAHIS10\r\n12,2\r\n11,,\x88\r\n\x1a",
                JahisError::ShiftJis { line: 3, column: 5 },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes), Err(want.clone()), "{bytes:?}");
        }
        let e = decode(b"JAHIS10\r\n12,2\r\n11,,\x88\xe3\xff\x8e\xd2\r\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: byte 7 is not valid Shift_JIS");
        assert_eq!(e.line(), 3);

        // Record lines go through the SJ1 line reader, which names the line.
        let e = decode(b"JAHIS10\r\n12,2\r\n\r\nabc,1\r\n\x1a").unwrap_err();
        let JahisError::Records(errors) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(e.line(), 3);
        let message = e.to_string();
        assert!(message.starts_with("line 3, レコード番号: "), "{message}");
        assert!(message.contains("; line 4, レコード番号: "), "{message}");
    }

    #[test]
    fn jahis_decode_never_panics_on_garbage() {
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..3000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                Vec::new()
            } else {
                b"JAHIS10\r\n".to_vec()
            };
            let alphabet: &[u8] = b",0123456789\r\n\x1a\x81\x82\x88\xe0\xfc\xa1\xff";
            for _ in 0..rng.random_range(0..200) {
                bytes.push(if rng.random_bool(0.5) {
                    rng.random()
                } else {
                    alphabet[rng.random_range(0..alphabet.len())]
                });
            }
            if let Ok(records) = decode(&bytes) {
                // whatever decodes re-encodes to a text that decodes the same (unless it holds a
                // character the encoder does not write, e.g. a user-defined one from F0–F9)
                let again = encode(&records);
                if again.replaced.is_empty() {
                    assert_eq!(decode(&again.bytes).unwrap(), records);
                }
            }
        }
    }
}
