//! The prescription as documents: SJ1 CSV, the 処方内容（控え） PDF and the paper prescription PDF.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, get, web};
use jiff::civil::Date;

use super::error::{ApiError, Problem};
use super::extract::Caller;
use super::prescriptions::visible_to;
use super::state::AppState;
use crate::db::{DbError, GenericClient, access_log, facilities};
use crate::documents::{QrMatrix, pdf, qr};
use crate::domain::access::ReadAction;
use crate::domain::document::DocumentInput;
use crate::domain::facility::Facility;
use crate::domain::lifecycle::IssueType;
use crate::domain::prescription::Prescription;
use crate::domain::{jahis, sj1};

/// The registered institution and prescription of `raw_id`, if the caller may see it.
async fn load(
    c: &impl GenericClient,
    caller: &Caller,
    raw_id: &str,
    document: &str,
) -> Result<(Facility, Prescription, String), ApiError> {
    let record = visible_to(c, caller, raw_id).await?;
    access_log::record_reads(
        c,
        &[record.id],
        caller.actor(),
        ReadAction::Document,
        &serde_json::json!({ "document": document }),
    )
    .await?;
    let code = crate::domain::identifiers::FacilityCode::parse(&record.issuer_code)
        .map_err(|_| ApiError::internal())?;
    let institution = facilities::get(c, &code)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok((institution, record.document, record.exchange_number))
}

/// `YYYYMMDD`, as the 控え's 2-D code carries the birth date.
fn compact(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), d.month(), d.day())
}

/// The 控え's 2-D code: `保険者番号,記号,番号,枝番,生年月日,引換番号` — no drug content.
pub fn copy_qr_payload(p: &Prescription, exchange_number: &str) -> String {
    let i = &p.insurance;
    format!(
        "{},{},{},{},{},{}",
        i.insurer_number,
        i.symbol,
        i.number,
        i.branch,
        compact(p.patient.birth_date),
        exchange_number
    )
}

/// Characters a document could not carry, as a response header value (percent-encoded UTF-8 so
/// the header stays ASCII), e.g. `%F0%A0%AE%B7` for 𠮷.
fn replaced_header(chars: &[char]) -> Option<HeaderValue> {
    if chars.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).ok()
}

fn pdf_response(rendered: pdf::Rendered, filename: &str) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_TYPE, "application/pdf"));
    res.insert_header((
        header::CONTENT_DISPOSITION,
        format!("inline; filename=\"{filename}\""),
    ));
    if let Some(v) = replaced_header(&rendered.missing_glyphs) {
        res.insert_header(("X-Missing-Glyphs", v));
    }
    res.body(rendered.pdf)
}

fn render_failed(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "document rendering failed");
    ApiError::internal()
}

/// The registered prescription as SJ1 CSV (UTF-8, LF, JAHIS record order).
#[utoipa::path(
    get, path = "/v1/prescriptions/{id}/sj1", tag = "documents",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "SJ1 CSV", content_type = "text/csv; charset=utf-8", body = String),
        (status = 403, body = Problem, description = "only the issuer and the holder"),
        (status = 404, body = Problem, description = "not found"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/prescriptions/{id}/sj1")]
pub async fn sj1_csv(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(DbError::from)?;
    let (institution, prescription, number) = load(&client, &caller, &id, "sj1").await?;
    let text = sj1::render(&DocumentInput {
        institution: &institution,
        prescription: &prescription,
        exchange_number: Some(&number),
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .body(text))
}

/// The patient's 処方内容（控え） as an A5 PDF with the 引換番号 and its 2-D code.
#[utoipa::path(
    get, path = "/v1/prescriptions/{id}/copy.pdf", tag = "documents",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "PDF; header X-Missing-Glyphs lists characters no installed font could draw", content_type = "application/pdf", body = Vec<u8>),
        (status = 403, body = Problem, description = "only the issuer and the holder"),
        (status = 404, body = Problem, description = "not found"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/prescriptions/{id}/copy.pdf")]
pub async fn copy_pdf(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(DbError::from)?;
    let (institution, prescription, number) = load(&client, &caller, &id, "copy.pdf").await?;
    drop(client);
    let fonts = state.fonts.clone();
    let rendered = web::block(move || {
        let symbol = qr::symbol(copy_qr_payload(&prescription, &number).as_bytes())
            .map_err(|e| e.to_string())?;
        pdf::render_copy(
            &DocumentInput {
                institution: &institution,
                prescription: &prescription,
                exchange_number: Some(&number),
            },
            &symbol,
            &fonts,
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(render_failed)?
    .map_err(render_failed)?;
    Ok(pdf_response(rendered, "hikae.pdf"))
}

/// The JAHIS 2-D symbols of a prescription and the characters Shift_JIS could not carry.
pub fn jahis_symbols(doc: &DocumentInput) -> Result<(Vec<QrMatrix>, Vec<char>), String> {
    let text = jahis::encode(&sj1::records(doc));
    let symbols = qr::jahis_symbols(&text.bytes).map_err(|e| e.to_string())?;
    Ok((symbols, text.replaced.iter().map(|r| r.original).collect()))
}

/// Renders the paper prescription with its JAHIS symbols; also the characters they replaced.
fn render_paper(
    institution: &Facility,
    prescription: &Prescription,
    exchange_number: Option<&str>,
    fonts: &crate::documents::fonts::Fonts,
) -> Result<(pdf::Rendered, Vec<char>), String> {
    let doc = DocumentInput {
        institution,
        prescription,
        exchange_number,
    };
    let (symbols, replaced) = jahis_symbols(&doc)?;
    let rendered = pdf::render_paper(&doc, &symbols, fonts).map_err(|e| e.to_string())?;
    Ok((rendered, replaced))
}

/// The paper prescription PDF's bytes (the FAX fallback's attachment). Blocking: call it from
/// `web::block`.
pub fn paper_pdf_bytes(
    institution: &Facility,
    prescription: &Prescription,
    exchange_number: Option<&str>,
    fonts: &crate::documents::fonts::Fonts,
) -> Result<Vec<u8>, String> {
    render_paper(institution, prescription, exchange_number, fonts).map(|(r, _)| r.pdf)
}

/// The paper prescription (様式第二号 layout) as an A5 PDF carrying the JAHIS 2-D code; the
/// document the paper and FAX fallbacks use.
#[utoipa::path(
    get, path = "/v1/prescriptions/{id}/paper.pdf", tag = "documents",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "PDF; header X-JAHIS-Replaced lists characters the Shift_JIS 2-D code replaced by ■", content_type = "application/pdf", body = Vec<u8>),
        (status = 403, body = Problem, description = "only the issuer and the holder"),
        (status = 404, body = Problem, description = "not found"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/prescriptions/{id}/paper.pdf")]
pub async fn paper_pdf(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await.map_err(DbError::from)?;
    let (institution, prescription, number) = load(&client, &caller, &id, "paper.pdf").await?;
    drop(client);
    let fonts = state.fonts.clone();
    let (rendered, replaced) = web::block(move || {
        // Only a 紙の処方箋（引換番号付き） carries its 引換番号 on paper.
        let with_number = prescription.issue_type == IssueType::PaperWithExchangeNumber;
        render_paper(
            &institution,
            &prescription,
            with_number.then_some(number.as_str()),
            &fonts,
        )
    })
    .await
    .map_err(render_failed)?
    .map_err(render_failed)?;
    let mut res = pdf_response(rendered, "shohousen.pdf");
    if let Some(v) = replaced_header(&replaced) {
        res.headers_mut()
            .insert(header::HeaderName::from_static("x-jahis-replaced"), v);
    }
    Ok(res)
}
