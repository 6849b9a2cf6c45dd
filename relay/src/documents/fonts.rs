//! The Japanese fonts of the PDFs. A configured file comes first; otherwise fontconfig (and, when
//! `fc-match` is absent, the Debian package paths) finds Noto Sans CJK JP or IPAex Gothic. The
//! other of the two, when installed, is kept as a fallback for characters the main face lacks
//! (IPAex has no 𠮷; Noto has it), and the bold Noto face, when installed, is used for titles.
//!
//! Text is laid out here without a shaping engine: one glyph per character from the face's
//! `cmap` (with Ideographic Variation Sequences from its format 14 subtable) and the advance
//! from `hmtx`. That is what Japanese needs, and it lets the layout measure exactly what is
//! drawn and know which characters no face can draw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use krilla::text::Font;

/// What the operator should do when no font is usable.
const HINT: &str = "install fonts-noto-cjk (or fonts-ipaexfont) or set documents.font_path \
                    (and documents.font_index for a .ttc collection)";

#[derive(Debug, thiserror::Error)]
pub enum FontError {
    #[error("no Japanese font found (tried: {}); {HINT}", .tried.join("; "))]
    NotFound { tried: Vec<String> },
    #[error("cannot read the font file {}: {error}; {HINT}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{} is not a usable font: {reason}; {HINT}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The families looked for, in order, and where their Debian packages put them.
const CANDIDATES: &[(&str, &[&str])] = &[
    (
        "Noto Sans CJK JP",
        &[
            "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
            "/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf",
        ],
    ),
    (
        "IPAexGothic",
        &[
            "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf",
            "/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf",
        ],
    ),
];

/// The regular face, and optionally a bold face of the same family and a fallback face of another
/// family. Cloning is cheap (the font data is shared).
#[derive(Clone)]
pub struct Fonts {
    regular: Face,
    bold: Option<Face>,
    fallback: Option<Face>,
}

impl std::fmt::Debug for Fonts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Fonts {
    /// The configured `path` (with the face `index` of a `.ttc`) when given — a configured font
    /// that cannot be used is an error, never silently replaced. Otherwise fontconfig:
    /// `fc-match 'Noto Sans CJK JP'`, then `'IPAexGothic'`, accepting a match only when its family
    /// is really the one asked for (fc-match always answers something); without `fc-match`, the
    /// Debian package paths. The other family, when found, becomes the fallback face.
    pub fn discover(path: Option<&Path>, index: u32) -> Result<Fonts, FontError> {
        let mut tried = Vec::new();
        let regular = match path {
            Some(p) => Face::load(p, index)?,
            None => {
                let mut found = None;
                for (family, paths) in CANDIDATES {
                    if let Some((p, i)) = locate(family, paths, &mut tried)
                        && let Ok(face) = Face::load(&p, i)
                    {
                        found = Some(face);
                        break;
                    }
                }
                found.ok_or(FontError::NotFound { tried })?
            }
        };
        let mut ignored = Vec::new();
        let fallback = CANDIDATES
            .iter()
            .filter(|(family, _)| !regular.has_family(family))
            .filter_map(|(family, paths)| locate(family, paths, &mut ignored))
            .filter(|(p, i)| !regular.is_file(p, *i))
            .find_map(|(p, i)| Face::load(&p, i).ok());
        let bold = regular.family().and_then(|family| {
            let (p, i) = fc_match(&format!("{family}:weight=bold"), family).ok()??;
            if regular.is_file(&p, i) {
                return None; // fontconfig would only embolden the regular face
            }
            Face::load(&p, i).ok().filter(|f| f.has_family(family))
        });
        Ok(Fonts {
            regular,
            bold,
            fallback,
        })
    }

    /// Exactly one face from a file, without bold or fallback faces.
    pub fn load(path: &Path, index: u32) -> Result<Fonts, FontError> {
        Ok(Fonts {
            regular: Face::load(path, index)?,
            bold: None,
            fallback: None,
        })
    }

    /// Whether the regular face has a glyph for `c`.
    pub fn covers(&self, c: char) -> bool {
        self.regular.glyph(c) != 0
    }

    /// Which faces are in use, for the start-up log.
    pub fn describe(&self) -> String {
        let mut s = format!("regular {}", self.regular.describe());
        if let Some(b) = &self.bold {
            s.push_str(&format!(", bold {}", b.describe()));
        }
        if let Some(f) = &self.fallback {
            s.push_str(&format!(", fallback {}", f.describe()));
        }
        s
    }

    /// The krilla font of a face chosen by [`Fonts::clusters`].
    pub(crate) fn font(&self, face: FaceId) -> &Font {
        &self.face(face).font
    }

    fn face(&self, face: FaceId) -> &Face {
        match face {
            FaceId::Bold => self.bold.as_ref().unwrap_or(&self.regular),
            FaceId::Fallback => self.fallback.as_ref().unwrap_or(&self.regular),
            FaceId::Regular => &self.regular,
        }
    }

    fn chain(&self, weight: Weight) -> impl Iterator<Item = (FaceId, &Face)> {
        let bold = match weight {
            Weight::Bold => self.bold.as_ref().map(|f| (FaceId::Bold, f)),
            Weight::Regular => None,
        };
        bold.into_iter()
            .chain(std::iter::once((FaceId::Regular, &self.regular)))
            .chain(self.fallback.as_ref().map(|f| (FaceId::Fallback, f)))
    }

    /// One glyph per character of `text` (a variation selector or other invisible format
    /// character joins the character before it), each from the first face of the chain that has
    /// it; characters no face has get the first face's `.notdef` and `missing` set.
    pub(crate) fn clusters(&self, text: &str, weight: Weight) -> Vec<Cluster> {
        let mut out: Vec<Cluster> = Vec::with_capacity(text.len());
        for (pos, c) in text.char_indices() {
            let end = pos + c.len_utf8();
            if is_invisible(c) {
                if let Some(prev) = out.last_mut() {
                    prev.end = end;
                    if is_variation_selector(c) {
                        let face = self.face(prev.face);
                        if let Some(g) = face.variant(prev.ch, c) {
                            prev.glyph = g;
                            prev.advance = face.advance(g);
                        }
                    }
                }
                continue;
            }
            let found = self
                .chain(weight)
                .find_map(|(id, face)| Some((id, face, face.glyph_nonzero(c)?)));
            let cluster = match found {
                Some((id, face, glyph)) => Cluster {
                    start: pos,
                    end,
                    ch: c,
                    face: id,
                    glyph,
                    advance: face.advance(glyph),
                    missing: false,
                },
                None => {
                    let (id, face) = self
                        .chain(weight)
                        .next()
                        .unwrap_or((FaceId::Regular, &self.regular));
                    Cluster {
                        start: pos,
                        end,
                        ch: c,
                        face: id,
                        glyph: 0,
                        advance: face.advance(0),
                        missing: true,
                    }
                }
            };
            out.push(cluster);
        }
        out
    }

    /// Whether text of this weight drawn with `face` needs a simulated bold (stroke).
    pub(crate) fn needs_faux_bold(&self, weight: Weight, face: FaceId) -> bool {
        weight == Weight::Bold && (face != FaceId::Bold || self.bold.is_none())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weight {
    Regular,
    Bold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaceId {
    Regular,
    Bold,
    Fallback,
}

/// One drawn glyph and the bytes of the text it stands for.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    pub start: usize,
    pub end: usize,
    /// The (first) character.
    pub ch: char,
    pub face: FaceId,
    pub glyph: u16,
    /// In em.
    pub advance: f32,
    /// No face has the character; `.notdef` is drawn.
    pub missing: bool,
}

fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

/// Format characters drawn as nothing: variation selectors, zero-width (non-)joiners and spaces,
/// word joiner, byte order mark.
fn is_invisible(c: char) -> bool {
    is_variation_selector(c)
        || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// Where fontconfig or the package paths put `family`; records what was tried.
fn locate(family: &str, paths: &[&str], tried: &mut Vec<String>) -> Option<(PathBuf, u32)> {
    match fc_match(family, family) {
        Ok(Some(found)) => return Some(found),
        Ok(None) => tried.push(format!("fontconfig has no '{family}'")),
        Err(e) => tried.push(format!("fontconfig for '{family}': {e}")),
    }
    for p in paths {
        let path = Path::new(p);
        match std::fs::read(path) {
            Ok(data) => match face_with_family(&data, family) {
                Some(i) => return Some((path.to_path_buf(), i)),
                None => tried.push(format!("{p} (no face named '{family}')")),
            },
            Err(_) => tried.push(p.to_string()),
        }
    }
    None
}

/// `fc-match` for `pattern`; a match counts only when one of its families is `family`.
fn fc_match(pattern: &str, family: &str) -> Result<Option<(PathBuf, u32)>, String> {
    let out = Command::new("fc-match")
        .args(["-f", "%{file}\n%{index}\n%{family}\n", pattern])
        .output()
        .map_err(|e| format!("fc-match could not run ({e})"))?;
    if !out.status.success() {
        return Err(format!("fc-match failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(file), Some(index), Some(families)) = (lines.next(), lines.next(), lines.next())
    else {
        return Ok(None);
    };
    let matches = families
        .split(',')
        .any(|f| f.trim().eq_ignore_ascii_case(family));
    let index = index.trim().parse::<u32>().unwrap_or(0);
    Ok((matches && !file.is_empty()).then(|| (PathBuf::from(file), index)))
}

/// The index of the face of a font file (or collection) named `family`.
fn face_with_family(data: &[u8], family: &str) -> Option<u32> {
    let count = if data.get(0..4) == Some(b"ttcf") {
        rd32(data, 8)?.min(64)
    } else {
        1
    };
    (0..count).find(|&i| {
        face_offset(data, i)
            .ok()
            .and_then(|off| table(data, off, b"name"))
            .is_some_and(|(name, _)| {
                family_names(data, name)
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(family))
            })
    })
}

// -----------------------------------------------------------------------------------------------
// One face: the krilla font plus what layout needs from the sfnt tables.
// -----------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Face {
    font: Font,
    data: Arc<Vec<u8>>,
    path: PathBuf,
    index: u32,
    families: Vec<String>,
    units_per_em: f32,
    num_glyphs: u32,
    hmtx: usize,
    num_hmetrics: u32,
    cmap: Cmap,
    /// Offset of the format 14 (variation sequences) subtable.
    uvs: Option<usize>,
}

#[derive(Clone, Copy)]
enum Cmap {
    Format4(usize),
    Format12(usize),
}

impl Face {
    fn load(path: &Path, index: u32) -> Result<Face, FontError> {
        let data = std::fs::read(path).map_err(|error| FontError::Unreadable {
            path: path.to_path_buf(),
            error,
        })?;
        Face::parse(Arc::new(data), path, index).map_err(|reason| FontError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(data: Arc<Vec<u8>>, path: &Path, index: u32) -> Result<Face, String> {
        let d: &[u8] = &data;
        let off = face_offset(d, index)?;
        let need = |tag: &[u8; 4]| {
            table(d, off, tag).ok_or_else(|| {
                format!("face {index} has no {} table", String::from_utf8_lossy(tag))
            })
        };
        let (head, _) = need(b"head")?;
        let (hhea, _) = need(b"hhea")?;
        let (maxp, _) = need(b"maxp")?;
        let (hmtx, hmtx_len) = need(b"hmtx")?;
        let (cmap_off, _) = need(b"cmap")?;
        let units_per_em = rd16(d, head + 18).filter(|u| (16..=16384).contains(u));
        let num_hmetrics = rd16(d, hhea + 34).map(u32::from).filter(|&n| n > 0);
        let num_glyphs = rd16(d, maxp + 4).map(u32::from).filter(|&n| n > 0);
        let (Some(units_per_em), Some(num_hmetrics), Some(num_glyphs)) =
            (units_per_em, num_hmetrics, num_glyphs)
        else {
            return Err("damaged head, hhea or maxp table".into());
        };
        if hmtx_len < num_hmetrics as usize * 4 {
            return Err("damaged hmtx table".into());
        }
        let (cmap, uvs) = pick_cmap(d, cmap_off)
            .ok_or("no Unicode character map (cmap format 4 or 12)".to_string())?;
        let families = table(d, off, b"name")
            .map(|(name, _)| family_names(d, name))
            .unwrap_or_default();
        let font = Font::new(krilla::Data::from(data.clone()), index)
            .ok_or_else(|| format!("face {index} cannot be read as an OpenType font"))?;
        Ok(Face {
            font,
            data,
            path: path.to_path_buf(),
            index,
            families,
            units_per_em: f32::from(units_per_em),
            num_glyphs,
            hmtx,
            num_hmetrics,
            cmap,
            uvs,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} #{})",
            self.family().unwrap_or("?"),
            self.path.display(),
            self.index
        )
    }

    /// The first (English, typographic when present) family name.
    fn family(&self) -> Option<&str> {
        self.families.first().map(String::as_str)
    }

    fn has_family(&self, family: &str) -> bool {
        self.families.iter().any(|f| f.eq_ignore_ascii_case(family))
    }

    fn is_file(&self, path: &Path, index: u32) -> bool {
        self.index == index
            && (self.path == path
                || std::fs::canonicalize(&self.path).ok() == std::fs::canonicalize(path).ok())
    }

    fn advance(&self, glyph: u16) -> f32 {
        let i = u32::from(glyph).min(self.num_hmetrics - 1) as usize;
        rd16(&self.data, self.hmtx + i * 4).map_or(0.0, f32::from) / self.units_per_em
    }

    fn glyph_nonzero(&self, c: char) -> Option<u16> {
        Some(self.glyph(c)).filter(|&g| g != 0)
    }

    /// The glyph of `c`, 0 (`.notdef`) when the face has none.
    fn glyph(&self, c: char) -> u16 {
        let d: &[u8] = &self.data;
        let c = c as u32;
        let g = match self.cmap {
            Cmap::Format12(sub) => cmap12(d, sub, c),
            Cmap::Format4(sub) => cmap4(d, sub, c),
        }
        .unwrap_or(0);
        if g < self.num_glyphs { g as u16 } else { 0 }
    }

    /// The glyph of the variation sequence `base` + `selector` when the face maps it to a
    /// glyph of its own.
    fn variant(&self, base: char, selector: char) -> Option<u16> {
        let d: &[u8] = &self.data;
        let sub = self.uvs?;
        let n = rd32(d, sub + 6)? as usize;
        let (sel, base) = (selector as u32, base as u32);
        let rec = bsearch(
            n,
            |i| {
                let r = sub + 10 + i * 11;
                Some((rd24(d, r)?, r))
            },
            sel,
        )?;
        let non_default = rd32(d, rec + 7)? as usize;
        if non_default == 0 {
            return None;
        }
        let table = sub + non_default;
        let m = rd32(d, table)? as usize;
        let at = bsearch(
            m,
            |i| {
                let r = table + 4 + i * 5;
                Some((rd24(d, r)?, r))
            },
            base,
        )?;
        let g = u32::from(rd16(d, at + 3)?);
        (g != 0 && g < self.num_glyphs).then_some(g as u16)
    }
}

/// Binary search over `n` entries sorted by key; returns the entry's payload.
fn bsearch(n: usize, entry: impl Fn(usize) -> Option<(u32, usize)>, key: u32) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (k, payload) = entry(mid)?;
        match k.cmp(&key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(payload),
        }
    }
    None
}

// -----------------------------------------------------------------------------------------------
// Minimal, bounds-checked sfnt reading.
// -----------------------------------------------------------------------------------------------

fn rd16(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn rd24(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(3)?)?;
    Some(u32::from_be_bytes([0, b[0], b[1], b[2]]))
}

fn rd32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Where the table directory of face `index` starts.
fn face_offset(d: &[u8], index: u32) -> Result<usize, String> {
    let off = if d.get(0..4) == Some(b"ttcf") {
        let n = rd32(d, 8).ok_or("truncated collection header")?;
        if index >= n {
            return Err(format!(
                "the collection has {n} faces (0–{}); documents.font_index {index} is not one of them",
                n.saturating_sub(1)
            ));
        }
        rd32(d, 12 + 4 * index as usize).ok_or("truncated collection header")? as usize
    } else {
        if index != 0 {
            return Err(format!(
                "not a collection (.ttc), so the face index must be 0, not {index}"
            ));
        }
        0
    };
    match rd32(d, off) {
        Some(0x0001_0000 | 0x4F54_544F | 0x7472_7565) => Ok(off),
        _ => Err("not a TrueType/OpenType font or collection".into()),
    }
}

/// Offset and length of a table of the face whose directory is at `face`.
fn table(d: &[u8], face: usize, tag: &[u8; 4]) -> Option<(usize, usize)> {
    let n = rd16(d, face + 4)? as usize;
    (0..n).find_map(|i| {
        let rec = face + 12 + 16 * i;
        if d.get(rec..rec + 4)? != tag {
            return None;
        }
        let off = rd32(d, rec + 8)? as usize;
        let len = rd32(d, rec + 12)? as usize;
        (off.checked_add(len)? <= d.len()).then_some((off, len))
    })
}

/// The best Unicode subtable (format 12 over format 4) and the variation sequences subtable.
fn pick_cmap(d: &[u8], cmap: usize) -> Option<(Cmap, Option<usize>)> {
    let n = rd16(d, cmap + 2)? as usize;
    let mut best: Option<(u8, Cmap)> = None;
    let mut uvs = None;
    for i in 0..n {
        let rec = cmap + 4 + 8 * i;
        let (Some(platform), Some(encoding), Some(sub)) =
            (rd16(d, rec), rd16(d, rec + 2), rd32(d, rec + 4))
        else {
            continue;
        };
        let sub = cmap + sub as usize;
        let (rank, kind) = match (platform, encoding, rd16(d, sub)) {
            (0, 5, Some(14)) => {
                uvs = Some(sub);
                continue;
            }
            (3, 10, Some(12)) => (4, Cmap::Format12(sub)),
            (0, _, Some(12)) => (3, Cmap::Format12(sub)),
            (3, 1, Some(4)) => (2, Cmap::Format4(sub)),
            (0, _, Some(4)) => (1, Cmap::Format4(sub)),
            _ => continue,
        };
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, kind));
        }
    }
    best.map(|(_, c)| (c, uvs))
}

fn cmap12(d: &[u8], sub: usize, c: u32) -> Option<u32> {
    let n = rd32(d, sub + 12)? as usize;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let g = sub + 16 + 12 * mid;
        let (start, end) = (rd32(d, g)?, rd32(d, g + 4)?);
        if c < start {
            hi = mid;
        } else if c > end {
            lo = mid + 1;
        } else {
            return rd32(d, g + 8)?.checked_add(c - start);
        }
    }
    None
}

fn cmap4(d: &[u8], sub: usize, c: u32) -> Option<u32> {
    if c > 0xFFFF {
        return None;
    }
    let seg_x2 = rd16(d, sub + 6)? as usize;
    let segs = seg_x2 / 2;
    let ends = sub + 14;
    let starts = ends + seg_x2 + 2;
    let deltas = starts + seg_x2;
    let ranges = deltas + seg_x2;
    // The first segment whose end is >= c.
    let (mut lo, mut hi) = (0usize, segs);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if u32::from(rd16(d, ends + 2 * mid)?) < c {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo >= segs {
        return None;
    }
    let i = lo;
    let start = u32::from(rd16(d, starts + 2 * i)?);
    if c < start {
        return None;
    }
    let delta = u32::from(rd16(d, deltas + 2 * i)?);
    let range = rd16(d, ranges + 2 * i)? as usize;
    if range == 0 {
        return Some((c + delta) & 0xFFFF);
    }
    let at = ranges + 2 * i + range + 2 * (c - start) as usize;
    let g = u32::from(rd16(d, at)?);
    Some(if g == 0 { 0 } else { (g + delta) & 0xFFFF })
}

/// Family names (typographic first, then legacy; English first) from a `name` table.
fn family_names(d: &[u8], name: usize) -> Vec<String> {
    let (Some(count), Some(strings)) = (rd16(d, name + 2), rd16(d, name + 4)) else {
        return Vec::new();
    };
    let mut found: Vec<(u8, String)> = Vec::new();
    for i in 0..count as usize {
        let rec = name + 6 + 12 * i;
        let fields = (0..6)
            .map(|k| rd16(d, rec + 2 * k))
            .collect::<Option<Vec<u16>>>();
        let Some(&[platform, encoding, language, name_id, len, off]) = fields.as_deref() else {
            continue;
        };
        if name_id != 1 && name_id != 16 {
            continue;
        }
        let start = name + strings as usize + off as usize;
        let Some(bytes) = d.get(start..start + len as usize) else {
            continue;
        };
        let text = match (platform, encoding) {
            (0, _) | (3, 1) | (3, 10) => {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            }
            (1, 0) if bytes.is_ascii() => String::from_utf8_lossy(bytes).into_owned(),
            _ => continue,
        };
        let english = platform == 1 || language == 0x409;
        let rank = match (name_id, english) {
            (16, true) => 0,
            (1, true) => 1,
            (16, false) => 2,
            _ => 3,
        };
        found.push((rank, text));
    }
    found.sort_by_key(|(r, _)| *r);
    let mut out: Vec<String> = Vec::new();
    for (_, f) in found {
        if !f.is_empty() && !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTO: &str = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc";
    const IPAEX: &str = "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf";

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn fonts_can_be_shared_between_workers() {
        assert_send_sync::<Fonts>();
    }

    #[test]
    fn fontconfig_finds_noto_with_a_bold_face_and_ipaex_as_fallback() {
        let fonts = Fonts::discover(None, 0).expect("a font is installed");
        assert!(fonts.regular.has_family("Noto Sans CJK JP"), "{fonts:?}");
        assert!(fonts.bold.is_some(), "{fonts:?}");
        assert!(
            fonts
                .fallback
                .as_ref()
                .is_some_and(|f| f.has_family("IPAexGothic")),
            "{fonts:?}"
        );
        for c in ['髙', '﨑', '𠮷', '德', '錠', 'A', '１', '　'] {
            assert!(fonts.covers(c), "Noto covers {c}");
        }
        assert!(!fonts.covers('\u{E000}'));
    }

    #[test]
    fn ipaex_lacks_the_tsuchi_yoshi() {
        let fonts = Fonts::load(Path::new(IPAEX), 0).unwrap();
        assert!(fonts.regular.has_family("IPAexGothic"));
        assert!(fonts.covers('髙'));
        assert!(!fonts.covers('𠮷'));
        let cl = fonts.clusters("𠮷子", Weight::Regular);
        assert!(cl[0].missing && cl[0].glyph == 0);
        assert!(!cl[1].missing);
        // Configured IPAex still draws 𠮷 through the Noto fallback.
        let fonts = Fonts::discover(Some(Path::new(IPAEX)), 0).unwrap();
        let cl = fonts.clusters("𠮷子", Weight::Regular);
        assert!(!cl[0].missing);
        assert_eq!(cl[0].face, FaceId::Fallback);
        assert_eq!(cl[1].face, FaceId::Regular);
    }

    #[test]
    fn metrics_and_variation_sequences() {
        let fonts = Fonts::load(Path::new(NOTO), 0).unwrap();
        let cl = fonts.clusters("髙A", Weight::Regular);
        assert!((cl[0].advance - 1.0).abs() < 1e-3, "ideographs are 1 em");
        assert!(cl[1].advance > 0.4 && cl[1].advance < 0.8);
        // 葛 + VS17 (U+E0100) is one cluster covering both characters, with a glyph of its own.
        let plain = fonts.clusters("葛", Weight::Regular)[0].glyph;
        let cl = fonts.clusters("葛\u{E0100}", Weight::Regular);
        assert_eq!(cl.len(), 1);
        assert_eq!(cl[0].end, "葛\u{E0100}".len());
        assert_ne!(cl[0].glyph, 0);
        assert_ne!(cl[0].glyph, plain);
    }

    #[test]
    fn a_bogus_configured_path_is_named() {
        let err = Fonts::discover(Some(Path::new("/nonexistent/fonts/bogus.ttf")), 0).unwrap_err();
        assert!(matches!(err, FontError::Unreadable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/fonts/bogus.ttf"), "{msg}");
        assert!(msg.contains("fonts-noto-cjk"), "{msg}");
        // A file that is not a font, and a face index a collection does not have.
        let junk =
            std::env::temp_dir().join(format!("relay-not-a-font-{}.ttf", std::process::id()));
        std::fs::write(&junk, b"this is not a font").unwrap();
        let err = Fonts::discover(Some(&junk), 0).unwrap_err();
        let _ = std::fs::remove_file(&junk);
        assert!(matches!(err, FontError::Invalid { .. }), "{err:?}");
        let err = Fonts::discover(Some(Path::new(NOTO)), 99).unwrap_err();
        assert!(err.to_string().contains("font_index 99"), "{err}");
    }

    #[test]
    fn fontconfig_answers_are_checked_against_the_family() {
        assert_eq!(
            fc_match("No Such Family Anywhere", "No Such Family Anywhere"),
            Ok(None)
        );
        let (path, index) = fc_match("Noto Sans CJK JP", "Noto Sans CJK JP")
            .unwrap()
            .unwrap();
        assert_eq!(index, 0);
        let data = std::fs::read(path).unwrap();
        assert_eq!(face_with_family(&data, "Noto Sans CJK JP"), Some(0));
        assert_eq!(
            face_with_family(&data, "Noto Sans CJK KR").map(|i| i > 0),
            Some(true)
        );
    }
}
