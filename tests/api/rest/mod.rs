//! REST hooks as Kudu's clients use them: plain HTTP with JSON bodies, Bearer or Basic
//! authentication, Kudu's status codes; and the OpenAPI document of those routes.

mod hooks;
mod openapi;

use hooks::{
    hooks_are_subscribed_listed_read_and_deleted_as_kudu_documents,
    publishing_reaches_hooks_unchanged_and_last_fields_follow,
};

crate::on_both_backends!(
    hooks_are_subscribed_listed_read_and_deleted_as_kudu_documents,
    publishing_reaches_hooks_unchanged_and_last_fields_follow,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_names_the_routes_that_exist() {
    openapi::the_openapi_document_validates_and_names_the_routes_that_exist().await;
}
