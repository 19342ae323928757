//! The RP HTTP API on the admin port: read a user's status row, write a new token, ask
//! for a check now, report a refresh that gave nothing usable, and erase a user.
//!
//! - Every `/v1/credentials…` route needs `Authorization: Bearer <token>` matching one of
//!   `IM1_API_TOKENS`, compared in constant time (both sides hashed to a fixed length, every
//!   configured token compared, no early exit). Missing and wrong tokens get the same 401.
//!   With no tokens configured those routes answer 404: the API is off.
//! - `GET /v1/openapi.json` (no auth) serves `docs/openapi.json`; [`ROUTES`] lists every
//!   path and method the router serves, and a test holds the document to it.
//! - Errors share one shape, `{"error": {"code", "message"}}`; messages are ours, never an
//!   internal error's text (that is logged). A PUT with bad fields adds
//!   `"errors": [{"field", "message"}]`, one entry per bad field, naming fields, never values.
//! - A PUT goes through [`ImportTx`], the path `credentials import` takes, so replacement,
//!   same-token and refresh-attempt rules, events and notifications are the same.
//! - A check of a Microtest credential is 409 `not_checkable`: the user exists, but no GP
//!   system API can check it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::AdminState;
use crate::store::import::ImportTx;
use crate::store::{credentials, priority, status};
use crate::token::{self, FieldError};

/// One credential: `GET`, `PUT`, `DELETE`.
pub const CREDENTIAL: &str = "/v1/credentials/{user_id}";
/// Ask for a check now: `POST`.
pub const CHECK: &str = "/v1/credentials/{user_id}/check";
/// Report a refresh that gave nothing usable: `POST`.
pub const REFRESH_OUTCOME: &str = "/v1/credentials/{user_id}/refresh-outcome";
/// The OpenAPI document: `GET`, no auth.
pub const OPENAPI: &str = "/v1/openapi.json";

/// Every API path (in OpenAPI's template syntax, which is also axum's) with its methods.
/// The router is built from these constants and the OpenAPI document is tested against
/// this list.
pub const ROUTES: &[(&str, &[&str])] =
    &[(CREDENTIAL, &["get", "put", "delete"]), (CHECK, &["post"]), (REFRESH_OUTCOME, &["post"]), (OPENAPI, &["get"])];

/// The OpenAPI 3.1 document (`docs/openapi.json`).
pub const OPENAPI_DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Longest `?wait=` honoured; longer waits are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting check request looks for its result.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What an RP may report about a refresh through NHS login that gave nothing usable.
pub const REFRESH_OUTCOMES: &[&str] = &["no_credentials", "dummy_credentials", "failed"];

/// The API's routes, to be merged into the admin router.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route(CREDENTIAL, get(get_credential).put(put_credential).delete(delete_credential))
        .route(CHECK, post(check))
        .route(REFRESH_OUTCOME, post(refresh_outcome))
        .route(OPENAPI, get(openapi))
        // Every answer keeps the one error shape, also for a method a route does not take.
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// An error answer: `{"error": {"code", "message"}}`, plus per-field errors for a 422.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), fields: Vec::new() }
    }

    pub(crate) fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }

    /// A request that ran out of time ([`super::server`]).
    pub(crate) fn timed_out() -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; try again")
    }

    fn unknown_user() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_user", "no credential is stored for this user")
    }

    fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    fn fields(fields: Vec<FieldError>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_fields",
            message: "the request body has invalid fields".to_owned(),
            fields,
        }
    }

    /// Logs the internal error and answers a bare 500.
    fn internal(what: &'static str, error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, what, "api: internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if !self.fields.is_empty() {
            body["errors"] = json!(self.fields);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A request that carried an accepted bearer token. Rejects with 404 when the API is off
/// (no tokens configured) and 401 otherwise.
pub struct Authorized;

impl FromRequestParts<AdminState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        if state.api_tokens.is_empty() {
            return Err(ApiError::not_found());
        }
        let presented = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
        match presented {
            Some(token) if token_accepted(token, &state.api_tokens) => Ok(Authorized),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented` is one of `accepted`, in time independent of where (or whether)
/// they differ: both sides are hashed to 32 bytes (so lengths never show), every byte of
/// every accepted token's digest is compared without an early exit, and every accepted
/// token is compared. (`ring::constant_time::verify_slices_are_equal` is deprecated in
/// ring 0.17 and returns early on a length mismatch, hence this fold.)
pub fn token_accepted(presented: &str, accepted: &[SecretString]) -> bool {
    let presented = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    let mut found = 0u8;
    for token in accepted {
        let candidate = ring::digest::digest(&ring::digest::SHA256, token.expose_secret().as_bytes());
        let differ = presented.as_ref().iter().zip(candidate.as_ref()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // 1 when equal, 0 otherwise, without a branch on the secret.
        found |= std::hint::black_box(u8::from(differ == 0));
    }
    found == 1
}

/// The path's user id, decoded but not yet checked (the PUT reports a bad one as a 422
/// field error, with the body's).
fn raw_user_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(user_id)| user_id).map_err(|_| bad_path())
}

/// The path's user id, checked as an import's is (1–128 printable characters: no NUL, no
/// control character) before it reaches SQL. PostgreSQL refuses a NUL in text, so an
/// unchecked one would be a 500; no stored row can have an id that fails this, so it is a
/// 400 rather than an unknown user.
fn user_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let user_id = raw_user_id(path)?;
    token::validate_user_id(&user_id).map_err(|_| bad_path())?;
    Ok(user_id)
}

fn bad_path() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_path",
        "the user id in the path is not valid: it must be 1 to 128 printable characters",
    )
}

fn json_body(body: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {} KiB", BODY_LIMIT / 1024),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be sent as Content-Type: application/json",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", "the request body is not valid JSON"),
    })
}

/// `GET /v1/credentials/{user_id}`: the status row.
async fn get_credential(
    _: Authorized,
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user_id = user_id(path)?;
    let row = status::row(&state.pool, &user_id).await.map_err(|e| ApiError::internal("reading a status row", e))?;
    match row {
        Some(row) => Ok(Json(row).into_response()),
        None => Err(ApiError::unknown_user()),
    }
}

/// `PUT /v1/credentials/{user_id}`: stores a token as a one-line import would.
async fn put_credential(
    _: Authorized,
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user_id = raw_user_id(path)?;
    let body = json_body(body)?;
    let credential = token::parse_put_body(&user_id, &body).map_err(ApiError::fields)?;
    let now = state.clock.now();
    let store = async {
        let mut tx = ImportTx::begin(&state.pool, &state.keys, now).await?;
        tx.add(vec![(1, credential)]).await?;
        tx.commit().await
    };
    let stats = store.await.map_err(|e| ApiError::internal("storing a token", e))?;
    let row = status::row(&state.pool, &user_id).await.map_err(|e| ApiError::internal("reading a status row", e))?;
    // Erased between the commit and this read: the write happened, the row is gone.
    let Some(row) = row else { return Err(ApiError::unknown_user()) };
    let status = if stats.new > 0 { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(row)).into_response())
}

/// `POST /v1/credentials/{user_id}/check[?wait=10s]`: a priority check, optionally
/// waiting (at most [`MAX_WAIT`]) for its result. Its span is linked from the check's span,
/// whichever process makes the check.
#[tracing::instrument(name = "api.check", skip_all, fields(otel.kind = "server", http.request.method = "POST", http.route = "/v1/credentials/{user_id}/check"))]
async fn check(
    _: Authorized,
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let user_id = user_id(path)?;
    let Query(query) =
        query.map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", "the query string is not valid"))?;
    let wait = match query.get("wait") {
        None => None,
        Some(text) => Some(
            crate::config::parse_duration(text)
                .map_err(|problem| ApiError::new(StatusCode::BAD_REQUEST, "bad_wait", format!("wait {problem}")))?
                .min(MAX_WAIT),
        ),
    };
    let trace_parent = crate::telemetry::current_traceparent();
    let queued = priority::request(&state.pool, &user_id, state.clock.now(), trace_parent.as_deref())
        .await
        .map_err(|e| ApiError::internal("requesting a priority check", e))?;
    if !queued {
        let row =
            status::row(&state.pool, &user_id).await.map_err(|e| ApiError::internal("reading a status row", e))?;
        return Err(match row {
            Some(_) => ApiError::new(
                StatusCode::CONFLICT,
                "not_checkable",
                "this credential's supplier offers no way to check it (Microtest)",
            ),
            None => ApiError::unknown_user(),
        });
    }
    let queued = || (StatusCode::ACCEPTED, Json(json!({"status": "queued"}))).into_response();
    let Some(wait) = wait.filter(|w| !w.is_zero()) else { return Ok(queued()) };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let pending = priority::pending(&state.pool, &user_id)
            .await
            .map_err(|e| ApiError::internal("reading a priority check", e))?;
        if !pending {
            let row =
                status::row(&state.pool, &user_id).await.map_err(|e| ApiError::internal("reading a status row", e))?;
            return match row {
                Some(row) => Ok(Json(row).into_response()),
                None => Err(ApiError::unknown_user()),
            };
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(queued());
        }
        tokio::time::sleep(POLL_EVERY.min(deadline - now)).await;
    }
}

/// `POST /v1/credentials/{user_id}/refresh-outcome` `{"outcome"}`: counts a refresh attempt.
async fn refresh_outcome(
    _: Authorized,
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user_id = user_id(path)?;
    let body = json_body(body)?;
    let outcome = parse_refresh_outcome(&body).map_err(ApiError::fields)?;
    let counted = credentials::refresh_outcome(&state.pool, &user_id, outcome, &state.rules, state.clock.now())
        .await
        .map_err(|e| ApiError::internal("counting a refresh outcome", e))?;
    match counted {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::unknown_user()),
    }
}

/// `{"outcome": one of REFRESH_OUTCOMES}` and nothing else.
fn parse_refresh_outcome(body: &Value) -> Result<&'static str, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = object
        .keys()
        .filter(|k| k.as_str() != "outcome")
        .map(|k| FieldError::new(token::printable_key(k), "is not a known field"))
        .collect();
    let must = || format!("must be one of {}", REFRESH_OUTCOMES.join(", "));
    let outcome = match object.get("outcome") {
        Some(Value::String(s)) => match REFRESH_OUTCOMES.iter().find(|o| **o == s.as_str()) {
            Some(o) => Some(*o),
            None => {
                errors.push(FieldError::new("outcome", must()));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("outcome", must()));
            None
        }
        None => {
            errors.push(FieldError::new("outcome", "is required"));
            None
        }
    };
    match outcome {
        Some(outcome) if errors.is_empty() => Ok(outcome),
        _ => Err(errors),
    }
}

/// `DELETE /v1/credentials/{user_id}`: erasure; 204 whether or not there was a row.
async fn delete_credential(
    _: Authorized,
    State(state): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user_id = user_id(path)?;
    credentials::erase(&state.pool, &user_id, state.clock.now())
        .await
        .map_err(|e| ApiError::internal("erasing a credential", e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_compared_whole() {
        let accepted = vec![SecretString::from("alpha-token"), SecretString::from("beta")];
        assert!(token_accepted("alpha-token", &accepted));
        assert!(token_accepted("beta", &accepted));
        assert!(!token_accepted("alpha", &accepted));
        assert!(!token_accepted("alpha-token-and-more", &accepted));
        assert!(!token_accepted("", &accepted));
        assert!(!token_accepted("beta", &[]));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn refresh_outcomes_are_checked_field_by_field() {
        assert_eq!(parse_refresh_outcome(&json!({"outcome": "failed"})), Ok("failed"));
        let errors = parse_refresh_outcome(&json!({"outcome": "nope", "extra": 1})).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "outcome"]);
        assert!(parse_refresh_outcome(&json!([])).is_err());
        assert!(parse_refresh_outcome(&json!({})).is_err());
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI_DOCUMENT).expect("docs/openapi.json parses");
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, Vec<String>)> = paths
            .iter()
            .map(|(path, item)| {
                let mut methods: Vec<String> = item
                    .as_object()
                    .expect("path item")
                    .keys()
                    .filter(|k| ["get", "put", "post", "delete", "patch", "head", "options"].contains(&k.as_str()))
                    .cloned()
                    .collect();
                methods.sort();
                (path.clone(), methods)
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, Vec<String>)> = ROUTES
            .iter()
            .map(|(path, methods)| {
                let mut methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
                methods.sort();
                (path.to_string(), methods)
            })
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
