//! `GET /consultation-room`: the consultation-room screen (診察室画面), one self-contained HTML file
//! (inline CSS and vanilla JS, no external resources) embedded in the binary. The page holds no
//! privileges of its own: it calls the public JSON API with the doctor's bearer token, like every
//! other client. Its Content-Security-Policy allows exactly the page's own inline script and style
//! (by SHA-256 hash) and connections back to this origin.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, get};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The page, as shipped in `relay/static/`.
pub const PAGE: &str = include_str!("../../static/consultation-room.html");

/// The text between the first `<{tag}>` (no attributes) and the following `</{tag}>`.
fn inline_block<'a>(html: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = html.find(&open)? + open.len();
    let len = html[start..].find(&close)?;
    Some(&html[start..start + len])
}

/// `'sha256-…'` of an inline block, as CSP wants it.
fn csp_hash(block: &str) -> String {
    let digest = Sha256::digest(block.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy: nothing but the page's own script and style, and fetches to this origin.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let script = inline_block(PAGE, "script").map_or_else(|| "'none'".to_string(), csp_hash);
    let style = inline_block(PAGE, "style").map_or_else(|| "'none'".to_string(), csp_hash);
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

/// The consultation-room screen: a doctor runs the duplicate/contraindication check of a draft,
/// records the patient's verbal consent, overrides with a reason and registers. Open it as
/// `/consultation-room#token=<JWT>` (the fragment never reaches the server) or paste the token.
#[get("/consultation-room")]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY.as_str(),
        ))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .body(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_exactly_one_inline_script_and_style_and_no_external_resource() {
        for tag in ["script", "style"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "<{tag}>");
            assert!(inline_block(PAGE, tag).is_some_and(|b| !b.trim().is_empty()));
        }
        assert!(
            !PAGE.contains(" style=\""),
            "inline style attributes are blocked by the CSP"
        );
        for external in ["http://", "https://", "//fonts.", "src=\""] {
            assert!(!PAGE.contains(external), "external resource {external}");
        }
    }

    #[test]
    fn the_policy_names_the_hashes_of_the_inline_blocks() {
        let csp = CONTENT_SECURITY_POLICY.as_str();
        assert!(csp.contains(&csp_hash(inline_block(PAGE, "script").unwrap())));
        assert!(csp.contains(&csp_hash(inline_block(PAGE, "style").unwrap())));
        assert!(!csp.contains("unsafe"));
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("connect-src 'self'"));
    }
}
