//! The operator console: a web page for the person on call. Served by `run` on its own
//! listener (`IM1_CONSOLE_ADDR`; off when unset), never on the admin port and never with
//! the RP API's bearer tokens.
//!
//! - Server-rendered HTML ([`views`], maud); a few lines of vendored script refresh the
//!   overview in place; stylesheet and script are embedded in the binary. Every page reads
//!   with JavaScript off.
//! - Sign-in with a password ([`auth`], argon2) or a trusted SSO header; roles `viewer`
//!   and `operator`; session cookie `HttpOnly`, `SameSite=Strict`, `Secure` with TLS; a
//!   CSRF token in every form; sign-in attempts rate limited; a strict CSP.
//! - Every action calls the same store function as the CLI (`guard::release_as`,
//!   `guard::discard_as`, `canaries::add|remove`, `status::recheck`, `priority::request`)
//!   and writes an event naming the console user in the same transaction; a repeated
//!   submit changes nothing and writes nothing more.
//!
//! No page, log line or error carries a token, a ciphertext or a key: the console's
//! queries never select them, and errors are shown as fixed text.
//!
//! Layout: this file holds the shared state, the router, the overview and serving; each
//! other screen's handlers have a file (`signin`, `held`, `credential`, `canaries`,
//! `events`), and each screen's markup a file of the same name under [`views`].

pub mod auth;
pub mod chart;
pub mod views;

mod canaries;
mod credential;
mod events;
mod held;
mod signin;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use sqlx::PgPool;

use self::auth::{Auth, Principal};
use self::views::Nav;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::config::console::ConsoleSettings;
use crate::policy::Rules;
use crate::store;

use self::canaries::{canaries, canary_add, canary_remove};
use self::credential::{check_now, credential, recheck};
use self::events::events;
use self::held::{held, held_confirm, held_discard, held_release};
use self::signin::{login, login_page, logout};

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    pub pool: PgPool,
    /// The process's settings (for `status`'s view of the suppliers and the schedule).
    pub settings: Arc<Settings>,
    pub console: Arc<ConsoleSettings>,
    pub auth: Arc<Auth>,
    pub clock: SharedClock,
    pub rules: Rules,
    /// The overview's live section as last rendered, and when: however many overviews are
    /// open, the database is read for it at most once a second.
    live: Arc<tokio::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

impl ConsoleState {
    pub fn new(pool: PgPool, settings: &Settings, console: ConsoleSettings, clock: SharedClock) -> ConsoleState {
        let mut settings = settings.clone();
        // The console reads no token: it has no use for the keys.
        settings.keys = None;
        ConsoleState {
            pool,
            rules: crate::sweep::rules(&settings),
            settings: Arc::new(settings),
            auth: Arc::new(Auth::new(&console)),
            console: Arc::new(console),
            clock,
            live: Default::default(),
        }
    }
}

/// The strict policy: only this origin's stylesheet and script, no inline script or
/// style, no framing, forms only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/overview") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/overview", get(overview))
        .route("/overview/live", get(overview_live))
        .route("/held", get(held))
        .route("/held/confirm", get(held_confirm))
        .route("/held/release", post(held_release))
        .route("/held/discard", post(held_discard))
        .route("/credentials", get(credential))
        .route("/credentials/check", post(check_now))
        .route("/credentials/recheck", post(recheck))
        .route("/canaries", get(canaries))
        .route("/canaries/add", post(canary_add))
        .route("/canaries/remove", post(canary_remove))
        .route("/events", get(events))
        .route("/assets/console.css", get(|| async { asset("text/css; charset=utf-8", views::CSS) }))
        .route("/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", views::JS) }))
        .fallback(not_found)
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

pub(super) fn html(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

pub(super) fn screen(state: &ConsoleState, title: &str, who: &Principal, nav: Nav, body: Markup) -> Response {
    let _ = state;
    html(StatusCode::OK, views::page(title, Some(who), nav, None, body))
}

pub(super) fn refusal(status: StatusCode, who: Option<&Principal>, text: &str) -> Response {
    html(status, views::page("Refused", who, Nav::None, None, views::problem(text, Some("/overview"))))
}

/// A database failure: logged with its cause (never a token: the console reads none),
/// shown as fixed text.
pub(super) fn db_error(who: &Principal, e: sqlx::Error) -> Response {
    tracing::warn!(error = %e, "console: database error");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        views::page(
            "Database error",
            Some(who),
            Nav::None,
            None,
            views::problem("The database did not answer; try again.", None),
        ),
    )
}

async fn not_found(headers: HeaderMap, State(state): State<ConsoleState>) -> Response {
    let who = state.auth.principal(&headers);
    html(StatusCode::NOT_FOUND, views::page("Not found", who.as_ref(), Nav::None, None, views::not_found()))
}

impl FromRequestParts<ConsoleState> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        state.auth.principal(&parts.headers).ok_or_else(|| Redirect::to("/login").into_response())
    }
}

/// A form's CSRF token must be the principal's, then the principal must be an operator:
/// the refusal page when either is not so.
pub(super) fn refuse(who: &Principal, csrf: &str) -> Option<Response> {
    if let Some(forged) = refuse_forged(who, csrf) {
        return Some(forged);
    }
    if !who.may_act() {
        tracing::warn!(user = %who.name, "console: action refused: viewer role");
        return Some(refusal(
            StatusCode::FORBIDDEN,
            Some(who),
            "Your role (viewer) may read but not act; nothing was done.",
        ));
    }
    None
}

/// The refusal for a form this console did not send (missing or wrong CSRF token), for
/// any role. The one form a viewer may send ("check now") is checked with this alone.
pub(super) fn refuse_forged(who: &Principal, csrf: &str) -> Option<Response> {
    if csrf.is_empty() || !auth::same(csrf, &who.csrf) {
        tracing::warn!(user = %who.name, "console: form refused: missing or wrong CSRF token");
        return Some(refusal(
            StatusCode::FORBIDDEN,
            Some(who),
            "This form was not sent by this console (missing or wrong CSRF token); nothing was done.",
        ));
    }
    None
}

// ---- overview ----

async fn read_overview(state: &ConsoleState) -> Result<views::Overview, sqlx::Error> {
    let report = crate::safety::report::read(&state.pool, &state.settings).await?;
    let now = state.clock.now();
    let minutes = store::console::minutes(&state.pool, now - chrono::TimeDelta::minutes(60)).await?;
    let canaries = store::canaries::list(&state.pool, None).await?;
    let (next_sweep, schedule) = match &state.settings.schedule {
        crate::config::Schedule::Off => (None, "IM1_SCHEDULE=off".to_owned()),
        s @ crate::config::Schedule::Cron { expression, .. } => {
            (s.next_after(now, state.settings.timezone), format!("{expression} {}", state.settings.timezone))
        }
    };
    Ok(views::Overview { report, minutes, canaries, next_sweep, schedule, now })
}

/// How long a rendered live section is served again before the database is read anew.
const LIVE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// The live section's HTML, from the cache when it is fresh. The lock is held while
/// reading, so concurrent refreshes wait for one read instead of each making their own.
async fn live_html(state: &ConsoleState) -> Result<String, sqlx::Error> {
    let mut cache = state.live.lock().await;
    if let Some((at, html)) = cache.as_ref()
        && at.elapsed() < LIVE_FOR
    {
        return Ok(html.clone());
    }
    let html = views::overview_live(&read_overview(state).await?).into_string();
    *cache = Some((std::time::Instant::now(), html.clone()));
    Ok(html)
}

async fn overview(State(state): State<ConsoleState>, who: Principal) -> Response {
    match live_html(&state).await {
        Ok(live) => {
            let secs = state.console.refresh.as_secs().max(1);
            html(
                StatusCode::OK,
                views::page("Overview", Some(&who), Nav::Overview, Some(secs), views::overview(&live, secs)),
            )
        }
        Err(e) => db_error(&who, e),
    }
}

/// The overview's live section alone, for the in-place refresh. 401 (not a redirect)
/// when signed out, so the script can send the browser to the sign-in page.
async fn overview_live(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let Some(who) = state.auth.principal(&headers) else {
        return (StatusCode::UNAUTHORIZED, "signed out").into_response();
    };
    match live_html(&state).await {
        Ok(live) => (StatusCode::OK, Html(live)).into_response(),
        Err(e) => db_error(&who, e),
    }
}

#[derive(Deserialize)]
pub(super) struct UserForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) user: String,
    #[serde(default)]
    pub(super) note: String,
}

// ---- serving ----

/// Binds `IM1_CONSOLE_ADDR` (and loads its TLS files), so `run` fails at start-up, not
/// later, when either is unusable.
pub async fn bind(console: &ConsoleSettings) -> anyhow::Result<Listener> {
    use anyhow::Context;
    let tcp = tokio::net::TcpListener::bind(console.addr)
        .await
        .with_context(|| format!("cannot listen on IM1_CONSOLE_ADDR {}", console.addr))?;
    let tls = match &console.tls {
        Some((cert, key)) => Some(
            crate::tls::server_config_from_files(cert, key, None)
                .map_err(|e| anyhow::anyhow!("IM1_CONSOLE_TLS_CERT/IM1_CONSOLE_TLS_KEY: {e}"))?,
        ),
        None => None,
    };
    Ok(Listener { tcp, tls })
}

/// Reads and checks the console's TLS certificate and key, if any (`check-config`).
pub fn check_tls(console: &ConsoleSettings) -> Result<(), String> {
    match &console.tls {
        Some((cert, key)) => crate::tls::server_config_from_files(cert, key, None)
            .map(|_| ())
            .map_err(|e| format!("IM1_CONSOLE_TLS_CERT/IM1_CONSOLE_TLS_KEY: {e}")),
        None => Ok(()),
    }
}

pub struct Listener {
    tcp: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serves the console until `shutdown`.
pub async fn serve(
    listener: Listener,
    state: ConsoleState,
    mut shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let router = router(state);
    match listener.tls {
        Some(config) => {
            crate::tls::serve_router_tls(listener.tcp, config, router, async move { shutdown.wait().await }).await
        }
        None => axum::serve(listener.tcp, router).with_graceful_shutdown(async move { shutdown.wait().await }).await,
    }
}

/// `run`'s hook: binds and serves the console when `IM1_CONSOLE_ADDR` is set (else
/// `None`). A listener that cannot be bound stops `run` at start-up.
pub async fn spawn(
    settings: &Settings,
    pool: &PgPool,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(console) = settings.console.clone() else { return Ok(None) };
    let listener = bind(&console).await?;
    tracing::info!(addr = %console.addr, tls = console.tls.is_some(), "operator console listening");
    let state = ConsoleState::new(pool.clone(), settings, console, crate::clock::system());
    Ok(Some(tokio::spawn(serve(listener, state, shutdown))))
}
