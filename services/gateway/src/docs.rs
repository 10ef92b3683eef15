//! `GET /docs`: an interactive reference of `/openapi.json` — Swagger UI,
//! whose files `scripts/docs-assets` keeps in `docs/` from the npm package
//! swagger-ui-dist (pinned version and integrity) and which are embedded
//! here. The page loads nothing from another origin: its
//! Content-Security-Policy allows only the gateway's own scripts, styles
//! and requests.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

const VERSION: &str = include_str!("../docs/VERSION");
const BUNDLE: &[u8] = include_bytes!("../docs/swagger-ui-bundle.js");
const STYLE: &[u8] = include_bytes!("../docs/swagger-ui.css");
const ICON: &[u8] = include_bytes!("../docs/favicon-32x32.png");
const LICENSE: &[u8] = include_bytes!("../docs/LICENSE");

/// Starts Swagger UI on the document: a file of its own, as the policy
/// allows no inline script.
const INIT: &str = "window.addEventListener('load', function () {
  window.ui = SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    displayOperationId: true,
    docExpansion: 'list',
    validatorUrl: null,
  });
});
";

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the page and its files.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(index))
        .route("/docs/", get(index))
        .route(
            "/docs/init.js",
            get(|| async { asset("text/javascript", INIT.as_bytes()) }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript", BUNDLE) }),
        )
        .route("/docs/swagger-ui.css", get(|| async { asset("text/css", STYLE) }))
        .route("/docs/favicon-32x32.png", get(|| async { asset("image/png", ICON) }))
        .route(
            "/docs/LICENSE",
            get(|| async { asset("text/plain; charset=utf-8", LICENSE) }),
        )
}

async fn index() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page, written once: the version is in the files' addresses, so a
/// new Swagger UI is not hidden behind a cached old one.
fn page() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        let version = VERSION.trim();
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Capsule API</title>
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png?v={version}">
  <link rel="stylesheet" href="/docs/swagger-ui.css?v={version}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js?v={version}"></script>
  <script src="/docs/init.js?v={version}"></script>
</body>
</html>
"#
        )
    })
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    response
}
