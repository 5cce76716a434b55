//! What the REST routes share: their JSON errors, and JSON bodies read within the size limit.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;

/// An error: its code and one sentence.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub(super) error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `BAD_USER_INPUT`, `UNAUTHENTICATED`, `FORBIDDEN`, `NOT_FOUND`, `CONFLICT`,
    /// `PAYLOAD_TOO_LARGE` or `INTERNAL`.
    code: String,
    message: String,
}

/// A REST error response.
pub(super) struct Failure(StatusCode, &'static str, String);

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let status =
            StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match err {
            Error::Unconfirmed | Error::Unavailable => "UNAVAILABLE",
            ref other => other.code(),
        };
        Failure(status, code, err.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, code, message) = self;
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// A JSON body, or the error a REST client expects: 413 past the size limit, 400 otherwise.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<T, Failure> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Failure(
                status,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "The request body is larger than the {} KiB a request may carry.",
                    super::MAX_REQUEST_BYTES / 1024
                ),
            );
        }
        Failure(
            status,
            "BAD_USER_INPUT",
            "The request body could not be read in full.".to_owned(),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|err| {
        Failure(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            format!("The request body is not the JSON expected: {err}."),
        )
    })
}
