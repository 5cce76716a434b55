//! The web console and GraphiQL: the static files of `web/` and `web/graphiql/`, embedded in
//! the binary so that a copied binary serves both without the source tree or the internet.
//! They talk only to `/graphql`.

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

/// GraphiQL's page: the console's policy, with fonts from `data:` URLs (GraphiQL's stylesheet
/// carries its fonts inline). Scripts come only from this origin and none is inline; the
/// headers pane holds a token.
const GRAPHIQL_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; font-src data:; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        asset!("", $name, $content_type)
    };
    ($dir:literal, $name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../../web/", $dir, $name)),
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
    asset!("signing.js", "text/javascript; charset=utf-8"),
    asset!("headers.js", "text/javascript; charset=utf-8"),
    asset!("secrets.js", "text/javascript; charset=utf-8"),
    asset!("approvals.js", "text/javascript; charset=utf-8"),
    asset!("deliveries.js", "text/javascript; charset=utf-8"),
    asset!("builds.js", "text/javascript; charset=utf-8"),
];

/// Every file of `web/graphiql/` but its README: `index.html` is the page of `GET /graphql`,
/// the others are under `/graphiql/`. React 18 is GraphiQL 3's UMD build's peer.
const GRAPHIQL_ASSETS: &[Asset] = &[
    asset!("graphiql/", "index.html", "text/html; charset=utf-8"),
    asset!("graphiql/", "init.js", "text/javascript; charset=utf-8"),
    asset!("graphiql/", "page.css", "text/css; charset=utf-8"),
    asset!(
        "graphiql/",
        "graphiql.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("graphiql/", "graphiql.min.css", "text/css; charset=utf-8"),
    asset!(
        "graphiql/",
        "react.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "graphiql/",
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("graphiql/", "LICENSES.txt", "text/plain; charset=utf-8"),
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

/// GraphiQL's files at `/graphiql/{file}`; its page is served by `GET /graphql`
/// ([`graphiql_page`]), where GraphiQL may be turned off.
pub fn graphiql_assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/graphiql/{file}",
        get(|Path(file): Path<String>| async move {
            respond(
                find_in(GRAPHIQL_ASSETS, &file),
                GRAPHIQL_CONTENT_SECURITY_POLICY,
            )
        }),
    )
}

/// GraphiQL's page, with its Content-Security-Policy.
pub fn graphiql_page() -> Response {
    respond(
        find_in(GRAPHIQL_ASSETS, "index.html"),
        GRAPHIQL_CONTENT_SECURITY_POLICY,
    )
}

fn find(name: &str) -> Option<&'static Asset> {
    find_in(ASSETS, name)
}

fn find_in(assets: &'static [Asset], name: &str) -> Option<&'static Asset> {
    assets.iter().find(|asset| asset.name == name)
}

fn serve(name: &str) -> Response {
    respond(find(name), CONTENT_SECURITY_POLICY)
}

fn respond(asset: Option<&'static Asset>, policy: &'static str) -> Response {
    let Some(asset) = asset else {
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
        HeaderValue::from_static(policy),
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
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                assert_eq!(name, "graphiql", "web/{name}/ is not embedded");
                continue;
            }
            assert!(find(&name).is_some(), "web/{name} is not in ASSETS");
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/web/graphiql");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                name == "README.md" || find_in(GRAPHIQL_ASSETS, &name).is_some(),
                "web/graphiql/{name} is not in GRAPHIQL_ASSETS"
            );
        }
    }

    #[test]
    fn the_graphiql_page_loads_only_embedded_files() {
        let page =
            std::str::from_utf8(find_in(GRAPHIQL_ASSETS, "index.html").unwrap().body).unwrap();
        let mut loaded = 0;
        for part in page.split('"') {
            if let Some(name) = part.strip_prefix("/graphiql/") {
                assert!(find_in(GRAPHIQL_ASSETS, name).is_some(), "{name}");
                loaded += 1;
            }
        }
        assert_eq!(loaded, 6, "four scripts and two stylesheets");
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains("style="), "no inline style");
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("index.html").status(), StatusCode::OK);
    }
}
