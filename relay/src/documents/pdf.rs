//! The two PDFs, both A5 portrait: the patient's 処方内容（控え） and the paper prescription
//! (様式第二号 layout) with its JAHIS 2-D symbols.
//!
//! Layout is done in millimetres, top-left origin, into a display list per page ([`Op`]), which is
//! then drawn with krilla. Text is measured with the same per-character glyphs that are drawn
//! (see [`Fonts::clusters`]), so wrapping is exact; fonts are embedded as subsets by krilla and
//! every glyph carries its text, so the PDFs' text can be extracted and searched.

use jiff::civil::Date;
use krilla::Document;
use krilla::color::luma;
use krilla::geom::{PathBuilder, Point, Rect};
use krilla::metadata::Metadata;
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::{Fill, FillRule, LineJoin, Stroke};
use krilla::surface::Surface;
use krilla::text::{GlyphId, KrillaGlyph};

use super::QrMatrix;
use super::fonts::{Fonts, Weight};
use crate::domain::document::DocumentInput;
use crate::domain::facility::Facility;
use crate::domain::prescription::{
    DosageForm, Drug, Prescription, PublicExpense, Relationship, Rp, Sex,
};

/// A rendered document and the characters no installed font could draw (drawn as `.notdef`).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub pdf: Vec<u8>,
    pub missing_glyphs: Vec<char>,
    pub pages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("the PDF could not be written: {0}")]
    Write(String),
}

const PAGE_W: f32 = 148.0;
const PAGE_H: f32 = 210.0;
/// Points per millimetre.
const PT: f32 = 72.0 / 25.4;
/// Where the baseline sits below the top of the em box (ideographic em box: 0.88 / -0.12).
const ASCENT: f32 = 0.88;
/// Safety net: no real prescription comes near this many pages.
const MAX_PAGES: usize = 400;

use Weight::{Bold, Regular};

/// The em size in millimetres of a font size in points.
fn em(size: f32) -> f32 {
    size / PT
}

// =================================================================================================
// 処方内容（控え）
// =================================================================================================

/// 処方内容（控え）: A5 portrait, titled 「処方内容（控え）」 with 「これは処方箋ではありません」,
/// the 引換番号 in large digits beside the 2-D code `qr`, the institution, doctor, patient,
/// insurance, 交付年月日 and 使用期限, every RP (drugs with dose and unit, usage, 日分/回分), the
/// remarks and the refill count. Long text wraps; long prescriptions continue on further pages
/// under a short header repeating the 引換番号, every page numbered n/m.
pub fn render_copy(
    doc: &DocumentInput,
    qr: &QrMatrix,
    fonts: &Fonts,
) -> Result<Rendered, PdfError> {
    const L: f32 = 10.0;
    const R: f32 = PAGE_W - 10.0;
    const W: f32 = R - L;
    const FLOW_BOTTOM: f32 = 197.0;
    let p = doc.prescription;
    let number = doc.exchange_number.map(group_digits);

    // Page 1: title, notice, 引換番号 and 2-D code.
    let mut first = Sheet::new(fonts);
    first.text_center(PAGE_W / 2.0, 8.0, 18.0, Bold, "処方内容（控え）");
    first.fill_rect(L, 16.0, W, 11.5, 230);
    first.text_center(PAGE_W / 2.0, 17.1, 12.0, Bold, "これは処方箋ではありません");
    first.text_fit_center(
        PAGE_W / 2.0,
        23.1,
        W - 4.0,
        7.0,
        Regular,
        "電子処方箋の内容の控えです。薬局では引換番号と保険証（マイナ保険証等）をご提示ください。",
    );

    let block_top = 30.0;
    let module = qr_module(qr, 25.0, 0.5, 1.0);
    let qr_size = qr_extent(qr, module);
    let side_by_side = W - qr_size - 6.0 >= 58.0;
    let text_w = if side_by_side { W - qr_size - 6.0 } else { W };
    let mut y = block_top + 2.5;
    first.text(L + 3.0, y, 9.0, Bold, "引換番号");
    y += em(9.0) + 1.5;
    match &number {
        Some(n) => {
            let size = first.fit_size(n, Bold, 28.0, 12.0, text_w - 6.0);
            first.text(L + 3.0, y, size, Bold, n);
            y += em(size) + 2.5;
        }
        None => {
            first.text(L + 3.0, y, 12.0, Regular, "（引換番号はありません）");
            y += em(12.0) + 2.5;
        }
    }
    let until = format!("使用期限　{}まで", wareki(p.valid_until));
    y = first.paragraph(L + 3.0, y, text_w - 6.0, 9.5, Bold, &until);
    let issued = format!("交付年月日　{}", wareki(p.issued_on));
    y = first.paragraph(L + 3.0, y + 0.3, text_w - 6.0, 8.0, Regular, &issued);
    let note = "使用期限を過ぎると調剤を受けられません。2次元コードは薬局の受付用です。";
    y = first.paragraph(L + 3.0, y + 0.5, text_w - 6.0, 6.5, Regular, note);
    let block_bottom = if side_by_side {
        first.qr(R - qr_size - 1.0, block_top + 1.0, module, qr);
        (y + 1.5).max(block_top + qr_size + 2.0)
    } else {
        first.qr(PAGE_W / 2.0 - qr_size / 2.0, y + 1.0, module, qr);
        y + qr_size + 3.0
    };
    first.rect(L, block_top, W, block_bottom - block_top, 0.35);

    // The flowing part: details, RPs.
    let mut flow = Flow::new(fonts, W);
    let label_w = 19.0;
    let seg = |t: String, size: f32, weight: Weight| vec![(t, size, weight)];
    flow.rule(0.35);
    let mut patient = vec![(format!("{}　様", clean(&p.patient.name)), 11.0, Bold)];
    if let Some(kana) = &p.patient.name_kana {
        patient.push((format!("　（{}）", clean(kana)), 7.5, Regular));
    }
    let born = format!(
        "生年月日　{}（{}）　性別　{}",
        wareki(p.patient.birth_date),
        seireki(p.patient.birth_date),
        sex(p.patient.sex)
    );
    flow.row(label_w, "患者", &[patient, seg(born, 8.5, Regular)]);
    let ins = &p.insurance;
    let numbers = format!(
        "保険者番号　{}　　記号・番号　{}　　枝番　{}",
        ins.insurer_number,
        symbol_number(p),
        ins.branch
    );
    let mut kind = relationship(ins.relationship).to_string();
    if let Some(rate) = ins.copay_rate {
        kind.push_str(&format!("　　負担割合　{}割", rate / 10));
    }
    flow.row(
        label_w,
        "保険",
        &[seg(numbers, 8.5, Regular), seg(kind, 8.5, Regular)],
    );
    if !p.public_expenses.is_empty() {
        let lines: Vec<_> = p
            .public_expenses
            .iter()
            .enumerate()
            .map(|(i, pe)| seg(public_expense_line(i, pe), 8.5, Regular))
            .collect();
        flow.row(label_w, "公費", &lines);
    }
    let inst = doc.institution;
    let mut institution = vec![seg(clean(&inst.name), 9.0, Bold)];
    if let Some(a) = &inst.address {
        institution.push(seg(clean(a), 8.0, Regular));
    }
    let mut contact = String::new();
    if let Some(phone) = &inst.phone {
        contact.push_str(&format!("電話　{}　　", clean(phone)));
    }
    contact.push_str(&format!("医療機関コード　{}", inst.code));
    institution.push(seg(contact, 8.0, Regular));
    flow.row(label_w, "医療機関", &institution);
    let mut doctor = String::new();
    if let Some(d) = &p.doctor {
        doctor.push_str(&clean(&d.name));
        if let Some(k) = &d.name_kana {
            doctor.push_str(&format!("（{}）", clean(k)));
        }
    }
    if let Some(dep) = &p.department {
        if !doctor.is_empty() {
            doctor.push_str("　　");
        }
        doctor.push_str(&format!("診療科　{}", clean(dep)));
    }
    if !doctor.is_empty() {
        flow.row(label_w, "医師", &[seg(doctor, 9.0, Regular)]);
    }
    if let Some(n) = p.refill_count {
        let refill = format!("リフィル可（総使用回数　{n}回）");
        flow.row(label_w, "リフィル", &[seg(refill, 8.5, Regular)]);
    }
    if let Some(remarks) = &p.remarks {
        flow.row(label_w, "備考", &[seg(remarks.clone(), 8.5, Regular)]);
    }
    flow.gap(2.5);

    flow.section("処方内容");
    if p.rps.is_empty() {
        flow.next_group();
        flow.line(3.0, 9.0, Regular, 0, "（処方はありません）");
    }
    for (i, rp) in p.rps.iter().enumerate() {
        flow.rp(i, rp);
    }
    flow.right_note("以下余白");

    let header = || {
        let mut s = Sheet::new(fonts);
        s.text(L, 9.0, 12.0, Bold, "処方内容（控え）（続き）");
        if let Some(n) = &number {
            let w = s.width(n, Bold, 14.0);
            s.text(R - w, 8.0, 14.0, Bold, n);
            s.text_right(R - w - 2.0, 10.5, 7.5, Regular, "引換番号");
        }
        s.text(L, 15.5, 8.0, Bold, "これは処方箋ではありません");
        let who = format!("{}　様", clean(&p.patient.name));
        s.text_fit_right(R, 15.5, W - 50.0, 8.5, Regular, &who);
        s.hline(L, R, 20.5, 0.35);
        s
    };
    let first_top = block_bottom + 3.5;
    let placed = flow.paginate(first_top, 24.0, FLOW_BOTTOM);
    let total = placed.len();
    let mut pages = Vec::with_capacity(total);
    for (n, items) in placed.into_iter().enumerate() {
        let mut sheet = if n == 0 {
            std::mem::replace(&mut first, Sheet::new(fonts))
        } else {
            header()
        };
        for (idx, y) in items {
            sheet.place(&flow.items[idx].ops, L, y);
        }
        sheet.hline(L, R, PAGE_H - 11.0, 0.25);
        sheet.text(
            L,
            PAGE_H - 9.5,
            6.5,
            Regular,
            "処方内容（控え）　これは処方箋ではありません",
        );
        sheet.text_right(
            R,
            PAGE_H - 9.8,
            8.0,
            Regular,
            &format!("{}/{}", n + 1, total),
        );
        pages.push(sheet.ops);
    }
    write_pdf(pages, fonts, "処方内容（控え）")
}

/// A vertical run of content broken into pages: each item is a line or a rule, laid out at the
/// origin; items of one group stay together when the group fits on a page.
struct Flow<'f> {
    fonts: &'f Fonts,
    width: f32,
    items: Vec<Item>,
    group: u32,
    /// The next group joins the current one (a title stays with what follows it).
    hold: bool,
}

struct Item {
    h: f32,
    ops: Vec<Op>,
    group: u32,
}

impl<'f> Flow<'f> {
    fn new(fonts: &'f Fonts, width: f32) -> Self {
        Flow {
            fonts,
            width,
            items: Vec::new(),
            group: 0,
            hold: false,
        }
    }

    fn sheet(&self) -> Sheet<'f> {
        Sheet::new(self.fonts)
    }

    fn push(&mut self, h: f32, sheet: Sheet) {
        self.items.push(Item {
            h,
            ops: sheet.ops,
            group: self.group,
        });
    }

    fn next_group(&mut self) {
        if !std::mem::take(&mut self.hold) {
            self.group += 1;
        }
    }

    fn rule(&mut self, width: f32) {
        self.next_group();
        let mut s = self.sheet();
        s.hline(0.0, self.width, 0.0, width);
        self.push(0.0, s);
    }

    fn gap(&mut self, h: f32) {
        self.next_group();
        let s = self.sheet();
        self.push(h, s);
    }

    /// A labelled row of the details table. Each value line is one or more segments side by side
    /// (falling back to one wrapped paragraph per segment when they do not fit); the row closes
    /// with a rule. Every visual line is an item of its own, so a long row can continue on the
    /// next page.
    fn row(&mut self, label_w: f32, label: &str, values: &[Vec<(String, f32, Weight)>]) {
        self.next_group();
        let value_w = self.width - label_w - 1.0;
        let sheet = self.sheet();
        let mut lines: Vec<Vec<(String, f32, Weight)>> = Vec::new();
        for segments in values {
            let total: f32 = segments
                .iter()
                .map(|(t, size, weight)| sheet.width(t, *weight, *size))
                .sum();
            if segments.len() > 1
                && total <= value_w
                && !segments.iter().any(|s| s.0.contains('\n'))
            {
                lines.push(segments.clone());
                continue;
            }
            for (text, size, weight) in segments {
                for line in sheet.wrap(text.trim_start(), *weight, *size, value_w) {
                    lines.push(vec![(line, *size, *weight)]);
                }
            }
        }
        let count = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == count;
            let big = line.iter().map(|s| s.1).fold(0.0f32, f32::max);
            let lead = em(big) * 1.4;
            let pad_top = if first { 1.0 } else { 0.0 };
            let pad_bottom = if last { 1.0 } else { 0.0 };
            let h = pad_top + lead + pad_bottom;
            let baseline = pad_top + (lead - em(big)) / 2.0 + ASCENT * em(big);
            let mut s = self.sheet();
            if first {
                s.text(1.2, baseline - ASCENT * em(7.5), 7.5, Bold, label);
            }
            let mut x = label_w;
            for (text, size, weight) in &line {
                x += s.text(x, baseline - ASCENT * em(*size), *size, *weight, text);
            }
            if last {
                s.hline(0.0, self.width, h, 0.25);
            }
            self.push(h, s);
        }
    }

    /// A shaded section title; it stays with what follows it.
    fn section(&mut self, title: &str) {
        self.next_group();
        let mut s = self.sheet();
        s.fill_rect(0.0, 0.0, self.width, 6.0, 225);
        s.text(2.0, (6.0 - em(10.0)) / 2.0, 10.0, Bold, title);
        self.push(7.0, s);
        self.hold = true;
    }

    /// One line of text at `x`.
    fn line(&mut self, x: f32, size: f32, weight: Weight, gray: u8, text: &str) {
        let mut s = self.sheet();
        let lead = em(size) * 1.5;
        s.text_gray(x, (lead - em(size)) / 2.0, size, weight, gray, text);
        self.push(lead, s);
    }

    fn right_note(&mut self, text: &str) {
        self.next_group();
        let mut s = self.sheet();
        s.text_right(self.width, 0.6, 8.0, Regular, text);
        self.push(4.5, s);
    }

    /// One RP: its number beside the drugs (each with its dose), then 剤形 and usage with the
    /// quantity (日分, 回分).
    fn rp(&mut self, i: usize, rp: &Rp) {
        self.next_group();
        let w = self.width;
        let x = 11.0;
        let mut first = true;
        for d in &rp.drugs {
            let dose = dose_text(rp.dosage_form, d);
            let dw = self.sheet().width(&dose, Regular, 9.5).max(22.0);
            let name_w = w - x - dw - 3.0;
            let mark = "〔後発品変更不可〕";
            let sheet = self.sheet();
            let mut lines = sheet.wrap(&d.name, Regular, 9.5, name_w);
            // The 変更不可 mark goes after the name when it fits there.
            let inline_mark = d.no_substitution
                && lines.last().is_some_and(|l| {
                    sheet.width(l, Regular, 9.5) + 1.5 + sheet.width(mark, Regular, 7.5) <= name_w
                });
            if lines.is_empty() {
                lines.push(String::new());
            }
            let n = lines.len();
            for (k, line) in lines.iter().enumerate() {
                let mut s = self.sheet();
                let top = if first { 1.0 } else { 0.0 };
                let lead = em(9.5) * 1.4;
                let t = top + (lead - em(9.5)) / 2.0;
                if first {
                    s.text(0.0, t, 9.5, Bold, &format!("RP{}", i + 1));
                    first = false;
                }
                if k == 0 {
                    s.text_right(w, t, 9.5, Regular, &dose);
                }
                let lw = s.text(x, t, 9.5, Regular, line);
                if inline_mark && k + 1 == n {
                    s.text_gray(
                        x + lw + 1.5,
                        t + em(9.5) - em(7.5) - 0.2,
                        7.5,
                        Regular,
                        60,
                        mark,
                    );
                }
                self.push(top + lead, s);
            }
            if d.no_substitution && !inline_mark {
                self.line(x + 1.0, 7.5, Regular, 60, mark);
            }
        }
        // 剤形, usage and quantity.
        let form = format!("【{}】", form_name(rp.dosage_form));
        let qty = quantity(rp);
        let sheet = self.sheet();
        let form_w = sheet.width(&form, Regular, 8.0);
        let qty_w = sheet.width(&qty, Bold, 9.5);
        let usage = usage_text(rp);
        let lines = sheet.wrap(&usage, Regular, 8.5, w - x - form_w - qty_w - 4.0);
        let n = lines.len().max(1);
        for k in 0..n {
            let mut s = self.sheet();
            let lead = em(9.5) * 1.4;
            let t = (lead - em(8.5)) / 2.0 + 0.2;
            if k == 0 {
                s.text_gray(x, t + 0.3, 8.0, Regular, 60, &form);
            }
            if let Some(line) = lines.get(k) {
                s.text(x + form_w, t, 8.5, Regular, line);
            }
            if k + 1 == n {
                s.text_right(w, (lead - em(9.5)) / 2.0, 9.5, Bold, &qty);
            }
            self.push(lead, s);
        }
        let mut s = self.sheet();
        s.line_gray(0.0, 1.0, w, 1.0, 0.2, 160);
        self.push(2.0, s);
    }

    /// Items per page as (item, top y); the first page starts at `first_top`, the others at
    /// `next_top`; nothing goes below `bottom`.
    fn paginate(&self, first_top: f32, next_top: f32, bottom: f32) -> Vec<Vec<(usize, f32)>> {
        let mut pages: Vec<Vec<(usize, f32)>> = vec![Vec::new()];
        let mut y = first_top;
        let items = &self.items;
        for (i, it) in items.iter().enumerate() {
            let page_top = if pages.len() == 1 {
                first_top
            } else {
                next_top
            };
            let starts_group = i == 0 || items[i - 1].group != it.group;
            let mut need = it.h;
            if starts_group {
                let group_h: f32 = items[i..]
                    .iter()
                    .take_while(|x| x.group == it.group)
                    .map(|x| x.h)
                    .sum();
                if group_h <= bottom - next_top {
                    need = group_h;
                }
            }
            if y + need > bottom && y > page_top + 0.01 && pages.len() < MAX_PAGES {
                pages.push(Vec::new());
                y = next_top;
            }
            if let Some(page) = pages.last_mut() {
                page.push((i, y));
            }
            y += it.h;
        }
        pages
    }
}

// =================================================================================================
// The paper prescription (様式第二号)
// =================================================================================================

/// Column and row positions of the form, in millimetres.
mod form {
    pub const L: f32 = 5.0;
    pub const R: f32 = super::PAGE_W - 5.0;
    /// Left label column.
    pub const C1: f32 = L + 22.0;
    /// The middle split (patient | institution).
    pub const CM: f32 = L + 68.0;
    /// Right label column.
    pub const C3: f32 = CM + 22.0;
    /// Top of the table.
    pub const TOP: f32 = 17.0;
    pub const ROW_A: f32 = 7.0;
    pub const ROW_B: f32 = 9.0;
    pub const ROW_C: f32 = 30.0;
    pub const ROW_D: f32 = 9.0;
    /// Top of the 処方 box.
    pub const MID_TOP: f32 = TOP + ROW_A + ROW_B + ROW_C + ROW_D;
    /// 調剤実施回数 row.
    pub const G_TOP: f32 = 172.5;
    /// 調剤済年月日 … rows.
    pub const H_TOP: f32 = 181.0;
    pub const H_BOTTOM: f32 = 197.5;
    /// Vertical label column (患者, 処方, 備考).
    pub const VL: f32 = L + 6.0;
    /// 処方: 変更不可 and 患者希望 columns.
    pub const RX_MARK1: f32 = VL + 12.0;
    pub const RX_MARK2: f32 = RX_MARK1 + 7.0;
    pub const RX_TEXT: f32 = RX_MARK2 + 8.0;
    pub const RX_HEAD: f32 = 8.0;
    pub const RX_LEAD: f32 = 3.6;
    pub const RX_SIZE: f32 = 7.5;
    pub const REFILL_H: f32 = 5.0;
    /// 備考: signature row, text size and lead.
    pub const SIG_H: f32 = 6.0;
    pub const NOTE_SIZE: f32 = 6.5;
    pub const NOTE_LEAD: f32 = 3.0;
    /// The least height of the prescription lines on a page that still has some to show.
    pub const MIN_RX: f32 = 22.0;
    pub const SYMBOL_GAP: f32 = 3.0;
    pub const SYMBOL_LABEL: f32 = 3.0;
    pub const TEXT_COL: f32 = 50.0;
}

/// A line of the 処方 box.
struct RxLine {
    /// Text at the RP-number column (e.g. `Rp1`).
    tag: String,
    indent: f32,
    text: String,
    right: String,
    no_substitution: bool,
    group: usize,
}

/// The paper prescription (処方箋, 様式第二号 layout) on A5, drawn with lines and text: 公費 and
/// insurance number boxes, patient, institution and doctor, 交付年月日 and 使用期間, the 処方
/// (RPs, 後発品変更不可 marks, リフィル), 備考 (remarks, refill count, the JAHIS 2-D symbols
/// `jahis` in order, labelled n/N when there are several), the empty pharmacy area, and the
/// 引換番号 when `doc` has one (the caller gives it for paper-with-exchange-number
/// prescriptions). When the 処方, remarks or symbols do not fit, further pages repeat the form.
pub fn render_paper(
    doc: &DocumentInput,
    jahis: &[QrMatrix],
    fonts: &Fonts,
) -> Result<Rendered, PdfError> {
    use form::*;
    let p = doc.prescription;
    let rx = rx_lines(p, fonts);
    let remarks = remark_lines(p, fonts);
    // Every symbol fits the 備考 box: 0.45 mm per module, less only for symbols too large for
    // the box at that size (above version 31).
    let max_cell = G_TOP - MID_TOP - RX_HEAD - MIN_RX - SIG_H - SYMBOL_LABEL - 4.0;
    let symbols: Vec<(f32, f32)> = jahis
        .iter()
        .map(|q| {
            let m = 0.45f32.min(max_cell / (q.width + 8) as f32);
            (m, qr_extent(q, m))
        })
        .collect();

    let mut pages = Vec::new();
    let (mut rx_i, mut sym_i, mut rem_i) = (0usize, 0usize, 0usize);
    loop {
        let mut s = Sheet::new(fonts);
        let first_page = pages.is_empty();
        // How many symbols this page carries, and so how tall 備考 is.
        let body_w = R - VL;
        let rx_left = rx_i < rx.len();
        let mid = G_TOP - MID_TOP - RX_HEAD - SIG_H;
        let mut sym_rows: Vec<Vec<usize>> = Vec::new();
        let mut sym_h = 0.0f32;
        if sym_i < symbols.len() {
            let avail_w = body_w - TEXT_COL - SYMBOL_GAP;
            let min_rx = if rx_left { MIN_RX } else { REFILL_H + 6.0 };
            let mut k = sym_i;
            while k < symbols.len() {
                let mut row = Vec::new();
                let mut x = 0.0;
                let mut row_h = 0.0f32;
                let mut j = k;
                while j < symbols.len() {
                    let cell = symbols[j].1;
                    if !row.is_empty() && x + cell > avail_w {
                        break;
                    }
                    row.push(j);
                    x += cell + SYMBOL_GAP;
                    row_h = row_h.max(cell + SYMBOL_LABEL);
                    j += 1;
                }
                let fits = sym_h + row_h + 3.0 <= mid - min_rx;
                if !fits && !sym_rows.is_empty() {
                    break;
                }
                k = j;
                sym_h += row_h;
                sym_rows.push(row);
            }
        }
        let text_w = if sym_rows.is_empty() {
            body_w - 3.0
        } else {
            TEXT_COL - 2.0
        };
        let zansyaku = zansyaku_lines(fonts, text_w);
        let rem_min = NOTE_LEAD * (2.0 + zansyaku.len() as f32) + 2.5;
        let rem_all = NOTE_LEAD * ((remarks.len() - rem_i) + zansyaku.len()) as f32 + 2.5;
        // The remarks take the room the prescription lines left on this page do not need.
        let rx_need = 1.5 + (rx.len() - rx_i + 1) as f32 * RX_LEAD + REFILL_H + 0.5;
        let body_min = (sym_h + 3.0).max(rem_min);
        let body_h = if rx_need <= mid - body_min {
            body_min.max(rem_all.min(mid - rx_need))
        } else {
            body_min
        };
        let rx_top = MID_TOP + RX_HEAD;
        let bikou_top = G_TOP - SIG_H - body_h;
        let rx_bottom = bikou_top - REFILL_H;

        // 処方 lines of this page; the last line is kept for 「以下余白」 or 「次頁に続く」.
        let capacity = (((rx_bottom - rx_top - 1.5) / RX_LEAD).floor() as usize)
            .saturating_sub(1)
            .max(1);
        let start = rx_i;
        let mut end = rx_i;
        while end < rx.len() && end - start < capacity {
            let g = rx[end].group;
            let group_len = rx[end..].iter().take_while(|l| l.group == g).count();
            let starts_group = end == 0 || rx[end - 1].group != g;
            if starts_group && end > start && end - start + group_len > capacity {
                break; // keep the RP together on the next page
            }
            end += 1;
        }
        let mut y = rx_top + 1.5;
        for line in &rx[start..end] {
            draw_rx_line(&mut s, line, y);
            y += RX_LEAD;
        }
        rx_i = end;
        if y + RX_LEAD <= rx_bottom + 0.01 {
            let note = if rx_i < rx.len() {
                "（次頁に続く）"
            } else {
                "以下余白"
            };
            s.text(RX_TEXT + 12.0, y + 0.2, RX_SIZE, Regular, note);
        }

        // 備考 text and symbols.
        let body_top = bikou_top + SIG_H;
        let text_lines =
            (((body_h - 2.0) / NOTE_LEAD).floor() as usize).saturating_sub(zansyaku.len());
        let mut ty = body_top + 1.2;
        let remaining = remarks.len() - rem_i;
        let mut take = text_lines.min(remaining);
        let continued = take < remaining && take > 1;
        if continued {
            take -= 1;
        }
        for line in &remarks[rem_i..rem_i + take] {
            s.text(VL + 1.5, ty, NOTE_SIZE, Regular, line);
            ty += NOTE_LEAD;
        }
        rem_i += take;
        if continued {
            s.text(VL + 1.5, ty, NOTE_SIZE, Regular, "（次頁に続く）");
        }
        let mut zy = G_TOP - NOTE_LEAD * zansyaku.len() as f32 - 0.6;
        for line in &zansyaku {
            s.text(VL + 1.5, zy, 5.5, Regular, line);
            zy += NOTE_LEAD;
        }
        let mut sy = body_top + 1.5;
        for row in &sym_rows {
            let mut sx = VL + TEXT_COL + SYMBOL_GAP;
            let mut row_h = 0.0f32;
            for &k in row {
                let (m, size) = symbols[k];
                s.qr(sx, sy, m, &jahis[k]);
                if jahis.len() > 1 {
                    s.text_center(
                        sx + size / 2.0,
                        sy + size + 0.2,
                        6.0,
                        Regular,
                        &format!("{}/{}", k + 1, jahis.len()),
                    );
                }
                sx += size + SYMBOL_GAP;
                row_h = row_h.max(size + SYMBOL_LABEL);
            }
            sy += row_h;
        }
        if let Some(last) = sym_rows.last().and_then(|r| r.last()) {
            sym_i = last + 1;
        }

        draw_form(&mut s, doc, bikou_top, rx_bottom);
        pages.push(s.ops);
        let done = rx_i >= rx.len() && sym_i >= symbols.len() && rem_i >= remarks.len();
        let stuck = !first_page && start == rx_i && take == 0 && sym_rows.is_empty();
        if done || stuck || pages.len() >= MAX_PAGES {
            break;
        }
    }
    let total = pages.len();
    if total > 1 {
        for (n, ops) in pages.iter_mut().enumerate() {
            let mut s = Sheet::new(fonts);
            s.text(L, 5.5, 7.5, Regular, &format!("{}/{}枚目", n + 1, total));
            ops.extend(s.ops);
        }
    }
    write_pdf(pages, fonts, "処方箋")
}

/// The 処方 as lines: per RP, each drug (wrapped) with its dose, then the usage with the quantity.
fn rx_lines(p: &Prescription, fonts: &Fonts) -> Vec<RxLine> {
    use form::*;
    let s = Sheet::new(fonts);
    let mut out = Vec::new();
    for (i, rp) in p.rps.iter().enumerate() {
        for (j, d) in rp.drugs.iter().enumerate() {
            let dose = dose_text(rp.dosage_form, d);
            let dose_w = s.width(&dose, Regular, RX_SIZE).max(14.0);
            let name_w = R - 2.0 - dose_w - 2.0 - RX_TEXT;
            let lines = s.wrap(&d.name, Regular, RX_SIZE, name_w);
            for (k, line) in lines.into_iter().enumerate() {
                out.push(RxLine {
                    tag: if j == 0 && k == 0 {
                        format!("Rp{}", i + 1)
                    } else {
                        String::new()
                    },
                    indent: if k == 0 { 0.0 } else { 1.5 },
                    text: line,
                    right: if k == 0 { dose.clone() } else { String::new() },
                    no_substitution: d.no_substitution && k == 0,
                    group: i,
                });
            }
        }
        let qty = quantity(rp);
        let qty_w = s.width(&qty, Regular, RX_SIZE).max(14.0);
        let usage = usage_text(rp);
        let width = R - 2.0 - qty_w - 2.0 - RX_TEXT - 3.0;
        let lines = s.wrap(&usage, Regular, RX_SIZE, width);
        let n = lines.len();
        for (k, line) in lines.into_iter().enumerate() {
            out.push(RxLine {
                tag: String::new(),
                indent: 3.0,
                text: line,
                right: if k + 1 == n {
                    qty.clone()
                } else {
                    String::new()
                },
                no_substitution: false,
                group: i,
            });
        }
    }
    out
}

fn draw_rx_line(s: &mut Sheet, line: &RxLine, y: f32) {
    use form::*;
    if !line.tag.is_empty() {
        s.text(RX_MARK2 + 1.0, y + 0.3, 6.5, Bold, &line.tag);
    }
    if line.no_substitution {
        s.text_center((VL + RX_MARK1) / 2.0, y - 0.3, 8.5, Bold, "×");
    }
    s.text(RX_TEXT + line.indent, y, RX_SIZE, Regular, &line.text);
    if !line.right.is_empty() {
        s.text_right(R - 2.0, y, RX_SIZE, Regular, &line.right);
    }
}

/// 備考 text: the refill count, the third 公費 (the form has boxes for two), the remarks.
fn remark_lines(p: &Prescription, fonts: &Fonts) -> Vec<String> {
    use form::*;
    let s = Sheet::new(fonts);
    let mut text = Vec::new();
    if let Some(n) = p.refill_count {
        text.push(format!("リフィル可（総使用回数　{n}回）"));
    }
    for (i, pe) in p.public_expenses.iter().enumerate().skip(2) {
        text.push(public_expense_line(i, pe));
    }
    if let Some(r) = &p.remarks {
        text.push(r.clone());
    }
    // The narrowest the column gets (when symbols share the box).
    let width = TEXT_COL - 3.0;
    text.iter()
        .flat_map(|t| s.wrap(t, Regular, NOTE_SIZE, width))
        .collect()
}

/// The 残薬 instruction at the foot of 備考.
fn zansyaku_lines(fonts: &Fonts, width: f32) -> Vec<String> {
    let s = Sheet::new(fonts);
    let mut out = s.wrap(
        "保険薬局が調剤時に残薬を確認した場合の対応（特に指示がある場合は「レ」又は「×」を記載すること。）",
        Regular,
        5.5,
        width,
    );
    out.extend(s.wrap(
        "□保険医療機関へ疑義照会した上で調剤　□保険医療機関へ情報提供",
        Regular,
        5.5,
        width,
    ));
    out
}

/// The form itself: every box, label and header value; the 処方 and 備考 boxes end where the
/// page's content needs them to.
fn draw_form(s: &mut Sheet, doc: &DocumentInput, bikou_top: f32, rx_bottom: f32) {
    use form::*;
    let p = doc.prescription;
    let inst = doc.institution;
    const LW: f32 = 0.5;
    const TW: f32 = 0.25;

    // Title.
    s.text_center(PAGE_W / 2.0, 5.0, 15.0, Bold, "処　方　箋");
    s.text_center(
        PAGE_W / 2.0,
        11.8,
        6.5,
        Regular,
        "（この処方箋は、どの保険薬局でも有効です。）",
    );
    if let Some(n) = doc.exchange_number {
        let n = group_digits(n);
        let size = s.fit_size(&n, Bold, 12.0, 7.0, 34.0);
        let w = s.width(&n, Bold, size).max(24.0) + 4.0;
        s.rect(R - w, 4.0, w, 11.5, LW);
        s.text(R - w + 1.5, 4.7, 6.0, Regular, "引換番号");
        s.text_right(R - 2.0, 7.4 + (7.0 - em(size)) / 2.0, size, Bold, &n);
    }

    let ya = TOP;
    let yb = ya + ROW_A;
    let yc = yb + ROW_B;
    let yd = yc + ROW_C;

    // Row A: 公費負担者番号 | 保険者番号.
    let first_pe = p.public_expenses.first();
    s.label_box(L, ya, C1 - L, ROW_A, "公費負担者番号");
    s.digit_boxes(
        C1,
        ya,
        (CM - C1) / 8.0,
        ROW_A,
        8,
        first_pe.map_or("", |pe| pe.payer_number.as_str()),
    );
    s.label_box(CM, ya, C3 - CM, ROW_A, "保険者番号");
    s.digit_boxes(
        C3,
        ya,
        (R - C3) / 8.0,
        ROW_A,
        8,
        p.insurance.insurer_number.as_str(),
    );
    // Row B: 公費受給者番号 | 記号・番号（枝番）.
    s.label_box(L, yb, C1 - L, ROW_B, "公費負担医療の受給者番号");
    s.rect(C1, yb, CM - C1, ROW_B, TW);
    s.digit_boxes(
        C1,
        yb,
        (CM - C1) / 8.0,
        ROW_B,
        7,
        first_pe
            .and_then(|pe| pe.recipient_number.as_ref())
            .map_or("", |r| r.as_str()),
    );
    s.label_box(
        CM,
        yb,
        C3 - CM,
        ROW_B,
        "被保険者証・被保険者手帳の記号・番号",
    );
    s.rect(C3, yb, R - C3, ROW_B, TW);
    let ins = format!(
        "{}　（枝番）{}",
        symbol_number(p),
        p.insurance.branch.as_str()
    );
    s.text_in(C3 + 1.5, yb, R - C3 - 3.0, ROW_B, 8.5, Regular, &ins);

    // Row C left: 患者.
    s.rect(L, yc, VL - L, ROW_C, TW);
    s.vertical(L, yc, VL - L, ROW_C, 8.0, "患者");
    let (h1, h2) = (14.0, 9.0);
    let h3 = ROW_C - h1 - h2;
    s.label_box(VL, yc, C1 - VL, h1, "氏名");
    s.label_box(VL, yc + h1, C1 - VL, h2, "生年月日");
    s.label_box(VL, yc + h1 + h2, C1 - VL, h3, "区分");
    s.rect(C1, yc, CM - C1, h1, TW);
    s.rect(C1, yc + h1, CM - C1, h2, TW);
    s.rect(C1, yc + h1 + h2, CM - C1, h3, TW);
    let vw = CM - C1 - 3.0;
    let mut ny = yc + 1.0;
    if let Some(kana) = &p.patient.name_kana {
        let kana = clean(kana);
        let size = s.fit_size(&kana, Regular, 6.0, 3.5, vw);
        s.text(C1 + 1.5, ny, size, Regular, &kana);
        ny += em(6.0) + 0.6;
    }
    s.text_block(
        C1 + 1.5,
        ny,
        vw,
        yc + h1 - 0.8 - ny,
        11.0,
        Regular,
        &p.patient.name,
    );
    // 生年月日 and 男・女.
    let birth = wareki(p.patient.birth_date);
    s.text_in(C1 + 1.5, yc + h1, vw - 14.0, h2, 8.0, Regular, &birth);
    s.choice(
        CM - 13.0,
        yc + h1,
        h2,
        7.5,
        &["男", "女"],
        match p.patient.sex {
            Sex::Male => 0,
            Sex::Female => 1,
        },
    );
    s.choice(
        C1 + 3.0,
        yc + h1 + h2,
        h3,
        7.0,
        &["被保険者", "被扶養者"],
        match p.insurance.relationship {
            Relationship::Insured => 0,
            Relationship::Dependent => 1,
        },
    );

    // Row C right: institution, phone, doctor, codes.
    let (r1, r2, r3) = (13.0, 5.0, 7.0);
    let r4 = ROW_C - r1 - r2 - r3;
    s.label_box(CM, yc, C3 - CM, r1, "保険医療機関の所在地及び名称");
    s.label_box(CM, yc + r1, C3 - CM, r2, "電話番号");
    s.label_box(CM, yc + r1 + r2, C3 - CM, r3, "保険医氏名");
    s.rect(C3, yc, R - C3, r1, TW);
    s.rect(C3, yc + r1, R - C3, r2, TW);
    s.rect(C3, yc + r1 + r2, R - C3, r3, TW);
    let iw = R - C3 - 3.0;
    let addr = inst.address.as_deref().map(clean).unwrap_or_default();
    let (asize, alines) = s.fit_lines(&addr, Regular, 6.0, 3.0, iw, 5.2, 1.25);
    let mut iy = yc + 0.9;
    for line in &alines {
        s.text(C3 + 1.5, iy, asize, Regular, line);
        iy += em(asize) * 1.25;
    }
    s.text_block(
        C3 + 1.5,
        iy + 0.3,
        iw,
        yc + r1 - 0.6 - iy - 0.3,
        8.0,
        Regular,
        &inst.name,
    );
    if let Some(phone) = &inst.phone {
        s.text_in(C3 + 1.5, yc + r1, iw, r2, 7.0, Regular, &clean(phone));
    }
    let doctor = p
        .doctor
        .as_ref()
        .map(|d| clean(&d.name))
        .unwrap_or_default();
    s.text_in(C3 + 1.5, yc + r1 + r2, iw - 6.0, r3, 9.0, Regular, &doctor);
    s.text_right(
        R - 1.5,
        yc + r1 + r2 + (r3 - em(6.0)) / 2.0,
        6.0,
        Regular,
        "印",
    );
    // 都道府県番号 | 点数表番号 | 医療機関コード.
    let code = inst.code.as_str();
    let (pref, table, rest) = (
        code.get(0..2).unwrap_or(""),
        code.get(2..3).unwrap_or(""),
        code.get(3..).unwrap_or(""),
    );
    let y4 = yc + r1 + r2 + r3;
    let mut x = CM;
    for (label, lw, n, digits, last) in [
        ("都道府県番号", 11.0, 2, pref, false),
        ("点数表番号", 9.5, 1, table, false),
        ("医療機関コード", 12.0, 7, rest, true),
    ] {
        s.rect(x, y4, lw, r4, TW);
        s.text_in(x + 0.5, y4, lw - 1.0, r4, 4.5, Regular, label);
        x += lw;
        let boxes = n.max(digits.chars().count());
        let w = if last { (R - x) / boxes as f32 } else { 3.6 };
        s.digit_boxes(x, y4, w, r4, n, digits);
        x += w * boxes as f32;
    }

    // Row D: 交付年月日 | 使用期間.
    s.label_box(L, yd, C1 - L, ROW_D, "交付年月日");
    s.rect(C1, yd, CM - C1, ROW_D, TW);
    s.text_in(
        C1 + 1.5,
        yd,
        CM - C1 - 3.0,
        ROW_D,
        8.5,
        Regular,
        &wareki(p.issued_on),
    );
    s.label_box(CM, yd, C3 - CM, ROW_D, "処方箋の使用期間");
    let cv = C3 + 27.0;
    s.rect(C3, yd, cv - C3, ROW_D, TW);
    s.text_in(
        C3 + 1.0,
        yd,
        cv - C3 - 2.0,
        ROW_D,
        7.5,
        Regular,
        &wareki(p.valid_until),
    );
    s.rect(cv, yd, R - cv, ROW_D, TW);
    s.text_block(
        cv + 0.8,
        yd + 0.7,
        R - cv - 1.6,
        ROW_D - 1.2,
        4.5,
        Regular,
        "特に記載のある場合を除き、交付の日を含めて４日以内に保険薬局に提出すること。",
    );

    // 処方.
    let top = MID_TOP;
    s.rect(L, top, VL - L, bikou_top - top, TW);
    s.vertical(L, top, VL - L, bikou_top - top, 8.0, "処方");
    s.rect(VL, top, RX_MARK1 - VL, RX_HEAD, TW);
    s.text_block(
        VL + 0.5,
        top + 1.2,
        RX_MARK1 - VL - 1.0,
        RX_HEAD - 1.5,
        4.2,
        Regular,
        "変更不可\n（医療上必要）",
    );
    s.rect(RX_MARK1, top, RX_MARK2 - RX_MARK1, RX_HEAD, TW);
    s.text_in(
        RX_MARK1 + 0.4,
        top,
        RX_MARK2 - RX_MARK1 - 0.8,
        RX_HEAD,
        4.5,
        Regular,
        "患者希望",
    );
    s.rect(RX_MARK2, top, R - RX_MARK2, RX_HEAD, TW);
    s.text_block(
        RX_MARK2 + 0.8,
        top + 0.6,
        R - RX_MARK2 - 1.6,
        RX_HEAD - 1.0,
        4.3,
        Regular,
        "個々の処方薬について、医療上の必要性があるため、後発医薬品（ジェネリック医薬品）への変更に差し支えがあると判断した場合には、「変更不可」欄に「レ」又は「×」を記載し、「保険医署名」欄に署名又は記名・押印すること。また、患者の希望を踏まえ、先発医薬品を処方した場合には、「患者希望」欄に「レ」又は「×」を記載すること。",
    );
    let body_top = top + RX_HEAD;
    s.rect(VL, body_top, R - VL, bikou_top - body_top, TW);
    s.vline(RX_MARK1, body_top, rx_bottom, TW);
    s.vline(RX_MARK2, body_top, rx_bottom, TW);
    s.hline(VL, R, rx_bottom, 0.15);
    // リフィル可 □（ 回）.
    let ry = rx_bottom + (REFILL_H - em(7.0)) / 2.0;
    let w = s.text(RX_TEXT, ry, 7.0, Regular, "リフィル可");
    let bx = RX_TEXT + w + 1.5;
    s.rect(bx, rx_bottom + 1.0, 3.0, 3.0, TW);
    let count = match p.refill_count {
        Some(n) => {
            s.text(bx + 0.3, rx_bottom + 1.1, 7.0, Bold, "レ");
            format!("（　{n}　回）")
        }
        None => "（　　回）".to_string(),
    };
    s.text(bx + 4.0, ry, 7.0, Regular, &count);

    // 備考.
    let sig_bottom = bikou_top + SIG_H;
    s.rect(L, bikou_top, VL - L, G_TOP - bikou_top, TW);
    s.vertical(L, bikou_top, VL - L, G_TOP - bikou_top, 8.0, "備考");
    s.rect(VL, bikou_top, R - VL, G_TOP - bikou_top, TW);
    s.hline(VL, R, sig_bottom, TW);
    s.hline(L, R, bikou_top, LW);
    let w = s.text(
        VL + 1.5,
        bikou_top + (SIG_H - em(6.5)) / 2.0,
        6.5,
        Regular,
        "保険医署名",
    );
    let sig_x = R - 38.0;
    s.text_block(
        VL + 3.0 + w,
        bikou_top + 0.8,
        sig_x - (VL + 3.0 + w) - 1.0,
        SIG_H - 1.0,
        4.3,
        Regular,
        "「変更不可」欄に「レ」又は「×」を記載した場合は、署名又は記名・押印すること。",
    );
    s.rect(sig_x, bikou_top + 0.8, R - 1.0 - sig_x, SIG_H - 1.6, 0.15);
    if p.rps
        .iter()
        .flat_map(|rp| &rp.drugs)
        .any(|d| d.no_substitution)
    {
        s.text_in(
            sig_x + 1.0,
            bikou_top + 0.8,
            R - sig_x - 3.0,
            SIG_H - 1.6,
            7.5,
            Regular,
            &doctor,
        );
    }

    // 調剤実施回数.
    s.rect(L, G_TOP, R - L, H_TOP - G_TOP, TW);
    let lines = [
        "調剤実施回数（調剤回数に応じて、□に「レ」又は「×」を記載するとともに、調剤日及び次回調剤予定日を記載すること。）",
        "□1回目調剤日（　　年　　月　　日）　□2回目調剤日（　　年　　月　　日）　□3回目調剤日（　　年　　月　　日）",
        "　次回調剤予定日（　　年　　月　　日）　　　　　次回調剤予定日（　　年　　月　　日）",
    ];
    let mut gy = G_TOP + 0.8;
    for line in lines {
        let size = s.fit_size(line, Regular, 5.5, 3.5, R - L - 3.0);
        s.text(L + 1.5, gy, size, Regular, line);
        gy += 2.6;
    }

    // 調剤済年月日 … and the second 公費.
    let hh = H_BOTTOM - H_TOP;
    let (k1, k2) = (5.0, 6.5);
    let k3 = hh - k1 - k2;
    let hm = L + 76.0;
    let hl = hm + 22.0;
    s.label_box(L, H_TOP, C1 - L, k1, "調剤済年月日");
    s.label_box(L, H_TOP + k1, C1 - L, k2, "保険薬局の所在地及び名称");
    s.label_box(L, H_TOP + k1 + k2, C1 - L, k3, "保険薬剤師氏名");
    s.rect(C1, H_TOP, hm - C1, k1, TW);
    s.text_in(
        C1 + 12.0,
        H_TOP,
        40.0,
        k1,
        7.0,
        Regular,
        "令和　　年　　月　　日",
    );
    s.rect(C1, H_TOP + k1, hm - C1, k2, TW);
    s.rect(C1, H_TOP + k1 + k2, hm - C1, k3, TW);
    s.text_right(
        hm - 1.5,
        H_TOP + k1 + k2 + (k3 - em(6.0)) / 2.0,
        6.0,
        Regular,
        "印",
    );
    let second = p.public_expenses.get(1);
    s.label_box(hm, H_TOP, hl - hm, hh / 2.0, "公費負担者番号");
    s.digit_boxes(
        hl,
        H_TOP,
        (R - hl) / 8.0,
        hh / 2.0,
        8,
        second.map_or("", |pe| pe.payer_number.as_str()),
    );
    s.label_box(
        hm,
        H_TOP + hh / 2.0,
        hl - hm,
        hh / 2.0,
        "公費負担医療の受給者番号",
    );
    s.digit_boxes(
        hl,
        H_TOP + hh / 2.0,
        (R - hl) / 8.0,
        hh / 2.0,
        7,
        second
            .and_then(|pe| pe.recipient_number.as_ref())
            .map_or("", |r| r.as_str()),
    );
    // Heavy outer frame and section rules.
    s.rect(L, TOP, R - L, H_BOTTOM - TOP, LW);
    s.hline(L, R, MID_TOP, LW);
    s.hline(L, R, G_TOP, LW);
    s.hline(L, R, H_TOP, LW);

    // Notes under the form.
    s.text_block(
        L,
        H_BOTTOM + 1.0,
        R - L,
        PAGE_H - H_BOTTOM - 2.5,
        4.3,
        Regular,
        "備考　１「処方」欄には、薬名、分量、用法及び用量を記載すること。２ この用紙は、Ａ列５番を標準とすること。３ 療養の給付及び公費負担医療に関する費用の請求に関する命令（昭和51年厚生省令第36号）第１条の公費負担医療については、「保険医療機関」とあるのは「公費負担医療の担当医療機関」と、「保険医氏名」とあるのは「公費負担医療の担当医氏名」と読み替えるものとすること。",
    );
}

// =================================================================================================
// Text of the documents
// =================================================================================================

/// A date in the Japanese era calendar, e.g. `令和8年11月20日` (year one as 元年).
fn wareki(d: Date) -> String {
    let (y, m, day) = (i32::from(d.year()), d.month(), d.day());
    let eras: [(&str, (i32, i8, i8)); 5] = [
        ("令和", (2019, 5, 1)),
        ("平成", (1989, 1, 8)),
        ("昭和", (1926, 12, 25)),
        ("大正", (1912, 7, 30)),
        ("明治", (1868, 1, 25)),
    ];
    for (name, start) in eras {
        if (y, m, day) >= start {
            let n = y - start.0 + 1;
            let year = if n == 1 {
                "元".to_string()
            } else {
                n.to_string()
            };
            return format!("{name}{year}年{m}月{day}日");
        }
    }
    seireki(d)
}

/// `1980年4月1日`.
fn seireki(d: Date) -> String {
    format!("{}年{}月{}日", d.year(), d.month(), d.day())
}

fn sex(s: Sex) -> &'static str {
    match s {
        Sex::Male => "男",
        Sex::Female => "女",
    }
}

fn relationship(r: Relationship) -> &'static str {
    match r {
        Relationship::Insured => "被保険者（本人）",
        Relationship::Dependent => "被扶養者（家族）",
    }
}

/// `記号・番号`, or the 番号 alone when there is no 記号.
fn symbol_number(p: &Prescription) -> String {
    let i = &p.insurance;
    if i.symbol.as_str().is_empty() {
        clean(i.number.as_str())
    } else {
        clean(&format!("{}・{}", i.symbol, i.number))
    }
}

fn public_expense_line(i: usize, pe: &PublicExpense) -> String {
    let ordinal = ["第一公費", "第二公費", "第三公費"]
        .get(i)
        .copied()
        .unwrap_or("公費");
    let mut s = format!("{ordinal}　負担者番号　{}", pe.payer_number);
    if let Some(r) = &pe.recipient_number {
        s.push_str(&format!("　受給者番号　{r}"));
    }
    s
}

fn form_name(f: DosageForm) -> &'static str {
    match f {
        DosageForm::Oral => "内服",
        DosageForm::AsNeeded => "頓服",
        DosageForm::External => "外用",
        DosageForm::OralDrops => "内服滴剤",
        DosageForm::Injection => "注射",
        DosageForm::Material => "医療材料",
    }
}

/// 日分 for 内服, 回分 for 頓服, the 調剤数量 otherwise.
fn quantity(rp: &Rp) -> String {
    match rp.dosage_form {
        DosageForm::Oral | DosageForm::OralDrops => format!("{}日分", rp.quantity),
        DosageForm::AsNeeded => format!("{}回分", rp.quantity),
        _ => format!("調剤数量　{}", rp.quantity),
    }
}

/// The dose with its unit; for 内服 it is the daily dose and says so.
fn dose_text(form: DosageForm, d: &Drug) -> String {
    let amount = format!("{}{}", d.dose.0.normalize(), clean(&d.unit));
    match form {
        DosageForm::Oral | DosageForm::OralDrops => format!("1日{amount}"),
        _ => amount,
    }
}

/// The usage text, with the times per day when the text does not already say it.
fn usage_text(rp: &Rp) -> String {
    let mut s = clean(&rp.usage.text);
    if let Some(n) = rp.usage.times_per_day {
        let said = [format!("{n}回"), format!("{}回", fullwidth_digits(n))];
        if !said.iter().any(|t| s.contains(t.as_str())) {
            s.push_str(&format!("（1日{n}回）"));
        }
    }
    s
}

fn fullwidth_digits(n: u8) -> String {
    n.to_string()
        .chars()
        .map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).unwrap_or(c))
        .collect()
}

/// The 引換番号 grouped for reading: 3-3 for the 6 digits patients see, fours when longer.
fn group_digits(n: &str) -> String {
    let chars: Vec<char> = clean(n).chars().filter(|c| !c.is_whitespace()).collect();
    let size = if chars.len() <= 9 { 3 } else { 4 };
    chars
        .chunks(size)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Control characters (line breaks included) as spaces, for single-line fields.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

// =================================================================================================
// Line breaking
// =================================================================================================

/// Whether a line may break between `prev` and `next`: after spaces, around CJK characters
/// (except before closing brackets, small kana and the like, or after opening brackets), after
/// `-` and `/` in Latin text.
fn can_break(prev: char, next: char) -> bool {
    const NO_START: &str = "、。，．,.・：；:;？！?!゛゜ヽヾゝゞ々〻ー‐゠–〜～’”）〕］｝〉》」』】〙〗〟)]}％%‰℃°′″ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ";
    const NO_END: &str = "‘“（〔［｛〈《「『【〘〖〝([{¥$£＄￥＃#";
    if prev.is_whitespace() {
        return true;
    }
    if next.is_whitespace() || NO_START.contains(next) || NO_END.contains(prev) {
        return false;
    }
    is_wide(prev) || is_wide(next) || matches!(prev, '-' | '/')
}

fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD)
}

// =================================================================================================
// The display list
// =================================================================================================

#[derive(Debug, Clone)]
enum Op {
    Text {
        x: f32,
        /// Baseline.
        y: f32,
        size: f32,
        weight: Weight,
        gray: u8,
        text: String,
    },
    Line {
        x1: f32,
        y1: f32,
        x2: f32,
        y2: f32,
        width: f32,
        gray: u8,
    },
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        stroke: Option<f32>,
        fill: Option<u8>,
    },
    Ellipse {
        cx: f32,
        cy: f32,
        rx: f32,
        ry: f32,
        width: f32,
    },
    Qr {
        x: f32,
        y: f32,
        module: f32,
        symbol: QrMatrix,
    },
}

impl Op {
    fn shifted(&self, dx: f32, dy: f32) -> Op {
        let mut op = self.clone();
        match &mut op {
            Op::Text { x, y, .. } | Op::Rect { x, y, .. } | Op::Qr { x, y, .. } => {
                *x += dx;
                *y += dy;
            }
            Op::Line { x1, y1, x2, y2, .. } => {
                *x1 += dx;
                *x2 += dx;
                *y1 += dy;
                *y2 += dy;
            }
            Op::Ellipse { cx, cy, .. } => {
                *cx += dx;
                *cy += dy;
            }
        }
        op
    }
}

/// The ops of one page (or of a flow item), with the fonts to measure text.
struct Sheet<'f> {
    fonts: &'f Fonts,
    ops: Vec<Op>,
}

impl<'f> Sheet<'f> {
    fn new(fonts: &'f Fonts) -> Self {
        Sheet {
            fonts,
            ops: Vec::new(),
        }
    }

    fn place(&mut self, ops: &[Op], dx: f32, dy: f32) {
        self.ops.extend(ops.iter().map(|op| op.shifted(dx, dy)));
    }

    /// Width in millimetres of one line of text.
    fn width(&self, text: &str, weight: Weight, size: f32) -> f32 {
        let ems: f32 = self
            .fonts
            .clusters(&clean(text), weight)
            .iter()
            .map(|c| c.advance)
            .sum();
        ems * em(size)
    }

    /// The largest size from `size` down to `min` at which `text` fits `max_w` on one line.
    fn fit_size(&self, text: &str, weight: Weight, size: f32, min: f32, max_w: f32) -> f32 {
        let w = self.width(text, weight, size);
        if w <= max_w || w <= 0.0 {
            size
        } else {
            (size * max_w / w).max(min)
        }
    }

    /// Text with the top of its em box at `top`; returns its width.
    fn text(&mut self, x: f32, top: f32, size: f32, weight: Weight, text: &str) -> f32 {
        self.text_gray(x, top, size, weight, 0, text)
    }

    fn text_gray(
        &mut self,
        x: f32,
        top: f32,
        size: f32,
        weight: Weight,
        gray: u8,
        text: &str,
    ) -> f32 {
        let text = clean(text);
        let w = self.width(&text, weight, size);
        if !text.trim().is_empty() {
            self.ops.push(Op::Text {
                x,
                y: top + ASCENT * em(size),
                size,
                weight,
                gray,
                text,
            });
        }
        w
    }

    fn text_right(&mut self, right: f32, top: f32, size: f32, weight: Weight, text: &str) {
        let w = self.width(text, weight, size);
        self.text(right - w, top, size, weight, text);
    }

    fn text_center(&mut self, cx: f32, top: f32, size: f32, weight: Weight, text: &str) {
        let w = self.width(text, weight, size);
        self.text(cx - w / 2.0, top, size, weight, text);
    }

    /// Centred, shrunk to fit `max_w`.
    fn text_fit_center(
        &mut self,
        cx: f32,
        top: f32,
        max_w: f32,
        size: f32,
        weight: Weight,
        text: &str,
    ) {
        let fit = self.fit_size(text, weight, size, size * 0.5, max_w);
        self.text_center(cx, top + (em(size) - em(fit)) / 2.0, fit, weight, text);
    }

    /// Right-aligned, shrunk to fit `max_w`.
    fn text_fit_right(
        &mut self,
        right: f32,
        top: f32,
        max_w: f32,
        size: f32,
        weight: Weight,
        text: &str,
    ) {
        let fit = self.fit_size(text, weight, size, size * 0.5, max_w);
        self.text_right(right, top + (em(size) - em(fit)) / 2.0, fit, weight, text);
    }

    /// One line vertically centred in a box, shrunk to fit its width; text too long even at
    /// 60 % of the size wraps inside the box instead.
    #[allow(clippy::too_many_arguments)]
    fn text_in(&mut self, x: f32, y: f32, w: f32, h: f32, size: f32, weight: Weight, text: &str) {
        let fit = self.fit_size(text, weight, size, size * 0.6, w);
        if self.width(text, weight, fit) <= w + 0.01 {
            self.text(x, y + (h - em(fit)) / 2.0, fit, weight, text);
        } else {
            self.text_block(x, y + 0.5, w, h - 1.0, size * 0.6, weight, text);
        }
    }

    /// Lines of `text` no wider than `max_w` (see [`can_break`]); `\n` starts a new line.
    fn wrap(&self, text: &str, weight: Weight, size: f32, max_w: f32) -> Vec<String> {
        let max_em = (max_w / em(size)).max(0.0);
        let mut out = Vec::new();
        for para in text.split('\n') {
            let para = clean(para);
            let cl = self.fonts.clusters(&para, weight);
            if cl.is_empty() {
                out.push(String::new());
                continue;
            }
            let (mut start, mut i, mut width) = (0usize, 0usize, 0.0f32);
            let mut brk: Option<usize> = None;
            while i < cl.len() {
                if i > start && can_break(cl[i - 1].ch, cl[i].ch) {
                    brk = Some(i);
                }
                if i > start && width + cl[i].advance > max_em {
                    let cut = brk.filter(|&b| b > start).unwrap_or(i);
                    out.push(
                        para[cl[start].start..cl[cut - 1].end]
                            .trim_end()
                            .to_string(),
                    );
                    start = cut;
                    while start < cl.len() && cl[start].ch.is_whitespace() {
                        start += 1;
                    }
                    i = start;
                    width = 0.0;
                    brk = None;
                    continue;
                }
                width += cl[i].advance;
                i += 1;
            }
            if start < cl.len() {
                out.push(para[cl[start].start..].trim_end().to_string());
            }
        }
        out
    }

    /// Wrapped text from `top`; returns the y below it.
    fn paragraph(
        &mut self,
        x: f32,
        top: f32,
        max_w: f32,
        size: f32,
        weight: Weight,
        text: &str,
    ) -> f32 {
        let mut y = top;
        for line in self.wrap(text, weight, size, max_w) {
            self.text(x, y, size, weight, &line);
            y += em(size) * 1.35;
        }
        y
    }

    /// The largest size (from `size` down to `min`) at which the wrapped text fits the box,
    /// and its lines.
    #[allow(clippy::too_many_arguments)]
    fn fit_lines(
        &self,
        text: &str,
        weight: Weight,
        size: f32,
        min: f32,
        max_w: f32,
        max_h: f32,
        lead: f32,
    ) -> (f32, Vec<String>) {
        let mut s = size;
        loop {
            let lines = self.wrap(text, weight, s, max_w);
            let h = lines.len() as f32 * em(s) * lead;
            if h <= max_h || s <= min {
                return (s, lines);
            }
            s = (s - 0.25).max(min);
        }
    }

    /// Wrapped text shrunk until it fits the box (never below 3 pt: beyond that it overflows
    /// rather than lose characters).
    #[allow(clippy::too_many_arguments)]
    fn text_block(
        &mut self,
        x: f32,
        top: f32,
        w: f32,
        h: f32,
        size: f32,
        weight: Weight,
        text: &str,
    ) {
        let (s, lines) = self.fit_lines(text, weight, size, 3.0_f32.min(size), w, h, 1.2);
        let total = lines.len() as f32 * em(s) * 1.2;
        // Vertically centred when there is room.
        let mut y = top + ((h - total) / 2.0).max(0.0) + em(s) * 0.1;
        for line in lines {
            self.text(x, y, s, weight, &line);
            y += em(s) * 1.2;
        }
    }

    /// Characters stacked vertically, centred in the box.
    fn vertical(&mut self, x: f32, y: f32, w: f32, h: f32, size: f32, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let step = em(size) * 1.6;
        let total = step * chars.len() as f32 - (step - em(size));
        let mut top = y + (h - total) / 2.0;
        for c in chars {
            self.text_center(x + w / 2.0, top, size, Regular, &c.to_string());
            top += step;
        }
    }

    /// A label cell: a box with small text, wrapped and shrunk to fit.
    fn label_box(&mut self, x: f32, y: f32, w: f32, h: f32, label: &str) {
        self.rect(x, y, w, h, 0.25);
        self.text_block(x + 0.8, y + 0.4, w - 1.6, h - 0.8, 6.0, Regular, label);
    }

    /// `n` digit boxes; `digits` right-aligned in them (a 6-digit 保険者番号 goes right).
    fn digit_boxes(&mut self, x: f32, y: f32, w: f32, h: f32, n: usize, digits: &str) {
        let chars: Vec<char> = digits.chars().collect();
        let n = n.max(chars.len());
        let size = (h * PT * 0.62).min(w * PT * 1.3).min(10.0);
        for i in 0..n {
            self.rect(x + w * i as f32, y, w, h, 0.25);
        }
        let offset = n - chars.len();
        for (i, c) in chars.iter().enumerate() {
            let cx = x + w * (offset + i) as f32 + w / 2.0;
            self.text_center(cx, y + (h - em(size)) / 2.0, size, Regular, &c.to_string());
        }
    }

    /// Options separated by ・, the chosen one circled.
    #[allow(clippy::too_many_arguments)]
    fn choice(&mut self, x: f32, y: f32, h: f32, size: f32, options: &[&str], chosen: usize) {
        let top = y + (h - em(size)) / 2.0;
        let mut cx = x;
        for (i, opt) in options.iter().enumerate() {
            if i > 0 {
                cx += self.text(cx, top, size, Regular, "・");
            }
            let w = self.text(cx, top, size, Regular, opt);
            if i == chosen {
                self.ops.push(Op::Ellipse {
                    cx: cx + w / 2.0,
                    cy: y + h / 2.0,
                    rx: w / 2.0 + em(size) * 0.35,
                    ry: em(size) * 0.75,
                    width: 0.3,
                });
            }
            cx += w;
        }
    }

    fn hline(&mut self, x1: f32, x2: f32, y: f32, width: f32) {
        self.line_gray(x1, y, x2, y, width, 0);
    }

    fn vline(&mut self, x: f32, y1: f32, y2: f32, width: f32) {
        self.line_gray(x, y1, x, y2, width, 0);
    }

    fn line_gray(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, width: f32, gray: u8) {
        self.ops.push(Op::Line {
            x1,
            y1,
            x2,
            y2,
            width,
            gray,
        });
    }

    fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, width: f32) {
        self.ops.push(Op::Rect {
            x,
            y,
            w,
            h,
            stroke: Some(width),
            fill: None,
        });
    }

    fn fill_rect(&mut self, x: f32, y: f32, w: f32, h: f32, gray: u8) {
        self.ops.push(Op::Rect {
            x,
            y,
            w,
            h,
            stroke: None,
            fill: Some(gray),
        });
    }

    /// A QR symbol with its 4-module quiet zone, top-left corner of the quiet zone at (x, y).
    fn qr(&mut self, x: f32, y: f32, module: f32, symbol: &QrMatrix) {
        self.ops.push(Op::Qr {
            x,
            y,
            module,
            symbol: symbol.clone(),
        });
    }
}

/// Module size: `target` mm for the whole symbol with its quiet zone, within `min`..=`max`.
fn qr_module(q: &QrMatrix, target: f32, min: f32, max: f32) -> f32 {
    (target / (q.width + 8) as f32).clamp(min, max)
}

/// Side of the symbol with its quiet zone.
fn qr_extent(q: &QrMatrix, module: f32) -> f32 {
    (q.width + 8) as f32 * module
}

/// One prescription in a cover letter.
#[derive(Debug, Clone)]
pub struct CoverLetterRow {
    pub exchange_number: String,
    pub patient_name: String,
    pub issued_on: Date,
    pub faxed_on: Option<Date>,
}

/// 処方箋原本送付状: the cover letter a clinic puts in the envelope with the paper originals of
/// prescriptions it FAXed to `pharmacy`, listing each (引換番号, patient, 交付年月日, FAX date) so
/// the pharmacy can compare them with the FAXes. A5 portrait, 18 rows a page, pages numbered.
pub fn render_cover_letter(
    clinic: &Facility,
    pharmacy: &Facility,
    today: Date,
    rows: &[CoverLetterRow],
    fonts: &Fonts,
) -> Result<Rendered, PdfError> {
    const L: f32 = 12.0;
    const R: f32 = PAGE_W - 12.0;
    const ROWS_PER_PAGE: usize = 18;
    let chunks: Vec<&[CoverLetterRow]> = if rows.is_empty() {
        vec![&[]]
    } else {
        rows.chunks(ROWS_PER_PAGE).collect()
    };
    let total = chunks.len();
    let mut pages = Vec::new();
    for (page_no, chunk) in chunks.iter().enumerate() {
        let mut s = Sheet::new(fonts);
        s.text_center(PAGE_W / 2.0, 10.0, 16.0, Bold, "処方箋原本送付状");
        s.text_right(R, 20.0, 8.5, Regular, &wareki(today));
        let mut y = 26.0;
        let to = format!("{}　御中", pharmacy.name);
        s.text(L, y, 11.0, Bold, &to);
        y += em(11.0) + 4.0;
        s.text_right(R, y, 9.0, Bold, &clinic.name);
        y += em(9.0) + 1.0;
        for line in [clinic.address.as_deref(), clinic.phone.as_deref()]
            .into_iter()
            .flatten()
        {
            s.text_right(R, y, 7.5, Regular, line);
            y += em(7.5) + 0.5;
        }
        y += 3.0;
        y = s.paragraph(
            L,
            y,
            R - L,
            8.0,
            Regular,
            "下記の処方箋は、電子処方箋の代替としてFAXで送付したものです。原本を送付しますので、FAXとの照合をお願いいたします。",
        );
        y += 2.0;
        s.text(L, y, 8.0, Regular, &format!("同封枚数　{}枚", rows.len()));
        y += em(8.0) + 3.0;
        // The table: No. / 引換番号 / 患者氏名 / 交付年月日 / FAX送信日.
        let cols = [L, L + 9.0, L + 30.0, L + 70.0, L + 97.0];
        let head = ["No.", "引換番号", "患者氏名", "交付年月日", "FAX送信日"];
        s.hline(L, R, y, 0.4);
        for (x, h) in cols.iter().zip(head) {
            s.text(*x + 1.0, y + 1.2, 7.5, Bold, h);
        }
        y += em(7.5) + 2.4;
        s.hline(L, R, y, 0.3);
        for (i, row) in chunk.iter().enumerate() {
            let n = page_no * ROWS_PER_PAGE + i + 1;
            let name_size = s.fit_size(
                &row.patient_name,
                Regular,
                8.0,
                5.0,
                cols[3] - cols[2] - 2.0,
            );
            let cells = [
                (n.to_string(), 8.0),
                (group_digits(&row.exchange_number), 8.0),
                (row.patient_name.clone(), name_size),
                (wareki(row.issued_on), 7.0),
                (row.faxed_on.map(wareki).unwrap_or_else(|| "-".into()), 7.0),
            ];
            for (x, (text, size)) in cols.iter().zip(cells) {
                s.text(*x + 1.0, y + 1.4, size, Regular, &text);
            }
            y += em(8.0) + 2.6;
            s.line_gray(L, y, R, y, 0.2, 150);
        }
        s.text_center(
            PAGE_W / 2.0,
            PAGE_H - 10.0,
            7.0,
            Regular,
            &format!("{}/{}", page_no + 1, total),
        );
        pages.push(s.ops);
    }
    write_pdf(pages, fonts, "処方箋原本送付状")
}

// =================================================================================================
// Drawing with krilla
// =================================================================================================

fn write_pdf(pages: Vec<Vec<Op>>, fonts: &Fonts, title: &str) -> Result<Rendered, PdfError> {
    let mut document = Document::new();
    document.set_metadata(
        Metadata::new()
            .title(title.to_string())
            .language("ja".to_string())
            .creator("relay".to_string()),
    );
    let settings = PageSettings::from_wh(PAGE_W * PT, PAGE_H * PT)
        .ok_or_else(|| PdfError::Write("invalid page size".into()))?;
    let mut missing = Vec::new();
    let count = pages.len();
    for ops in &pages {
        let mut page = document.start_page_with(settings.clone());
        let mut surface = page.surface();
        for op in ops {
            draw(&mut surface, op, fonts, &mut missing);
        }
        surface.finish();
        page.finish();
    }
    let pdf = document
        .finish()
        .map_err(|e| PdfError::Write(e.to_string()))?;
    Ok(Rendered {
        pdf,
        missing_glyphs: missing,
        pages: count,
    })
}

fn gray_fill(gray: u8) -> Fill {
    Fill {
        paint: luma::Color::new(gray).into(),
        opacity: NormalizedF32::ONE,
        rule: FillRule::NonZero,
    }
}

fn gray_stroke(gray: u8, width_mm: f32) -> Stroke {
    Stroke {
        paint: luma::Color::new(gray).into(),
        width: width_mm * PT,
        line_join: LineJoin::Miter,
        ..Stroke::default()
    }
}

fn draw(surface: &mut Surface, op: &Op, fonts: &Fonts, missing: &mut Vec<char>) {
    match op {
        Op::Text {
            x,
            y,
            size,
            weight,
            gray,
            text,
        } => draw_text(surface, fonts, *x, *y, *size, *weight, *gray, text, missing),
        Op::Line {
            x1,
            y1,
            x2,
            y2,
            width,
            gray,
        } => {
            let mut pb = PathBuilder::new();
            pb.move_to(x1 * PT, y1 * PT);
            pb.line_to(x2 * PT, y2 * PT);
            if let Some(path) = pb.finish() {
                surface.set_fill(None);
                surface.set_stroke(Some(gray_stroke(*gray, *width)));
                surface.draw_path(&path);
            }
        }
        Op::Rect {
            x,
            y,
            w,
            h,
            stroke,
            fill,
        } => {
            let Some(rect) = Rect::from_xywh(x * PT, y * PT, w * PT, h * PT) else {
                return;
            };
            let mut pb = PathBuilder::new();
            pb.push_rect(rect);
            if let Some(path) = pb.finish() {
                surface.set_fill(fill.map(gray_fill));
                surface.set_stroke(stroke.map(|w| gray_stroke(0, w)));
                surface.draw_path(&path);
            }
        }
        Op::Ellipse {
            cx,
            cy,
            rx,
            ry,
            width,
        } => {
            const K: f32 = 0.552_284_8;
            let (cx, cy, rx, ry) = (cx * PT, cy * PT, rx * PT, ry * PT);
            let mut pb = PathBuilder::new();
            pb.move_to(cx + rx, cy);
            pb.cubic_to(cx + rx, cy + K * ry, cx + K * rx, cy + ry, cx, cy + ry);
            pb.cubic_to(cx - K * rx, cy + ry, cx - rx, cy + K * ry, cx - rx, cy);
            pb.cubic_to(cx - rx, cy - K * ry, cx - K * rx, cy - ry, cx, cy - ry);
            pb.cubic_to(cx + K * rx, cy - ry, cx + rx, cy - K * ry, cx + rx, cy);
            pb.close();
            if let Some(path) = pb.finish() {
                surface.set_fill(None);
                surface.set_stroke(Some(gray_stroke(0, *width)));
                surface.draw_path(&path);
            }
        }
        Op::Qr {
            x,
            y,
            module,
            symbol,
        } => draw_qr(surface, *x, *y, *module, symbol),
    }
}

/// White quiet zone, then the dark modules as one path (runs of a row merged into one rectangle,
/// so renderers leave no seams between modules).
fn draw_qr(surface: &mut Surface, x: f32, y: f32, module: f32, q: &QrMatrix) {
    let n = q.width;
    if n == 0 {
        return;
    }
    let m = module * PT;
    let (x0, y0) = (x * PT, y * PT);
    let side = (n + 8) as f32 * m;
    surface.set_stroke(None);
    if let Some(rect) = Rect::from_xywh(x0, y0, side, side) {
        let mut pb = PathBuilder::new();
        pb.push_rect(rect);
        if let Some(path) = pb.finish() {
            surface.set_fill(Some(gray_fill(255)));
            surface.draw_path(&path);
        }
    }
    let dark = |cx: usize, cy: usize| q.dark.get(cy * n + cx).copied().unwrap_or(false);
    let mut pb = PathBuilder::new();
    for row in 0..n {
        let mut col = 0;
        while col < n {
            if !dark(col, row) {
                col += 1;
                continue;
            }
            let start = col;
            while col < n && dark(col, row) {
                col += 1;
            }
            if let Some(rect) = Rect::from_xywh(
                x0 + (start + 4) as f32 * m,
                y0 + (row + 4) as f32 * m,
                (col - start) as f32 * m,
                m,
            ) {
                pb.push_rect(rect);
            }
        }
    }
    if let Some(path) = pb.finish() {
        surface.set_fill(Some(gray_fill(0)));
        surface.draw_path(&path);
    }
}

/// One line of text, in runs of the face each character was found in; bold without a bold face
/// is simulated with a thin stroke. Characters no face has are drawn as `.notdef` (their text is
/// still in the PDF) and reported in `missing`.
#[allow(clippy::too_many_arguments)]
fn draw_text(
    surface: &mut Surface,
    fonts: &Fonts,
    x: f32,
    y: f32,
    size: f32,
    weight: Weight,
    gray: u8,
    text: &str,
    missing: &mut Vec<char>,
) {
    let clusters = fonts.clusters(text, weight);
    let mut pen = x * PT;
    let mut i = 0;
    while i < clusters.len() {
        let face = clusters[i].face;
        let j = i + clusters[i..].iter().take_while(|c| c.face == face).count();
        let run = &clusters[i..j];
        let base = run[0].start;
        let end = run[run.len() - 1].end;
        let glyphs: Vec<KrillaGlyph> = run
            .iter()
            .map(|c| {
                KrillaGlyph::new(
                    GlyphId::new(u32::from(c.glyph)),
                    c.advance,
                    0.0,
                    0.0,
                    0.0,
                    c.start - base..c.end - base,
                    None,
                )
            })
            .collect();
        for c in run.iter().filter(|c| c.missing) {
            if !missing.contains(&c.ch) {
                missing.push(c.ch);
            }
        }
        surface.set_fill(Some(gray_fill(gray)));
        surface.set_stroke(fonts.needs_faux_bold(weight, face).then(|| Stroke {
            line_join: LineJoin::Round,
            ..gray_stroke(gray, em(size) * 0.035)
        }));
        surface.draw_glyphs(
            Point::from_xy(pen, y * PT),
            &glyphs,
            fonts.font(face).clone(),
            &text[base..end],
            size,
            false,
        );
        pen += run.iter().map(|c| c.advance).sum::<f32>() * size;
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    use jiff::civil::date;

    use super::*;
    use crate::domain::facility::{Facility, FacilityDraft};
    use crate::domain::prescription::PrescriptionDraft;

    const IPAEX: &str = "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf";
    const COPY_PAYLOAD: &str = "01130012,123,4567,01,19800401,012345";

    fn noto() -> &'static Fonts {
        static FONTS: OnceLock<Fonts> = OnceLock::new();
        FONTS.get_or_init(|| Fonts::discover(None, 0).expect("Noto Sans CJK JP is installed"))
    }

    fn artifacts() -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifact directory");
        dir
    }

    fn institution(name: &str) -> Facility {
        let draft: FacilityDraft = serde_json::from_value(serde_json::json!({
            "code": "9918000010", "kind": "clinic", "name": name,
            "address": "東京都千代田区霞が関1-2-2 中央合同庁舎第5号館", "phone": "03-5253-1111",
            "email": "clinic@example.jp"
        }))
        .unwrap();
        draft.validate().expect("valid facility")
    }

    fn drug_name(rp: usize, k: usize) -> String {
        [
            "ユーロジン",
            "ロキソニン",
            "ムコスタ",
            "ガスター",
            "アムロジン",
        ][k % 5]
            .to_string()
            + &format!("第{}処方{}号錠", rp + 1, k + 1)
    }

    /// A prescription of `rps` RPs cycling through 内服, 頓服 and 外用.
    fn prescription(rps: usize, issue_type: &str) -> Prescription {
        let forms = ["oral", "as_needed", "external"];
        let rps: Vec<serde_json::Value> = (0..rps)
            .map(|i| {
                let drugs: Vec<serde_json::Value> = (0..1 + i % 2)
                    .map(|k| {
                        serde_json::json!({"code_system": "yj", "code": "1124001F1022",
                            "name": drug_name(i, k), "dose": 0.25 + k as f64, "unit": "錠",
                            "no_substitution": k == 1})
                    })
                    .collect();
                serde_json::json!({"dosage_form": forms[i % 3], "quantity": 14,
                    "usage": {"text": "1日3回毎食後", "times_per_day": 3}, "drugs": drugs})
            })
            .collect();
        let draft: PrescriptionDraft = serde_json::from_value(serde_json::json!({
            "issue_type": issue_type,
            "patient": {"name": "髙橋 𠮷子", "name_kana": "タカハシ ヨシコ", "sex": "female", "birth_date": "1980-04-01"},
            "insurance": {"insurer_number": "01130012", "symbol": "１２３", "number": "4567", "relationship": "insured", "branch": "01", "copay_rate": 30},
            "public_expenses": [{"payer_number": "12130001", "recipient_number": "1234566"}],
            "doctor": {"name": "山﨑 德", "name_kana": "ヤマザキ トク"},
            "department": "内科",
            "issued_on": "2026-11-20",
            "refill_count": 3,
            "remarks": "腎機能低下あり。\n粉砕可。",
            "rps": rps
        }))
        .unwrap();
        draft
            .validate(date(2026, 11, 20))
            .expect("valid prescription")
    }

    fn symbol(payload: &[u8]) -> QrMatrix {
        let code = qrcode::QrCode::new(payload).expect("fits a QR symbol");
        QrMatrix {
            width: code.width(),
            dark: code
                .to_colors()
                .into_iter()
                .map(|c| c == qrcode::Color::Dark)
                .collect(),
        }
    }

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Writes the PDF as an artifact and returns its path.
    fn save(name: &str, rendered: &Rendered) -> String {
        let path = artifacts().join(format!("{name}.pdf"));
        std::fs::write(&path, &rendered.pdf).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Renders page 1 as `<name>.png` (150 dpi) for looking at.
    fn png(pdf: &str, name: &str) {
        let prefix = artifacts().join(name);
        let prefix = prefix.to_string_lossy();
        run(
            "pdftoppm",
            &[
                "-r",
                "150",
                "-png",
                "-f",
                "1",
                "-l",
                "1",
                "-singlefile",
                pdf,
                &prefix,
            ],
        );
    }

    fn text(pdf: &str) -> String {
        run("pdftotext", &["-layout", pdf, "-"])
    }

    fn squash(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn pages(pdf: &str) -> usize {
        run("pdfinfo", &[pdf])
            .lines()
            .find_map(|l| l.strip_prefix("Pages:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("pdfinfo reports pages")
    }

    /// Renders page 1 at 300 dpi as `<name>-1.png` and decodes every QR symbol on it.
    fn decode_page_one(pdf: &str, name: &str) -> Vec<String> {
        let prefix = artifacts().join(name);
        let prefix = prefix.to_string_lossy();
        run(
            "pdftoppm",
            &[
                "-r",
                "300",
                "-png",
                "-f",
                "1",
                "-l",
                "1",
                "-singlefile",
                pdf,
                &prefix,
            ],
        );
        let png = format!("{prefix}.png");
        let out = Command::new("zbarimg")
            .args(["--raw", "-q", "-Sdisable", "-Sqrcode.enable", &png])
            .output()
            .expect("zbarimg runs");
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut found: Vec<String> = raw.lines().map(str::to_string).collect();
        found.retain(|l| !l.is_empty());
        found
    }

    #[test]
    fn both_pdfs_carry_names_drugs_dates_with_embedded_subset_fonts() {
        let facility = institution("医療法人社団　検証会　検証用病院");
        let p = prescription(3, "electronic");
        let doc = DocumentInput {
            institution: &facility,
            prescription: &p,
            exchange_number: Some("012345"),
        };
        let copy = render_copy(&doc, &symbol(COPY_PAYLOAD.as_bytes()), noto()).unwrap();
        let path = save("copy-3rp", &copy);
        png(&path, "copy-3rp");
        assert!(copy.missing_glyphs.is_empty(), "{:?}", copy.missing_glyphs);
        assert_eq!(copy.pages, 1);
        let t = text(&path);
        for want in [
            "処方内容（控え）",
            "これは処方箋ではありません",
            "012 345",
            "髙橋 𠮷子",
            "山﨑 德",
            "令和8年11月20日",
            "令和8年11月23日",
            "01130012",
            "123・4567",
            "14日分",
            "14回分",
            "1日3回毎食後",
            "リフィル可（総使用回数　3回）",
            "腎機能低下あり。",
        ] {
            // pdftotext lays ideographic spaces out as gaps: compare without white space.
            assert!(
                squash(&t).contains(&squash(want)),
                "控え lacks {want:?}:\n{t}"
            );
        }
        for (i, rp) in p.rps.iter().enumerate() {
            for (k, _) in rp.drugs.iter().enumerate() {
                assert!(t.contains(&drug_name(i, k)), "{}", drug_name(i, k));
            }
        }
        assert!(t.contains("髙橋 𠮷子"), "{t}");
        assert!(squash(&t).contains("医療法人社団検証会検証用病院"), "{t}");
        assert_fonts_embedded(&path);

        let paper_doc = DocumentInput {
            exchange_number: Some("012345"),
            ..doc
        };
        let jahis = symbol(b"JAHIS10 dummy symbol for the layout test");
        let paper = render_paper(&paper_doc, std::slice::from_ref(&jahis), noto()).unwrap();
        let path = save("paper-3rp", &paper);
        png(&path, "paper-3rp");
        assert!(
            paper.missing_glyphs.is_empty(),
            "{:?}",
            paper.missing_glyphs
        );
        assert_eq!(paper.pages, 1);
        let t = text(&path);
        let raw = squash(&run("pdftotext", &["-raw", &path, "-"]));
        for want in [
            "処　方　箋",
            "公費負担者番号",
            "保険者番号",
            "被保険者証・被保険者手帳",
            "髙橋 𠮷子",
            "山﨑 德",
            "昭和55年4月1日",
            "令和8年11月20日",
            "令和8年11月23日",
            "引換番号",
            "012 345",
            "123・4567",
            "保険医療機関の所在地及び名称",
            "保険医氏名",
            "調剤済年月日",
            "保険薬剤師氏名",
            "リフィル可",
            "以下余白",
        ] {
            // Labels wrap inside their boxes: compare in content order.
            assert!(raw.contains(&squash(want)), "処方箋 lacks {want:?}:\n{t}");
        }
        for (i, rp) in p.rps.iter().enumerate() {
            for (k, _) in rp.drugs.iter().enumerate() {
                assert!(t.contains(&drug_name(i, k)), "{}", drug_name(i, k));
            }
        }
        assert_fonts_embedded(&path);
    }

    fn assert_fonts_embedded(pdf: &str) {
        let out = run("pdffonts", &[pdf]);
        let fonts: Vec<&str> = out.lines().skip(2).collect();
        assert!(!fonts.is_empty(), "{out}");
        for line in fonts {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // name type encoding emb sub uni object ID: the last columns are fixed.
            let n = cols.len();
            assert!(n >= 7, "{line}");
            assert_eq!(
                (cols[n - 5], cols[n - 4], cols[n - 3]),
                ("yes", "yes", "yes"),
                "emb/sub/uni: {line}"
            );
        }
    }

    #[test]
    fn a_face_without_the_character_reports_it_and_the_fallback_draws_it() {
        let facility = institution("検証用病院");
        let p = prescription(1, "electronic");
        let doc = DocumentInput {
            institution: &facility,
            prescription: &p,
            exchange_number: Some("012345"),
        };
        let qr = symbol(COPY_PAYLOAD.as_bytes());
        let ipaex_only = Fonts::load(Path::new(IPAEX), 0).unwrap();
        let copy = render_copy(&doc, &qr, &ipaex_only).unwrap();
        assert_eq!(copy.missing_glyphs, vec!['𠮷']);
        let paper = render_paper(&doc, &[], &ipaex_only).unwrap();
        assert_eq!(paper.missing_glyphs, vec!['𠮷']);
        let path = save("copy-ipaex-only", &copy);
        png(&path, "copy-ipaex-only");
        assert!(text(&path).contains("髙橋"));

        // Configured IPAex: Noto (found by fontconfig) draws 𠮷.
        let with_fallback = Fonts::discover(Some(Path::new(IPAEX)), 0).unwrap();
        let copy = render_copy(&doc, &qr, &with_fallback).unwrap();
        assert!(copy.missing_glyphs.is_empty(), "{:?}", copy.missing_glyphs);
        let path = save("copy-ipaex-fallback", &copy);
        assert!(text(&path).contains("髙橋 𠮷子"));
        assert_fonts_embedded(&path);
    }

    #[test]
    fn the_qr_symbols_decode_from_a_300_dpi_rendering() {
        let facility = institution("検証用病院");
        let p = prescription(3, "paper_with_exchange_number");
        let doc = DocumentInput {
            institution: &facility,
            prescription: &p,
            exchange_number: Some("012345"),
        };
        let copy = render_copy(&doc, &symbol(COPY_PAYLOAD.as_bytes()), noto()).unwrap();
        let path = save("copy-qr", &copy);
        assert_eq!(decode_page_one(&path, "copy-qr-300dpi"), vec![COPY_PAYLOAD]);

        // One symbol about as large as a 3-RP JAHIS10 text (version 14).
        let payload: String = (0..40)
            .map(|i| format!("201,{i},1,1,4,1124001F1022,DRUG{i:02},1,1,T\n"))
            .collect::<String>()
            .chars()
            .take(600)
            .collect();
        let paper = render_paper(&doc, &[symbol(payload.as_bytes())], noto()).unwrap();
        let path = save("paper-qr", &paper);
        assert_eq!(
            decode_page_one(&path, "paper-qr-300dpi").join("\n"),
            payload.trim_end()
        );

        // Several symbols, in order.
        let parts: Vec<String> = (1..=3)
            .map(|i| format!("JAHIS part {i} of 3 ").repeat(8))
            .collect();
        let symbols: Vec<QrMatrix> = parts.iter().map(|s| symbol(s.as_bytes())).collect();
        let paper = render_paper(&doc, &symbols, noto()).unwrap();
        let path = save("paper-qr-3", &paper);
        let mut found = Vec::new();
        for page in 1..=paper.pages {
            let prefix = artifacts().join(format!("paper-qr-3-p{page}"));
            let prefix = prefix.to_string_lossy();
            let n = page.to_string();
            run(
                "pdftoppm",
                &[
                    "-r",
                    "300",
                    "-png",
                    "-f",
                    &n,
                    "-l",
                    &n,
                    "-singlefile",
                    &path,
                    &prefix,
                ],
            );
            let out = Command::new("zbarimg")
                .args(["--raw", "-q", &format!("{prefix}.png")])
                .output()
                .unwrap();
            found.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        found.sort();
        let mut want = parts.clone();
        want.sort();
        assert_eq!(found, want);
        let t = text(&path);
        for label in ["1/3", "2/3", "3/3"] {
            assert!(t.contains(label), "label {label}");
        }
    }

    #[test]
    fn long_prescriptions_continue_and_long_names_wrap() {
        let long_name: String = "医療法人社団長い名前の検証会"
            .repeat(5)
            .chars()
            .take(60)
            .collect();
        assert_eq!(long_name.chars().count(), 60);
        let facility = institution(&long_name);
        let p = prescription(40, "paper_with_exchange_number");
        let doc = DocumentInput {
            institution: &facility,
            prescription: &p,
            exchange_number: Some("987654"),
        };
        let copy = render_copy(&doc, &symbol(COPY_PAYLOAD.as_bytes()), noto()).unwrap();
        let path = save("copy-40rp", &copy);
        png(&path, "copy-40rp");
        assert!(copy.pages >= 2);
        assert_eq!(pages(&path), copy.pages);
        let t = text(&path);
        let flat = squash(&t);
        for (i, rp) in p.rps.iter().enumerate() {
            for (k, _) in rp.drugs.iter().enumerate() {
                assert!(t.contains(&drug_name(i, k)), "{}", drug_name(i, k));
            }
        }
        assert!(flat.contains(&long_name), "the name is complete");
        assert!(
            !t.lines().any(|l| l.contains(&long_name)),
            "the 60-character name wraps"
        );
        assert!(t.contains(&format!("1/{}", copy.pages)));
        assert!(t.contains(&format!("{}/{}", copy.pages, copy.pages)));
        assert!(t.contains("処方内容（控え）（続き）"));
        assert!(t.contains("987 654"));

        let jahis: Vec<QrMatrix> = (0..4)
            .map(|i| symbol(format!("JAHIS10 part {i} ").repeat(40).as_bytes()))
            .collect();
        let paper = render_paper(&doc, &jahis, noto()).unwrap();
        let path = save("paper-40rp", &paper);
        png(&path, "paper-40rp");
        assert!(paper.pages >= 2);
        assert_eq!(pages(&path), paper.pages);
        let t = text(&path);
        for (i, rp) in p.rps.iter().enumerate() {
            for (k, _) in rp.drugs.iter().enumerate() {
                assert!(t.contains(&drug_name(i, k)), "{}", drug_name(i, k));
            }
        }
        // The name is shrunk and wrapped inside its box; in content order it is complete.
        assert!(squash(&run("pdftotext", &["-raw", &path, "-"])).contains(&long_name));
        assert!(t.contains("（次頁に続く）"));
        assert_eq!(
            t.matches("調剤済年月日").count(),
            paper.pages,
            "the header boxes repeat on every page"
        );
    }

    #[test]
    fn odd_input_never_panics() {
        let facility = institution(&"長\u{7}い名前".repeat(40));
        let mut p = prescription(2, "electronic");
        p.patient.name = "葛\u{E0100}城 \u{E000}𠮷".repeat(12);
        p.remarks = Some("改行\n\n\t".to_string() + &"とても長い備考。".repeat(120));
        p.rps[0].drugs[0].name = "X".repeat(200);
        p.rps[1].usage.text = "ａ".repeat(200);
        p.public_expenses = vec![p.public_expenses[0].clone(); 3];
        let doc = DocumentInput {
            institution: &facility,
            prescription: &p,
            exchange_number: Some("1234567890123456"),
        };
        let degenerate = [
            QrMatrix {
                width: 0,
                dark: vec![],
            },
            QrMatrix {
                width: 21,
                dark: vec![true; 5],
            },
            symbol(&[b'7'; 2000]),
        ];
        for fonts in [noto(), &Fonts::load(Path::new(IPAEX), 0).unwrap()] {
            for qr in &degenerate {
                let copy = render_copy(&doc, qr, fonts).unwrap();
                assert!(copy.pages >= 1);
                assert!(copy.missing_glyphs.contains(&'\u{E000}'));
                let paper = render_paper(&doc, &degenerate, fonts).unwrap();
                assert!(paper.pages >= 1);
            }
        }
        let mut empty = p.clone();
        empty.rps.clear();
        empty.remarks = None;
        let doc = DocumentInput {
            institution: &facility,
            prescription: &empty,
            exchange_number: None,
        };
        let copy = render_copy(&doc, &degenerate[2], noto()).unwrap();
        png(&save("copy-odd", &copy), "copy-odd");
        assert!(copy.pages >= 1);
        let paper = render_paper(&doc, &[], noto()).unwrap();
        png(&save("paper-odd", &paper), "paper-odd");
        assert_eq!(paper.pages, 1);
    }

    #[test]
    fn dates_numbers_and_line_breaks() {
        assert_eq!(wareki(date(2026, 11, 20)), "令和8年11月20日");
        assert_eq!(wareki(date(2019, 5, 1)), "令和元年5月1日");
        assert_eq!(wareki(date(2019, 4, 30)), "平成31年4月30日");
        assert_eq!(wareki(date(1989, 1, 7)), "昭和64年1月7日");
        assert_eq!(wareki(date(1926, 12, 25)), "昭和元年12月25日");
        assert_eq!(wareki(date(1912, 7, 29)), "明治45年7月29日");
        assert_eq!(group_digits("012345"), "012 345");
        assert_eq!(group_digits("1234567890123456"), "1234 5678 9012 3456");
        let s = Sheet::new(noto());
        // 9.5 pt, 12 em wide: a line never starts with 「、」 or small kana.
        let lines = s.wrap(
            "ああああああああああああ、ょあああああ",
            Regular,
            9.5,
            em(9.5) * 12.0,
        );
        assert!(
            lines.iter().skip(1).all(|l| !l.starts_with('、')),
            "{lines:?}"
        );
        assert!(lines.concat().chars().count() == 19, "{lines:?}");
        // Latin words stay whole when they can.
        let lines = s.wrap("alpha beta gamma delta", Regular, 10.0, 25.0);
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{lines:?}");
        assert_eq!(lines.join(" "), "alpha beta gamma delta");
        assert!(lines.len() > 1);
        for w in [0.0, -5.0, 1.0] {
            let lines = s.wrap("髙橋𠮷子", Regular, 10.0, w);
            assert_eq!(lines.concat(), "髙橋𠮷子");
        }
    }
}
