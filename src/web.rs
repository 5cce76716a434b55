//! The web console: the static files of `web/`, embedded in the binary so that a copied
//! binary serves its console without the source tree. It talks only to `/graphql`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Scripts, styles and requests stay on this origin; the token lives in sessionStorage, so no
/// inline script and no third-party code may run beside it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../web/", $name)),
        }
    };
}

/// Every file of `web/`; `index.html` is served at `/`, the others under `/assets/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("ui.js", "text/javascript; charset=utf-8"),
    asset!("endpoints.js", "text/javascript; charset=utf-8"),
    asset!("editor.js", "text/javascript; charset=utf-8"),
    asset!("deliveries.js", "text/javascript; charset=utf-8"),
    asset!("builds.js", "text/javascript; charset=utf-8"),
];

/// The console's routes: `/` and `/assets/{file}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { serve("index.html") }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>| async move { serve(&file) }),
        )
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

fn serve(name: &str) -> Response {
    let Some(asset) = find(name) else {
        return (StatusCode::NOT_FOUND, "There is no such file.").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The files change with the binary; revalidating is cheap and never serves a stale mix.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str) -> &'static str {
        std::str::from_utf8(find(name).unwrap().body).unwrap()
    }

    #[test]
    fn every_asset_the_page_and_its_modules_reference_is_embedded() {
        let mut sources = vec![text("index.html")];
        sources.extend(
            ASSETS
                .iter()
                .filter(|asset| asset.name.ends_with(".js"))
                .map(|asset| text(asset.name)),
        );
        for source in sources {
            for reference in source
                .split(['"', '\''])
                .filter_map(|part| {
                    part.strip_prefix("/assets/")
                        .or_else(|| part.strip_prefix("./"))
                })
                .filter(|name| {
                    name.ends_with(".js") || name.ends_with(".css") || name.ends_with(".svg")
                })
            {
                assert!(find(reference).is_some(), "{reference} is not embedded");
            }
        }
    }

    #[test]
    fn every_file_in_web_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(find(&name).is_some(), "web/{name} is not in ASSETS");
        }
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("index.html").status(), StatusCode::OK);
    }
}
