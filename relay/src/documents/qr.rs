//! QR symbols: an ordinary symbol (the 控え's `保険者番号,記号,番号,枝番,生年月日,引換番号`), the JAHIS
//! 2-D code of a paper prescription (one symbol, or up to 16 joined by Structured Append), and reading
//! them back from an image.
//!
//! Choices (domain.md 3.3, 3.4):
//! - Error correction level **M** everywhere (15 % of codewords recoverable).
//! - Data in **byte mode** only: the JAHIS text is Shift_JIS bytes and is carried unchanged.
//! - JAHIS symbols are capped at **version 20** (97 × 97 modules): at 0.35 mm per module a symbol is
//!   34 mm wide, which a FAX at 200 dpi (0.127 mm per dot, ~3 dots per module) and a pharmacy's
//!   scanner still resolve on A5 paper. One version-20-M symbol carries 666 bytes plain, 664 bytes
//!   after the Structured Append header; 16 symbols carry at most 10,624 bytes.
//! - Structured Append splits fall on Shift_JIS character boundaries, so each symbol alone still
//!   holds whole characters; all symbols of a set share the smallest version that fits the largest
//!   part.
//!
//! Why part of this is hand-written:
//! - **Encoding.** The `qrcode` crate can push the Structured Append mode indicator, but not the
//!   16 raw bits that follow it (position, total − 1, parity): its `Bits::push_number` is private.
//!   So [`jahis_symbols`] writes the data bit stream itself (a tiny `BitWriter`) and hands the
//!   codewords to `qrcode`'s public `ec::construct_codewords` and `canvas::Canvas`, which compute
//!   the Reed–Solomon codewords, place them and choose the mask. Ordinary symbols use `qrcode`'s own
//!   `Bits` API.
//! - **Decoding.** `rqrr` 0.11 finds symbols, samples their modules and reads the format (EC
//!   level, mask) with its BCH correction, but its payload decoder stops at mode 0011 (Structured
//!   Append) with `UnknownDataType`, and the corrected codewords never leave the crate
//!   (`codestream_ecc` is private; `Grid::get_raw_data` gives only the raw, uncorrected, masked
//!   bits). So for a symbol `rqrr` cannot decode we take its raw bits (unmasked through a wrapper
//!   grid), de-interleave the blocks (layout taken from `qrcode`'s own tables through
//!   `construct_codewords`, see `BlockLayout`), correct each block with the small Reed–Solomon
//!   decoder in `mod rs`, and parse the segments ourselves. Without the correction a single misread
//!   module (a FAX, a JPEG) would make the whole set unreadable.

use std::collections::BTreeMap;
use std::io::Cursor;

use image::{GrayImage, ImageFormat, Luma};
use qrcode::bits::Bits;
use qrcode::canvas::Canvas;
use qrcode::types::{Color, EcLevel, Version};
use qrcode::{QrCode, ec};
use rqrr::BitGrid;

use super::QrMatrix;

/// Error correction level of every symbol we print.
pub const EC_LEVEL: EcLevel = EcLevel::M;
/// Largest version of a JAHIS symbol (see the module documentation).
pub const JAHIS_MAX_VERSION: i16 = 20;
/// Structured Append counts symbols in 4 bits.
pub const MAX_SYMBOLS: usize = 16;
/// Modules of light margin around each symbol in [`render_png`].
pub const QUIET_ZONE: u32 = 4;

/// Bits of the Structured Append header: mode 0011, position, total − 1, parity.
const SA_HEADER_BITS: usize = 4 + 4 + 4 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error(
        "{len} bytes do not fit in one QR symbol (at most {max} bytes in byte mode at level M)"
    )]
    TooLong { len: usize, max: usize },
    #[error(
        "{len} bytes do not fit in {MAX_SYMBOLS} structured-append symbols of version \
         {JAHIS_MAX_VERSION} (at most {max} bytes)"
    )]
    TooLongForJahis { len: usize, max: usize },
    #[error("the QR encoder failed: {0}")]
    Encode(String),
    #[error("no QR symbol found in the image")]
    NoSymbol,
    #[error("{found} QR symbol(s) found in the image, none readable ({reason})")]
    Unreadable { found: usize, reason: String },
    #[error(
        "structured append: symbol(s) {missing:?} of {total} missing (numbered from 1; \
         {unreadable} symbol(s) in the image could not be read)"
    )]
    MissingSymbols {
        total: u8,
        missing: Vec<u8>,
        unreadable: usize,
    },
    #[error("structured append: the symbols do not form one set ({0})")]
    InconsistentSet(String),
    #[error(
        "structured append: parity {expected:#04x} in the headers, {actual:#04x} over the data"
    )]
    Parity { expected: u8, actual: u8 },
    #[error("the image holds {plain} ordinary symbol(s) next to structured-append symbols")]
    Mixed { plain: usize },
    #[error("the image holds {0} ordinary QR symbols with different contents")]
    SeveralSymbols(usize),
}

impl From<qrcode::types::QrError> for QrError {
    fn from(e: qrcode::types::QrError) -> Self {
        QrError::Encode(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// One ordinary QR symbol: byte mode, level M, the smallest version (up to 40) that holds `data`.
pub fn symbol(data: &[u8]) -> Result<QrMatrix, QrError> {
    plain_symbol(data, 40)
}

/// The JAHIS 2-D code: one ordinary symbol when `data` fits in version [`JAHIS_MAX_VERSION`],
/// otherwise 2 to 16 symbols joined by Structured Append (in order: position 0 first).
pub fn jahis_symbols(data: &[u8]) -> Result<Vec<QrMatrix>, QrError> {
    if data.len() <= plain_capacity(JAHIS_MAX_VERSION) {
        return Ok(vec![plain_symbol(data, JAHIS_MAX_VERSION)?]);
    }
    let cap = sa_capacity(JAHIS_MAX_VERSION);
    let parts = split(data, cap).ok_or(QrError::TooLongForJahis {
        len: data.len(),
        max: cap * MAX_SYMBOLS,
    })?;
    let largest = parts.iter().map(|p| p.len()).max().unwrap_or(0);
    let version = (1..=JAHIS_MAX_VERSION)
        .find(|&v| sa_capacity(v) >= largest)
        .ok_or(QrError::TooLongForJahis {
            len: data.len(),
            max: cap * MAX_SYMBOLS,
        })?;
    let parity = data.iter().fold(0u8, |acc, b| acc ^ b);
    let total = parts.len() as u8;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| sa_symbol(version, i as u8, total, parity, part))
        .collect()
}

fn plain_symbol(data: &[u8], max_version: i16) -> Result<QrMatrix, QrError> {
    for v in 1..=max_version {
        let mut bits = Bits::new(Version::Normal(v));
        if bits.push_byte_data(data).is_err() || bits.push_terminator(EC_LEVEL).is_err() {
            continue;
        }
        let code = QrCode::with_bits(bits, EC_LEVEL)?;
        return Ok(QrMatrix {
            width: code.width(),
            dark: code
                .to_colors()
                .into_iter()
                .map(|c| c == Color::Dark)
                .collect(),
        });
    }
    Err(QrError::TooLong {
        len: data.len(),
        max: plain_capacity(max_version),
    })
}

/// Data codewords of a version at level M.
fn data_codewords(version: i16) -> usize {
    Bits::new(Version::Normal(version))
        .max_len(EC_LEVEL)
        .map_or(0, |bits| bits / 8)
}

/// Bits of the character count of a byte-mode segment.
fn byte_count_bits(version: usize) -> usize {
    if version <= 9 { 8 } else { 16 }
}

/// Bytes one byte-mode segment can carry in a symbol (no terminator needed when full).
fn plain_capacity(version: i16) -> usize {
    (data_codewords(version) * 8).saturating_sub(4 + byte_count_bits(version as usize)) / 8
}

/// Bytes one byte-mode segment can carry after a Structured Append header.
fn sa_capacity(version: i16) -> usize {
    (data_codewords(version) * 8)
        .saturating_sub(SA_HEADER_BITS + 4 + byte_count_bits(version as usize))
        / 8
}

/// Where each Shift_JIS character starts (a lead byte 0x81–0x9F or 0xE0–0xFC takes the next byte).
fn char_starts(data: &[u8]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        starts.push(i);
        let lead = matches!(data[i], 0x81..=0x9F | 0xE0..=0xFC);
        i += if lead && i + 1 < data.len() { 2 } else { 1 };
    }
    starts
}

/// Splits `data` into at most [`MAX_SYMBOLS`] parts of at most `cap` bytes, at character
/// boundaries, as even as possible; `None` if it cannot.
fn split(data: &[u8], cap: usize) -> Option<Vec<&[u8]>> {
    let starts = char_starts(data);
    let min_parts = data.len().div_ceil(cap.max(1)).max(2);
    for n in min_parts..=MAX_SYMBOLS {
        // Parts of at least `target` bytes need no more than n parts; +1 lets a two-byte
        // character straddle the target instead of starting a part of its own.
        let limit = (data.len().div_ceil(n) + 1).min(cap);
        let mut parts = Vec::new();
        let mut begin = 0;
        let mut prev = 0;
        for &s in starts.iter().skip(1).chain(std::iter::once(&data.len())) {
            if s - begin > limit {
                if prev == begin {
                    return None; // a character longer than a part: cap < 2
                }
                parts.push(&data[begin..prev]);
                begin = prev;
            }
            prev = s;
        }
        parts.push(&data[begin..]);
        if parts.len() <= n {
            return Some(parts);
        }
    }
    None
}

/// A big-endian bit stream, as QR data is written.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    len: usize,
}

impl BitWriter {
    fn push(&mut self, value: u32, bits: usize) {
        for i in (0..bits).rev() {
            if self.len.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if (value >> i) & 1 == 1 {
                let last = self.bytes.len() - 1;
                self.bytes[last] |= 0x80 >> (self.len % 8);
            }
            self.len += 1;
        }
    }
}

/// The data codewords of one Structured Append symbol: the header, one byte-mode segment, the
/// terminator (as much of it as fits) and the pad codewords 0xEC 0x11 up to the capacity.
fn sa_codewords(version: i16, index: u8, total: u8, parity: u8, part: &[u8]) -> Vec<u8> {
    let capacity = data_codewords(version);
    let mut w = BitWriter::default();
    w.push(0b0011, 4);
    w.push(u32::from(index), 4);
    w.push(u32::from(total - 1), 4);
    w.push(u32::from(parity), 8);
    w.push(0b0100, 4);
    w.push(part.len() as u32, byte_count_bits(version as usize));
    for &b in part {
        w.push(u32::from(b), 8);
    }
    let terminator = (capacity * 8).saturating_sub(w.len).min(4);
    w.push(0, terminator);
    let mut bytes = w.bytes; // the last byte is already zero-filled to its boundary
    for pad in [0xEC, 0x11].into_iter().cycle() {
        if bytes.len() >= capacity {
            break;
        }
        bytes.push(pad);
    }
    bytes
}

fn sa_symbol(
    version: i16,
    index: u8,
    total: u8,
    parity: u8,
    part: &[u8],
) -> Result<QrMatrix, QrError> {
    let codewords = sa_codewords(version, index, total, parity, part);
    let version = Version::Normal(version);
    let (data, ec) = ec::construct_codewords(&codewords, version, EC_LEVEL)?;
    let mut canvas = Canvas::new(version, EC_LEVEL);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data, &ec);
    let canvas = canvas.apply_best_mask();
    Ok(QrMatrix {
        width: version.width() as usize,
        dark: canvas
            .into_colors()
            .into_iter()
            .map(|c| c == Color::Dark)
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Test helper: the symbols side by side, each with its own quiet zone, `scale` pixels per module,
/// as PNG bytes.
pub fn render_png(m: &[QrMatrix], scale: u32) -> Vec<u8> {
    let scale = scale.max(1);
    let q = QUIET_ZONE;
    let widths: Vec<u32> = m.iter().map(|s| s.width as u32).collect();
    let total_modules: u32 = widths.iter().map(|w| w + 2 * q).sum::<u32>().max(1);
    let height_modules = widths.iter().max().map_or(1, |w| w + 2 * q);
    let mut img =
        GrayImage::from_pixel(total_modules * scale, height_modules * scale, Luma([255u8]));
    let mut left = 0;
    for s in m {
        for y in 0..s.width {
            for x in 0..s.width {
                if !s.is_dark(x, y) {
                    continue;
                }
                let px = (left + q + x as u32) * scale;
                let py = (q + y as u32) * scale;
                for dy in 0..scale {
                    for dx in 0..scale {
                        img.put_pixel(px + dx, py + dy, Luma([0u8]));
                    }
                }
            }
        }
        left += s.width as u32 + 2 * q;
    }
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .expect("PNG encoding into memory does not fail");
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// The Structured Append header of one symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SaHeader {
    index: u8,
    total: u8,
    parity: u8,
}

/// Reads every QR symbol in `img`. Structured Append symbols are ordered by position, checked for
/// completeness, a common total and the parity, and concatenated; a single ordinary symbol gives
/// its bytes.
pub fn decode_image(img: &GrayImage) -> Result<Vec<u8>, QrError> {
    // rqrr's finder-pattern search misses symbols whose modules are large in pixels (a 300 dpi
    // page scan finds nothing where the same page at 100 dpi decodes), so a failed attempt is
    // retried on smaller copies of the image.
    let mut first_error = None;
    for scale in [1u32, 2, 3, 4] {
        let attempt = if scale == 1 {
            decode_at_scale(img)
        } else {
            let (w, h) = (img.width() / scale, img.height() / scale);
            if w < 21 || h < 21 {
                break;
            }
            let small = image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle);
            decode_at_scale(&small)
        };
        match attempt {
            Ok(data) => return Ok(data),
            // Keep the most informative error: one that found symbols beats NoSymbol.
            Err(e) => {
                if first_error.is_none() || matches!(first_error, Some(QrError::NoSymbol)) {
                    first_error = Some(e);
                }
            }
        }
    }
    Err(first_error.unwrap_or(QrError::NoSymbol))
}

fn decode_at_scale(img: &GrayImage) -> Result<Vec<u8>, QrError> {
    let mut prepared = rqrr::PreparedImage::prepare(img.clone());
    let grids = prepared.detect_grids();
    if grids.is_empty() {
        return Err(QrError::NoSymbol);
    }
    let found = grids.len();
    let mut plain: Vec<Vec<u8>> = Vec::new();
    let mut parts: Vec<(SaHeader, Vec<u8>)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for grid in &grids {
        match read_symbol(&Modules::sample(&grid.grid)) {
            Ok((None, data)) => plain.push(data),
            Ok((Some(h), data)) => parts.push((h, data)),
            Err(e) => failures.push(e),
        }
    }
    if parts.is_empty() {
        plain.sort();
        plain.dedup();
        return match plain.len() {
            0 => Err(QrError::Unreadable {
                found,
                reason: failures.join("; "),
            }),
            1 => Ok(plain.remove(0)),
            n => Err(QrError::SeveralSymbols(n)),
        };
    }
    if !plain.is_empty() {
        return Err(QrError::Mixed { plain: plain.len() });
    }
    join(parts, failures.len())
}

fn join(parts: Vec<(SaHeader, Vec<u8>)>, unreadable: usize) -> Result<Vec<u8>, QrError> {
    let first = parts[0].0;
    let mut slots: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    for (h, data) in parts {
        if h.total != first.total || h.parity != first.parity {
            return Err(QrError::InconsistentSet(format!(
                "one symbol says {} symbols with parity {:#04x}, another {} with parity {:#04x}",
                first.total, first.parity, h.total, h.parity
            )));
        }
        if h.index >= h.total {
            return Err(QrError::InconsistentSet(format!(
                "symbol position {} in a set of {}",
                h.index + 1,
                h.total
            )));
        }
        if slots.get(&h.index).is_some_and(|other| *other != data) {
            return Err(QrError::InconsistentSet(format!(
                "two different symbols at position {}",
                h.index + 1
            )));
        }
        slots.insert(h.index, data);
    }
    let missing: Vec<u8> = (0..first.total)
        .filter(|i| !slots.contains_key(i))
        .map(|i| i + 1)
        .collect();
    if !missing.is_empty() {
        return Err(QrError::MissingSymbols {
            total: first.total,
            missing,
            unreadable,
        });
    }
    let data: Vec<u8> = slots.into_values().flatten().collect();
    let actual = data.iter().fold(0u8, |acc, b| acc ^ b);
    if actual != first.parity {
        return Err(QrError::Parity {
            expected: first.parity,
            actual,
        });
    }
    Ok(data)
}

/// The modules of a detected symbol, sampled once (rqrr's grid maps every read through the
/// perspective transform of the image).
struct Modules {
    size: usize,
    dark: Vec<bool>,
}

impl Modules {
    fn sample(grid: &dyn BitGrid) -> Self {
        let size = grid.size();
        let mut dark = Vec::with_capacity(size * size);
        for y in 0..size {
            for x in 0..size {
                dark.push(grid.bit(y, x));
            }
        }
        Modules { size, dark }
    }

    fn transposed(&self) -> Self {
        let n = self.size;
        let mut dark = Vec::with_capacity(n * n);
        for y in 0..n {
            for x in 0..n {
                dark.push(self.dark[x * n + y]);
            }
        }
        Modules { size: n, dark }
    }
}

impl BitGrid for Modules {
    fn size(&self) -> usize {
        self.size
    }

    fn bit(&self, y: usize, x: usize) -> bool {
        x < self.size && y < self.size && self.dark[y * self.size + x]
    }
}

/// Reads one symbol: rqrr's own decoder for an ordinary symbol, ours (below) for a symbol it
/// refuses (Structured Append). Also tries the mirrored grid, as rqrr does.
fn read_symbol(modules: &Modules) -> Result<(Option<SaHeader>, Vec<u8>), String> {
    let n = modules.size;
    if !(21..=177).contains(&n) || !(n - 17).is_multiple_of(4) {
        return Err(format!("a grid of {n} modules is no QR symbol"));
    }
    let mut out = Vec::new();
    let rqrr_error = match rqrr::Grid::new(modules).decode_to(&mut out) {
        Ok(_) => return Ok((None, out)),
        Err(e) => e,
    };
    read_corrected(modules)
        .or_else(|e| read_corrected(&modules.transposed()).map_err(|_| e))
        .map_err(|e| format!("{e} (rqrr: {rqrr_error:?})"))
}

/// Adapts `&Modules` for rqrr's `Grid`.
impl BitGrid for &Modules {
    fn size(&self) -> usize {
        self.size
    }

    fn bit(&self, y: usize, x: usize) -> bool {
        (*self).bit(y, x)
    }
}

/// A grid with the data mask removed from every module outside the function patterns, so rqrr's
/// raw bit reader (which leaves the mask on) returns the unmasked codewords.
struct Unmasked<'a> {
    inner: &'a Modules,
    version: Version,
    mask: u16,
}

impl BitGrid for Unmasked<'_> {
    fn size(&self) -> usize {
        self.inner.size
    }

    fn bit(&self, y: usize, x: usize) -> bool {
        let functional =
            qrcode::canvas::is_functional(self.version, self.version.width(), x as i16, y as i16);
        self.inner.bit(y, x) ^ (!functional && mask_bit(self.mask, y, x))
    }
}

/// The eight data masks of ISO/IEC 18004 (row `y`, column `x`).
fn mask_bit(mask: u16, y: usize, x: usize) -> bool {
    match mask {
        0 => (y + x).is_multiple_of(2),
        1 => y.is_multiple_of(2),
        2 => x.is_multiple_of(3),
        3 => (y + x).is_multiple_of(3),
        4 => (y / 2 + x / 3).is_multiple_of(2),
        5 => (y * x) % 2 + (y * x) % 3 == 0,
        6 => ((y * x) % 2 + (y * x) % 3).is_multiple_of(2),
        _ => ((y * x) % 3 + (y + x) % 2).is_multiple_of(2),
    }
}

/// How a version/level splits its codewords into Reed–Solomon blocks. Taken from `qrcode`'s own
/// tables through its public `construct_codewords`, so encoder and decoder cannot disagree:
/// interleaving puts data codeword 1 of block 0 right after codeword 0 of every block, so its
/// position is the number of blocks; the blocks of the second group are one codeword longer.
struct BlockLayout {
    blocks: usize,
    short_len: usize,
    short_blocks: usize,
    ec_len: usize,
    data_len: usize,
}

impl BlockLayout {
    fn of(version: Version, level: EcLevel) -> Result<Self, String> {
        let data_len = Bits::new(version)
            .max_len(level)
            .map_err(|e| e.to_string())?
            / 8;
        let mut probe = vec![0u8; data_len];
        probe[1] = 1;
        let (data, ec) =
            ec::construct_codewords(&probe, version, level).map_err(|e| e.to_string())?;
        let blocks = data.iter().position(|&b| b == 1).ok_or("no block layout")?;
        Ok(BlockLayout {
            blocks,
            short_len: data_len / blocks,
            short_blocks: blocks - data_len % blocks,
            ec_len: ec.len() / blocks,
            data_len,
        })
    }
}

/// Reads a symbol through our own error correction and segment parser.
fn read_corrected(modules: &Modules) -> Result<(Option<SaHeader>, Vec<u8>), String> {
    let (version, data) = corrected_codewords(modules)?;
    parse_segments(&data, version)
}

/// The version and the error-corrected data codewords of a symbol.
fn corrected_codewords(modules: &Modules) -> Result<(usize, Vec<u8>), String> {
    let (meta, _) = rqrr::Grid::new(modules)
        .get_raw_data()
        .map_err(|e| format!("{e:?}"))?;
    let v = meta.version.0;
    if !(1..=40).contains(&v) || modules.size != v * 4 + 17 {
        return Err(format!("a grid of {} modules", modules.size));
    }
    let version = Version::Normal(v as i16);
    let level = match meta.ecc_level {
        0 => EcLevel::M,
        1 => EcLevel::L,
        2 => EcLevel::H,
        _ => EcLevel::Q,
    };
    let unmasked = Unmasked {
        inner: modules,
        version,
        mask: meta.mask,
    };
    let (_, raw) = rqrr::Grid::new(unmasked)
        .get_raw_data()
        .map_err(|e| format!("{e:?}"))?;
    let layout = BlockLayout::of(version, level)?;
    let total = layout.data_len + layout.blocks * layout.ec_len;
    let raw = &raw.data[..raw.len / 8];
    if raw.len() < total {
        return Err(format!("{} codewords read, {total} expected", raw.len()));
    }

    let mut data = Vec::with_capacity(layout.data_len);
    for b in 0..layout.blocks {
        let long = b >= layout.short_blocks;
        let len = layout.short_len + usize::from(long);
        let mut block: Vec<u8> = (0..layout.short_len)
            .map(|j| raw[j * layout.blocks + b])
            .collect();
        if long {
            block.push(raw[layout.short_len * layout.blocks + (b - layout.short_blocks)]);
        }
        block.extend((0..layout.ec_len).map(|k| raw[layout.data_len + k * layout.blocks + b]));
        rs::correct(&mut block, layout.ec_len).map_err(|()| {
            format!(
                "block {} has more errors than level {level:?} corrects",
                b + 1
            )
        })?;
        data.extend_from_slice(&block[..len]);
    }
    Ok((v, data))
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() * 8 - self.pos
    }

    fn take(&mut self, bits: usize) -> Result<u32, String> {
        if bits > self.remaining() {
            return Err("the data ends inside a segment".into());
        }
        let mut v = 0u32;
        for _ in 0..bits {
            let bit = (self.bytes[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }
}

const ALPHANUMERIC: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Parses corrected data codewords into bytes (every mode of ISO/IEC 18004 that carries data;
/// kanji mode yields Shift_JIS bytes) and the Structured Append header if the symbol has one.
fn parse_segments(data: &[u8], version: usize) -> Result<(Option<SaHeader>, Vec<u8>), String> {
    let class = match version {
        1..=9 => 0,
        10..=26 => 1,
        _ => 2,
    };
    let mut r = BitReader {
        bytes: data,
        pos: 0,
    };
    let mut header = None;
    let mut out = Vec::new();
    while r.remaining() >= 4 {
        match r.take(4)? {
            0b0000 => break,
            0b0011 => {
                if r.pos != 4 {
                    return Err("a structured-append header after the first segment".into());
                }
                header = Some(SaHeader {
                    index: r.take(4)? as u8,
                    total: r.take(4)? as u8 + 1,
                    parity: r.take(8)? as u8,
                });
            }
            0b0100 => {
                let n = r.take([8, 16, 16][class])?;
                for _ in 0..n {
                    out.push(r.take(8)? as u8);
                }
            }
            0b1000 => {
                let n = r.take([8, 10, 12][class])?;
                for _ in 0..n {
                    let v = r.take(13)?;
                    let v = ((v / 0xC0) << 8) | (v % 0xC0);
                    let sjis = if v + 0x8140 <= 0x9FFC {
                        v + 0x8140
                    } else {
                        v + 0xC140
                    };
                    out.extend_from_slice(&[(sjis >> 8) as u8, sjis as u8]);
                }
            }
            0b0001 => {
                let mut n = r.take([10, 12, 14][class])?;
                while n > 0 {
                    let digits = n.min(3);
                    let v = r.take([0, 4, 7, 10][digits as usize])?;
                    if v >= 10u32.pow(digits) {
                        return Err("an invalid numeric group".into());
                    }
                    out.extend(format!("{v:0width$}", width = digits as usize).bytes());
                    n -= digits;
                }
            }
            0b0010 => {
                let mut n = r.take([9, 11, 13][class])?;
                while n > 0 {
                    if n >= 2 {
                        let v = r.take(11)?;
                        if v >= 45 * 45 {
                            return Err("an invalid alphanumeric pair".into());
                        }
                        out.push(ALPHANUMERIC[(v / 45) as usize]);
                        out.push(ALPHANUMERIC[(v % 45) as usize]);
                        n -= 2;
                    } else {
                        let v = r.take(6)?;
                        out.push(*ALPHANUMERIC.get(v as usize).ok_or("an invalid character")?);
                        n -= 1;
                    }
                }
            }
            0b0111 => {
                // ECI: the designator is 1, 2 or 3 bytes; the bytes that follow are kept as is.
                let first = r.take(8)?;
                if first & 0x80 != 0 {
                    r.take(if first & 0xC0 == 0x80 { 8 } else { 16 })?;
                }
            }
            0b0101 => {}
            0b1001 => {
                r.take(8)?;
            }
            mode => return Err(format!("unknown mode {mode:04b}")),
        }
    }
    Ok((header, out))
}

/// Reed–Solomon error correction over GF(2⁸) with the QR polynomial x⁸+x⁴+x³+x²+1 and the
/// generator roots α⁰ … α^(n−1) (Berlekamp–Massey, Chien search, Forney).
mod rs {
    const fn tables() -> ([u8; 512], [u8; 256]) {
        let mut exp = [0u8; 512];
        let mut log = [0u8; 256];
        let mut x: u16 = 1;
        let mut i = 0;
        while i < 255 {
            exp[i] = x as u8;
            exp[i + 255] = x as u8;
            log[x as usize] = i as u8;
            x <<= 1;
            if x & 0x100 != 0 {
                x ^= 0x11D;
            }
            i += 1;
        }
        (exp, log)
    }
    const TABLES: ([u8; 512], [u8; 256]) = tables();
    const EXP: [u8; 512] = TABLES.0;
    const LOG: [u8; 256] = TABLES.1;

    fn mul(a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            0
        } else {
            EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
        }
    }

    fn div(a: u8, b: u8) -> u8 {
        debug_assert!(b != 0);
        if a == 0 {
            0
        } else {
            EXP[LOG[a as usize] as usize + 255 - LOG[b as usize] as usize]
        }
    }

    /// α^e for any integer e.
    fn pow_alpha(e: i64) -> u8 {
        EXP[e.rem_euclid(255) as usize]
    }

    /// p(x) for p given lowest degree first.
    fn eval_low_first(p: &[u8], x: u8) -> u8 {
        p.iter().rev().fold(0, |acc, &c| mul(acc, x) ^ c)
    }

    /// Syndromes S_j = r(α^j); `block[0]` is the highest power.
    fn syndromes(block: &[u8], nsym: usize) -> Vec<u8> {
        (0..nsym)
            .map(|j| {
                let x = pow_alpha(j as i64);
                block.iter().fold(0, |acc, &c| mul(acc, x) ^ c)
            })
            .collect()
    }

    /// Corrects up to `nsym / 2` wrong codewords of `block` (data then `nsym` EC codewords) in
    /// place; `Err`, leaving `block` as it was, if it cannot.
    pub fn correct(block: &mut [u8], nsym: usize) -> Result<(), ()> {
        let n = block.len();
        if n > 255 || nsym == 0 || nsym >= n {
            return Err(());
        }
        let s = syndromes(block, nsym);
        if s.iter().all(|&v| v == 0) {
            return Ok(());
        }

        // Berlekamp–Massey: the error locator Λ(x), lowest degree first.
        let mut lambda = vec![1u8];
        let mut prev = vec![1u8];
        let mut errors = 0usize;
        let mut shift = 1usize;
        let mut prev_d = 1u8;
        for k in 0..nsym {
            let mut d = s[k];
            for i in 1..=errors.min(lambda.len() - 1).min(k) {
                d ^= mul(lambda[i], s[k - i]);
            }
            if d == 0 {
                shift += 1;
                continue;
            }
            let scale = div(d, prev_d);
            let mut next = lambda.clone();
            if next.len() < prev.len() + shift {
                next.resize(prev.len() + shift, 0);
            }
            for (i, &c) in prev.iter().enumerate() {
                next[i + shift] ^= mul(scale, c);
            }
            if 2 * errors <= k {
                errors = k + 1 - errors;
                prev = std::mem::replace(&mut lambda, next);
                prev_d = d;
                shift = 1;
            } else {
                lambda = next;
                shift += 1;
            }
        }
        while lambda.len() > 1 && lambda[lambda.len() - 1] == 0 {
            lambda.pop();
        }
        if lambda.len() - 1 != errors || 2 * errors > nsym {
            return Err(());
        }

        // Chien search: an error at power p (block index n-1-p) makes Λ(α^-p) = 0.
        let positions: Vec<usize> = (0..n)
            .filter(|&p| eval_low_first(&lambda, pow_alpha(-(p as i64))) == 0)
            .collect();
        if positions.len() != errors {
            return Err(());
        }

        // Forney (first root α⁰): e = X · Ω(X⁻¹) / Λ'(X⁻¹), Ω = S·Λ mod x^nsym.
        let mut omega = vec![0u8; nsym];
        for (i, &si) in s.iter().enumerate() {
            for (j, &lj) in lambda.iter().enumerate() {
                if i + j < nsym {
                    omega[i + j] ^= mul(si, lj);
                }
            }
        }
        let derivative: Vec<u8> = lambda
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, &c)| if i % 2 == 1 { c } else { 0 })
            .collect();
        let mut fixed = block.to_vec();
        for &p in &positions {
            let x = pow_alpha(p as i64);
            let x_inv = pow_alpha(-(p as i64));
            let denominator = eval_low_first(&derivative, x_inv);
            if denominator == 0 {
                return Err(());
            }
            fixed[n - 1 - p] ^= mul(x, div(eval_low_first(&omega, x_inv), denominator));
        }
        if syndromes(&fixed, nsym).iter().any(|&v| v != 0) {
            return Err(());
        }
        block.copy_from_slice(&fixed);
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        #[test]
        fn corrects_up_to_half_the_ec_codewords_and_refuses_beyond() {
            let mut rng = StdRng::seed_from_u64(7);
            for round in 0..300 {
                let nsym = [7usize, 10, 18, 26, 30][round % 5];
                let len = rng.random_range(nsym + 1..=255 - nsym);
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let mut good = data.clone();
                good.extend(qrcode::ec::create_error_correction_code(&data, nsym));
                assert!(super::syndromes(&good, nsym).iter().all(|&s| s == 0));

                let errors = rng.random_range(0..=nsym / 2);
                let mut bad = good.clone();
                for _ in 0..errors {
                    let i = rng.random_range(0..bad.len());
                    bad[i] ^= rng.random_range(1..=255u8);
                }
                super::correct(&mut bad, nsym).expect("correctable");
                assert_eq!(bad, good, "round {round}: {errors} errors of {nsym}");

                // Far too many errors: never a panic, never a silent success on a non-codeword.
                let mut worse = good.clone();
                for b in worse.iter_mut().take(nsym + 5) {
                    *b ^= 0x5A;
                }
                let before = worse.clone();
                match super::correct(&mut worse, nsym) {
                    Ok(()) => assert!(super::syndromes(&worse, nsym).iter().all(|&s| s == 0)),
                    Err(()) => assert_eq!(worse, before),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const COPY_PAYLOAD: &[u8] = b"31130842,2022,010001,01,20110101,012345";

    fn png_to_gray(png: &[u8]) -> GrayImage {
        image::load_from_memory(png).expect("png").to_luma8()
    }

    fn roundtrip(symbols: &[QrMatrix]) -> Result<Vec<u8>, QrError> {
        decode_image(&png_to_gray(&render_png(symbols, 4)))
    }

    /// About `len` bytes of a JAHIS10 text in Shift_JIS, CR LF, many drug records.
    fn large_jahis_text(len: usize) -> Vec<u8> {
        let mut text = String::from(
            "JAHIS10\r\n1,1,1310000,13,医療法人社団　検証会　みどり内科クリニック\r\n\
             2,100-0001,東京都千代田区千代田１－１\r\n3,03-1234-5678,,\r\n4,1,,内科\r\n\
             5,,ｲｼｬ ﾀﾛｳ,医師　太郎\r\n11,,髙橋　花子,ﾀｶﾊｼ ﾊﾅｺ\r\n12,2\r\n13,19580402\r\n\
             21,1\r\n22,31130842\r\n23,２０２２,010001,1,01\r\n51,20250301\r\n",
        );
        let drugs = [
            ("620004475", "アムロジピンＯＤ錠５ｍｇ「トーワ」", "1", "錠"),
            ("622688101", "ミニリンメルトＯＤ錠２５μｇ", "2", "錠"),
            (
                "620000033",
                "【般】ロキソプロフェンＮａ錠６０ｍｇ",
                "3",
                "錠",
            ),
            ("621463501", "ツムラ葛根湯エキス顆粒（医療用）", "7.5", "ｇ"),
        ];
        let mut rp = 1;
        while encoding_rs::SHIFT_JIS.encode(&text).0.len() < len + 100 {
            let (code, name, dose, unit) = drugs[rp % drugs.len()];
            text.push_str(&format!(
                "101,{rp},1,,14\r\n111,{rp},3,1013044400000000,１日３回毎食後　服用,3\r\n\
                 201,{rp},1,1,2,{code},{name},{dose},1,{unit}\r\n\
                 281,{rp},1,1,3,後発品変更不可（患者希望，医師判断）\r\n"
            ));
            rp += 1;
        }
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&text);
        assert!(!unmappable);
        let mut bytes = bytes.into_owned();
        // cut at a line end near `len`, then the JAHIS end-of-file byte
        let cut = bytes[..len.min(bytes.len())]
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map_or(bytes.len(), |p| p + 2);
        bytes.truncate(cut);
        bytes.push(0x1A);
        bytes
    }

    #[test]
    fn capacities_match_the_qr_tables() {
        // ISO/IEC 18004 table 7: byte-mode capacity at level M.
        assert_eq!(plain_capacity(1), 14);
        assert_eq!(plain_capacity(10), 213);
        assert_eq!(plain_capacity(20), 666);
        assert_eq!(plain_capacity(40), 2331);
        assert_eq!(data_codewords(20), 669);
        assert_eq!(sa_capacity(20), 664);
    }

    #[test]
    fn qr_copy_payload_round_trips_through_an_image() {
        let m = symbol(COPY_PAYLOAD).unwrap();
        assert_eq!(m.width, 29, "39 bytes need version 3 at level M (42 bytes)");
        assert_eq!(roundtrip(&[m]).unwrap(), COPY_PAYLOAD);
    }

    #[test]
    fn qr_symbol_is_byte_mode_level_m() {
        // Digits would be numeric mode in an optimising encoder; we want one byte-mode segment.
        let m = symbol(b"0123456789").unwrap();
        let modules = Modules {
            size: m.width,
            dark: m.dark.clone(),
        };
        let (meta, _) = rqrr::Grid::new(&modules).get_raw_data().unwrap();
        assert_eq!(meta.ecc_level, 0, "format bits 00 = level M");
        let (version, data) = corrected_codewords(&modules).unwrap();
        assert_eq!(version, 1);
        assert_eq!(data[0] >> 4, 0b0100, "byte mode");
        assert_eq!(
            read_corrected(&modules).unwrap(),
            (None, b"0123456789".to_vec())
        );
    }

    #[test]
    fn qr_too_long_for_one_symbol_is_an_error() {
        let max = plain_capacity(40);
        assert_eq!(max, 2331);
        assert!(symbol(&vec![b'a'; max]).is_ok());
        assert_eq!(
            symbol(&vec![b'a'; max + 1]),
            Err(QrError::TooLong { len: max + 1, max })
        );
    }

    #[test]
    fn qr_small_jahis_text_is_one_ordinary_symbol() {
        let text = large_jahis_text(300);
        let symbols = jahis_symbols(&text).unwrap();
        assert_eq!(symbols.len(), 1);
        assert_eq!(roundtrip(&symbols).unwrap(), text);
    }

    #[test]
    fn qr_large_jahis_text_uses_structured_append_and_round_trips_in_any_order() {
        let text = large_jahis_text(6000);
        assert!(text.len() > 5900, "{}", text.len());
        let symbols = jahis_symbols(&text).unwrap();
        assert_eq!(symbols.len(), 10, "ceil(~6000 / 664)");
        // one version for the whole set, the smallest that holds the largest part (≤ 20)
        let width = symbols[0].width;
        assert!(
            symbols.iter().all(|s| s.width == width) && width <= 97,
            "{width}"
        );
        assert!(sa_capacity(((width - 17) / 4) as i16 - 1) * 10 < text.len());
        assert_eq!(roundtrip(&symbols).unwrap(), text);

        let mut shuffled = symbols.clone();
        shuffled.shuffle(&mut StdRng::seed_from_u64(1));
        assert_ne!(shuffled, symbols);
        assert_eq!(roundtrip(&shuffled).unwrap(), text);
    }

    #[test]
    fn qr_structured_append_header_and_split_are_as_specified() {
        let text = large_jahis_text(2000);
        let symbols = jahis_symbols(&text).unwrap();
        let parity = text.iter().fold(0, |a, b| a ^ b);
        let mut joined = Vec::new();
        for (i, s) in symbols.iter().enumerate() {
            let modules = Modules {
                size: s.width,
                dark: s.dark.clone(),
            };
            let (h, part) = read_corrected(&modules).unwrap();
            let h = h.expect("structured append header");
            assert_eq!(
                h,
                SaHeader {
                    index: i as u8,
                    total: symbols.len() as u8,
                    parity
                }
            );
            // every part decodes as Shift_JIS on its own: no character is cut in two
            assert!(
                encoding_rs::SHIFT_JIS
                    .decode_without_bom_handling_and_without_replacement(&part)
                    .is_some()
            );
            joined.extend(part);
        }
        assert_eq!(joined, text);
        // as few symbols as the capacity allows, filled evenly
        let n = symbols.len();
        assert_eq!(n, text.len().div_ceil(sa_capacity(20)));
        let sizes: Vec<usize> = split(&text, sa_capacity(20))
            .unwrap()
            .iter()
            .map(|p| p.len())
            .collect();
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= n + 1, "{sizes:?}");
    }

    #[test]
    fn qr_missing_symbol_is_named() {
        let text = large_jahis_text(2000);
        let mut symbols = jahis_symbols(&text).unwrap();
        let total = symbols.len() as u8;
        symbols.remove(1);
        assert_eq!(
            roundtrip(&symbols),
            Err(QrError::MissingSymbols {
                total,
                missing: vec![2],
                unreadable: 0
            })
        );
        let message = roundtrip(&symbols).unwrap_err().to_string();
        assert!(message.contains("[2] of "), "{message}");
    }

    #[test]
    fn qr_symbols_of_two_sets_or_mixed_with_a_plain_symbol_are_refused() {
        let a = jahis_symbols(&large_jahis_text(1500)).unwrap();
        let b = jahis_symbols(&large_jahis_text(1800)).unwrap();
        let mixed = vec![a[0].clone(), b[1].clone()];
        assert!(matches!(
            roundtrip(&mixed),
            Err(QrError::InconsistentSet(_))
        ));
        let with_plain = vec![a[0].clone(), a[1].clone(), symbol(COPY_PAYLOAD).unwrap()];
        assert_eq!(roundtrip(&with_plain), Err(QrError::Mixed { plain: 1 }));
    }

    #[test]
    fn qr_too_large_for_sixteen_symbols_is_an_error() {
        let max = sa_capacity(20) * MAX_SYMBOLS;
        let data = vec![b'x'; max + 1];
        assert_eq!(
            jahis_symbols(&data),
            Err(QrError::TooLongForJahis { len: max + 1, max })
        );
        assert_eq!(jahis_symbols(&vec![b'x'; max]).unwrap().len(), 16);
    }

    #[test]
    fn qr_jpeg_of_the_symbols_round_trips() {
        let text = large_jahis_text(3000);
        let symbols = jahis_symbols(&text).unwrap();
        let gray = png_to_gray(&render_png(&symbols, 4));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 40)
            .encode_image(&gray)
            .unwrap();
        let lossy = image::load_from_memory(&jpeg).unwrap().to_luma8();
        assert_ne!(lossy.as_raw(), gray.as_raw(), "the JPEG is lossy");
        assert_eq!(decode_image(&lossy).unwrap(), text);
    }

    #[test]
    fn qr_damaged_modules_are_corrected() {
        let text = large_jahis_text(2000);
        let mut symbols = jahis_symbols(&text).unwrap();
        // Flip a run of data modules in each symbol (a smudge): a few codewords per block.
        for s in &mut symbols {
            let w = s.width;
            for y in 40..44 {
                for x in 30..40 {
                    s.dark[y * w + x] = !s.dark[y * w + x];
                }
            }
        }
        assert_eq!(roundtrip(&symbols).unwrap(), text);
    }

    /// The bytes `zbarimg --raw -Sbinary` reads from the PNG of `symbols` (it joins a complete
    /// Structured Append set; `binary` keeps it from guessing a character set), or `None` without
    /// zbarimg.
    fn zbarimg(symbols: &[QrMatrix], name: &str) -> Option<Vec<u8>> {
        let Some(path) = which("zbarimg") else {
            println!("NOTE: zbarimg not installed; skipping the independent decoder check");
            return None;
        };
        let file = std::env::temp_dir().join(format!("relay-qr-{name}-{}.png", std::process::id()));
        std::fs::write(&file, render_png(symbols, 4)).unwrap();
        let out = std::process::Command::new(path)
            .args(["--raw", "-q", "-Sbinary"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "{out:?}");
        Some(out.stdout)
    }

    #[test]
    fn qr_zbarimg_reads_an_ordinary_symbol() {
        if let Some(read) = zbarimg(&[symbol(COPY_PAYLOAD).unwrap()], "copy") {
            assert_eq!(read, COPY_PAYLOAD);
        }
    }

    #[test]
    fn qr_zbarimg_reads_our_structured_append_set() {
        // An independent check of the hand-written Structured Append encoding.
        let text = large_jahis_text(2000);
        let mut symbols = jahis_symbols(&text).unwrap();
        assert!(symbols.len() > 2);
        symbols.reverse();
        if let Some(read) = zbarimg(&symbols, "sa") {
            assert_eq!(read, text);
        }
    }

    fn which(tool: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    }

    #[test]
    fn qr_garbage_images_never_panic() {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..20 {
            let (w, h) = (rng.random_range(1..300), rng.random_range(1..300));
            let noise = GrayImage::from_fn(w, h, |_, _| Luma([rng.random()]));
            assert!(decode_image(&noise).is_err());
        }
        assert_eq!(decode_image(&GrayImage::new(0, 0)), Err(QrError::NoSymbol));
        // Real symbols with random modules flipped everywhere (function patterns included).
        let text = large_jahis_text(1500);
        let symbols = jahis_symbols(&text).unwrap();
        for round in 0..20 {
            let mut damaged = symbols.clone();
            for s in &mut damaged {
                for _ in 0..(round * 40) {
                    let i = rng.random_range(0..s.dark.len());
                    s.dark[i] = !s.dark[i];
                }
            }
            let _ = roundtrip(&damaged);
        }
        // Random bit grids through our own reader.
        for size in [21usize, 25, 57, 97, 22, 0, 1] {
            for _ in 0..20 {
                let modules = Modules {
                    size,
                    dark: (0..size * size).map(|_| rng.random()).collect(),
                };
                let _ = read_symbol(&modules);
            }
        }
        for _ in 0..200 {
            let data: Vec<u8> = (0..rng.random_range(0..60)).map(|_| rng.random()).collect();
            let _ = parse_segments(&data, rng.random_range(1..=40));
        }
    }
}
