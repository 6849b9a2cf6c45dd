//! Requests with a method their path does not take: 405 with `Allow` when the path is a documented
//! one (RFC 9110 §15.5.6), else 404. The OpenAPI document is the list of paths and methods, so
//! the two cannot drift apart.

use std::sync::LazyLock;

use actix_web::dev::ResourceDef;
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, guard, web};
use utoipa::OpenApi;

use super::error::ApiError;
use super::openapi::ApiDoc;

/// A documented path: its pattern (actix and OpenAPI share the `{id}` syntax) and its methods.
struct Documented {
    def: ResourceDef,
    literal: bool,
    methods: Vec<&'static str>,
}

static DOCUMENTED: LazyLock<Vec<Documented>> = LazyLock::new(|| {
    ApiDoc::openapi()
        .paths
        .paths
        .iter()
        .map(|(path, item)| Documented {
            def: ResourceDef::new(path.as_str()),
            literal: !path.contains('{'),
            methods: [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ]
            .into_iter()
            .filter_map(|(m, present)| present.then_some(m))
            .collect(),
        })
        .collect()
});

/// The methods `path` takes; a literal path (`/v1/prescriptions/receive`) names its resource
/// even where an `{id}` pattern also matches it.
fn allowed(path: &str) -> Vec<&'static str> {
    let matching: Vec<&Documented> = DOCUMENTED.iter().filter(|d| d.def.is_match(path)).collect();
    let literal: Vec<&Documented> = matching.iter().copied().filter(|d| d.literal).collect();
    let chosen = if literal.is_empty() {
        matching
    } else {
        literal
    };
    let mut methods: Vec<&'static str> = Vec::new();
    for m in chosen.into_iter().flat_map(|d| d.methods.iter().copied()) {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    methods
}

/// Registers, ahead of every route, the literal paths an `{id}` pattern would otherwise take with
/// another method (GET /v1/prescriptions/receive reaching GET /v1/prescriptions/{id}): any method
/// they do not take is 405 there.
pub fn shadowed_literals(cfg: &mut web::ServiceConfig) {
    for lit in DOCUMENTED.iter().filter(|d| d.literal) {
        let Some(path) = lit.def.pattern() else {
            continue;
        };
        let shadowed = DOCUMENTED
            .iter()
            .any(|d| !d.literal && d.def.is_match(path));
        if !shadowed {
            continue;
        }
        let methods = lit.methods.clone();
        cfg.service(
            web::resource(path)
                .guard(guard::fn_guard(move |ctx| {
                    !methods.contains(&ctx.head().method.as_str())
                }))
                .to(answer),
        );
    }
}

/// The default service: 405 on a documented path, else 404.
pub async fn answer(req: HttpRequest) -> HttpResponse {
    let path = req.path();
    let allowed = allowed(path);
    if allowed.is_empty() {
        return ApiError::not_found(
            "NOT_FOUND",
            format!("no route for {} {path}; see /docs", req.method()),
        )
        .error_response();
    }
    let allow = allowed.join(", ");
    let mut res = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{} is not allowed on {path}; use {allow}", req.method()),
    )
    .error_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        res.headers_mut().insert(ALLOW, v);
    }
    res
}
