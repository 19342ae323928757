//! Signing in and out: the password form (rate limited, CSRF-checked) and the session cookie.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{Principal, SignInError};
use super::views::Nav;
use super::{ConsoleState, auth, html, refusal, views};

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

fn login_response(state: &ConsoleState, status: StatusCode, message: Option<&str>) -> Response {
    let token = auth::random_token();
    let body = if state.auth.has_passwords() {
        views::login(&token, message)
    } else {
        views::problem("Sign in through the single sign-on proxy in front of this console.", None)
    };
    let mut response = html(status, views::page("Sign in", None, Nav::None, None, body));
    if let Ok(v) =
        HeaderValue::from_str(&auth::set_cookie(auth::LOGIN_COOKIE, &token, state.console.secure_cookie, Some(1800)))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

pub(super) async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if state.auth.principal(&headers).is_some() {
        return Redirect::to("/overview").into_response();
    }
    login_response(&state, StatusCode::OK, None)
}

pub(super) async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = auth::cookie(&headers, auth::LOGIN_COOKIE).unwrap_or_default();
    if form.csrf.is_empty() || !auth::same(&form.csrf, expected) {
        return login_response(&state, StatusCode::FORBIDDEN, Some("The sign-in form expired; please try again."));
    }
    match state.auth.sign_in(form.name.trim(), &form.password).await {
        Ok(session) => {
            tracing::info!(user = %form.name.trim(), "console: signed in");
            let mut response = Redirect::to("/overview").into_response();
            let secure = state.console.secure_cookie;
            for cookie in [
                auth::set_cookie(auth::SESSION_COOKIE, &session, secure, None),
                auth::set_cookie(auth::LOGIN_COOKIE, "", secure, Some(0)),
            ] {
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            response
        }
        Err(SignInError::Refused) => {
            // The name typed is not logged: it may be a password typed in the wrong box.
            tracing::warn!("console: sign-in refused");
            login_response(&state, StatusCode::UNAUTHORIZED, Some("That user name and password were not accepted."))
        }
        Err(SignInError::RateLimited) => {
            tracing::warn!("console: sign-in rate limited");
            login_response(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many sign-in attempts; wait a minute and try again."),
            )
        }
        Err(SignInError::TooManySessions) => {
            login_response(&state, StatusCode::SERVICE_UNAVAILABLE, Some("Too many open sessions; try again later."))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    who: Principal,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !auth::same(&form.csrf, &who.csrf) {
        return refusal(StatusCode::FORBIDDEN, Some(&who), "This form was not sent by this console; nothing was done.");
    }
    if let Some(id) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        state.auth.sign_out(id);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(v) =
        HeaderValue::from_str(&auth::set_cookie(auth::SESSION_COOKIE, "", state.console.secure_cookie, Some(0)))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}
