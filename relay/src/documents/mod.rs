//! Printable and scannable documents: QR symbols (including JAHIS Structured Append) and the PDFs
//! (処方内容（控え） and the paper prescription). Pure functions over domain values; the fonts come
//! from the system (fontconfig) or configuration.

pub mod fonts;
pub mod pdf;
pub mod qr;

/// A QR symbol as a square of modules, row by row (`true` = dark), without the quiet zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrMatrix {
    pub width: usize,
    pub dark: Vec<bool>,
}

impl QrMatrix {
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        self.dark[y * self.width + x]
    }
}
