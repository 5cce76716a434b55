//! GraphiQL: served from the binary under a strict Content-Security-Policy, and the schema
//! (introspection) only for token holders.

use serde_json::json;

use crate::support::{Backend, TestApp, World, code};

/// Hosts of the CDNs GraphiQL's own examples load from.
const CDNS: &[&str] = &[
    "unpkg.com",
    "jsdelivr.net",
    "cdnjs.cloudflare.com",
    "esm.sh",
    "googleapis.com",
    "gstatic.com",
];

/// Every value of `attribute="…"` in an HTML text.
fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let marker = format!("{attribute}=\"");
    html.match_indices(&marker)
        .filter_map(|(at, _)| html[at + marker.len()..].split('"').next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_from_the_binary_with_a_strict_content_security_policy() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let http = reqwest::Client::new();
    let page = http.get(app.url("/graphql")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(!policy.contains("http"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Headers"),
        "the page says where the token goes"
    );
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let mut sources = attribute_values(&html, "src");
    sources.extend(attribute_values(&html, "href"));
    let assets: Vec<&str> = sources
        .into_iter()
        .filter(|source| source.starts_with("/graphiql/"))
        .collect();
    assert_eq!(assets.len(), 6, "{assets:?}");
    for asset in assets {
        let response = http.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap(),
            policy,
            "{asset}"
        );
        let text = response.text().await.unwrap();
        for cdn in CDNS {
            assert!(!text.contains(cdn), "{asset} names {cdn}");
        }
        // Nothing loads a script or a style from elsewhere: no remote imports or url()s.
        for remote in [
            "@import",
            "url(http",
            "url(\"http",
            "url('http",
            "src=\"http",
        ] {
            assert!(!text.contains(remote), "{asset} has {remote}");
        }
    }
    let missing = http
        .get(app.url("/graphiql/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_a_token() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let world = World::new(&app, "acme").await;
    for query in [
        "{ __schema { types { name } } }",
        "{ __type(name: \"Build\") { fields { name } } }",
        "query { ...Schema } fragment Schema on Query { __schema { queryType { name } } }",
        "{ ... on Query { __type(name: \"Task\") { name } } }",
    ] {
        let anonymous = app.gql(None, query, json!({})).await;
        assert_eq!(
            code(&anonymous),
            "UNAUTHENTICATED",
            "{query}: {anonymous:#}"
        );
        assert!(anonymous["data"].is_null(), "{anonymous:#}");
        let message = anonymous["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("Authorization: Bearer"), "{message}");

        let read = app.gql(Some(&world.read), query, json!({})).await;
        assert!(read.get("errors").is_none(), "{query}: {read:#}");
    }
    // `__typename` is not the schema.
    let typename = app.gql(None, "{ __typename }", json!({})).await;
    assert_eq!(typename["data"]["__typename"], "Query", "{typename:#}");
}
