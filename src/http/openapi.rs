//! The OpenAPI 3.1 document of the REST routes (the hooks and held builds' links), generated
//! from their handlers, at `GET /api/openapi.json`.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::Http;
use super::decisions::{self, Decided, Decision};
use super::hooks::{self, HookDetail, HookSummary, Published, Subscription};
use super::rest::{ErrorBody, ErrorDetail};

pub fn router() -> Router<Http> {
    Router::new().route("/api/openapi.json", get(openapi))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "The OpenAPI document")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// The OpenAPI document of the REST hooks, as JSON text.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the generated document serializes")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald REST API", description = "Kudu's web hooks API over Herald's endpoints, and held builds' one-time approval links."),
    paths(hooks::subscribe, hooks::list, hooks::get_one, hooks::delete, hooks::publish, openapi, decisions::approve, decisions::reject),
    components(schemas(Subscription, HookSummary, HookDetail, Published, ErrorBody, ErrorDetail,
        Decision, Decided)),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_places_each_parameter() {
        let document: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let parameters = &document["paths"]["/api/hooks/publish/{type}"]["post"]["parameters"];
        assert_eq!(parameters[0]["in"], "path", "{parameters}");
        assert_eq!(parameters[1]["in"], "query", "{parameters}");
    }
}
