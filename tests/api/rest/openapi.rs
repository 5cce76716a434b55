//! The OpenAPI document of the REST hooks: valid OpenAPI 3.1 by a standard validator
//! (`openapi-spec-validator`, from PyPI), and every operation it names is a route that exists.

use serde_json::Value;

use crate::support::{Backend, TestApp};

pub(super) async fn the_openapi_document_validates_and_names_the_routes_that_exist() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let http = reqwest::Client::new();
    let response = http.get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    // Each operation answers from its handler (a JSON body), not the router's empty 404/405.
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = app.url(
                &path
                    .replace("{id}", "424242")
                    .replace("{type}", "deploy")
                    .replace("{token}", "unknown-token"),
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = http.request(method.clone(), url).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                serde_json::from_str::<Value>(&body).is_ok() && status != 405,
                "{method} {path} is not a route: {status} {body:?}"
            );
            operations += 1;
        }
    }
    assert_eq!(operations, 8);

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let validated = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output();
    match validated {
        Ok(output) if output.status.success() => {}
        Ok(output) if String::from_utf8_lossy(&output.stderr).contains("No module named") => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "openapi-spec-validator is not installed (pip install openapi-spec-validator)"
                );
            }
            eprintln!("skipped the validation: openapi-spec-validator is not installed");
        }
        Ok(output) => panic!(
            "the document is not valid OpenAPI: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => panic!("python3 could not be run: {err}"),
    }
}
