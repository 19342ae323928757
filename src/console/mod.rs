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

pub mod auth;
pub mod chart;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, middleware};
use maud::Markup;
use serde::Deserialize;
use sqlx::PgPool;

use self::auth::{Auth, Principal, SignInError};
use self::views::Nav;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::config::console::ConsoleSettings;
use crate::model::Supplier;
use crate::policy::Rules;
use crate::store;

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

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn screen(state: &ConsoleState, title: &str, who: &Principal, nav: Nav, body: Markup) -> Response {
    let _ = state;
    html(StatusCode::OK, views::page(title, Some(who), nav, None, body))
}

fn refusal(status: StatusCode, who: Option<&Principal>, text: &str) -> Response {
    html(status, views::page("Refused", who, Nav::None, None, views::problem(text, Some("/overview"))))
}

/// A database failure: logged with its cause (never a token: the console reads none),
/// shown as fixed text.
fn db_error(who: &Principal, e: sqlx::Error) -> Response {
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
fn refuse(who: &Principal, csrf: &str) -> Option<Response> {
    if csrf.is_empty() || !auth::same(csrf, &who.csrf) {
        tracing::warn!(user = %who.name, "console: form refused: missing or wrong CSRF token");
        return Some(refusal(
            StatusCode::FORBIDDEN,
            Some(who),
            "This form was not sent by this console (missing or wrong CSRF token); nothing was done.",
        ));
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

// ---- sign-in ----

#[derive(Deserialize)]
struct LoginForm {
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

async fn login_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if state.auth.principal(&headers).is_some() {
        return Redirect::to("/overview").into_response();
    }
    login_response(&state, StatusCode::OK, None)
}

async fn login(State(state): State<ConsoleState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
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
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
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

// ---- held verdicts ----

#[derive(Deserialize)]
struct HeldQuery {
    #[serde(default)]
    supplier: String,
}

/// A supplier whose guard can hold (not Microtest), from a form or query.
fn checkable(value: &str) -> Option<Supplier> {
    value.parse::<Supplier>().ok().filter(|s| *s != Supplier::Microtest)
}

fn ods(value: &str) -> Result<Option<&str>, ()> {
    let v = value.trim();
    if v.is_empty() {
        Ok(None)
    } else if crate::token::validate_ods_code(v).is_ok() {
        Ok(Some(v))
    } else {
        Err(())
    }
}

async fn held(State(state): State<ConsoleState>, who: Principal, Query(q): Query<HeldQuery>) -> Response {
    let only = checkable(&q.supplier);
    let read = async {
        let mut out = Vec::new();
        for st in store::guard::states(&state.pool).await? {
            let Some(supplier) = checkable(&st.supplier) else { continue };
            if only.is_some_and(|o| o != supplier) {
                continue;
            }
            let by_practice = store::guard::held_by_practice(&state.pool, supplier).await?;
            let first = store::guard::held(&state.pool, supplier, None, 50).await?;
            out.push(views::HeldSupplier { state: st, by_practice, first });
        }
        Ok::<_, sqlx::Error>(out)
    };
    match read.await {
        Ok(suppliers) => screen(&state, "Held verdicts", &who, Nav::Held, views::held(&suppliers, &who)),
        Err(e) => db_error(&who, e),
    }
}

#[derive(Deserialize)]
struct ConfirmQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    ods: String,
}

async fn held_confirm(State(state): State<ConsoleState>, who: Principal, Query(q): Query<ConfirmQuery>) -> Response {
    if !who.may_act() {
        return refusal(StatusCode::FORBIDDEN, Some(&who), "Your role (viewer) may read but not act.");
    }
    let (Some(supplier), Ok(ods), action @ ("release" | "discard")) =
        (checkable(&q.supplier), ods(&q.ods), q.action.as_str())
    else {
        return refusal(
            StatusCode::BAD_REQUEST,
            Some(&who),
            "Choose a supplier (emis, tpp or vision), a valid ODS code and release or discard.",
        );
    };
    let now = state.clock.now();
    let read = async {
        let preview = store::guard::preview_release(&state.pool, supplier, ods, now, &state.rules).await?;
        let held: i64 = store::guard::held_by_practice(&state.pool, supplier)
            .await?
            .into_iter()
            .filter(|(o, _)| ods.is_none_or(|x| x == o))
            .map(|(_, n)| n)
            .sum();
        Ok::<_, sqlx::Error>((preview, held))
    };
    match read.await {
        Ok((preview, held)) => {
            let title = if action == "release" { "Confirm release" } else { "Confirm discard" };
            screen(
                &state,
                title,
                &who,
                Nav::Held,
                views::confirm(action, supplier.as_str(), ods, &preview, held, &who.csrf),
            )
        }
        Err(e) => db_error(&who, e),
    }
}

#[derive(Deserialize)]
struct ResolveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    ods: String,
}

async fn held_release(State(state): State<ConsoleState>, who: Principal, Form(f): Form<ResolveForm>) -> Response {
    resolve(state, who, f, "release").await
}

async fn held_discard(State(state): State<ConsoleState>, who: Principal, Form(f): Form<ResolveForm>) -> Response {
    resolve(state, who, f, "discard").await
}

async fn resolve(state: ConsoleState, who: Principal, f: ResolveForm, action: &'static str) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let (Some(supplier), Ok(ods)) = (checkable(&f.supplier), ods(&f.ods)) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            Some(&who),
            "Choose a supplier (emis, tpp or vision) and a valid ODS code.",
        );
    };
    let now = state.clock.now();
    let actor = who.actor();
    let done = match action {
        "release" => store::guard::release_as(&state.pool, supplier, ods, now, &state.rules, Some(&actor)).await,
        _ => store::guard::discard_as(&state.pool, supplier, ods, now, Some(&actor)).await,
    };
    match done {
        Ok(r) => {
            tracing::info!(
                supplier = supplier.as_str(),
                ods_code = ods,
                by = %actor,
                applied = r.applied,
                newly_flagged = r.newly_flagged,
                stale = r.stale,
                discarded = r.discarded,
                remaining = r.remaining,
                guard_clear = r.guard_cleared,
                "guard verdicts {action}d from the console"
            );
            let title = if action == "release" { "Released" } else { "Discarded" };
            screen(&state, title, &who, Nav::Held, views::resolved(action, supplier.as_str(), ods, &r))
        }
        Err(e) => db_error(&who, e),
    }
}

// ---- credential lookup ----

#[derive(Deserialize)]
struct UserQuery {
    #[serde(default)]
    user: String,
}

async fn credential_page(state: &ConsoleState, who: &Principal, user: &str, note: Option<Markup>) -> Response {
    let user = user.trim();
    if user.is_empty() {
        return screen(state, "Credential lookup", who, Nav::Credentials, views::lookup_form(""));
    }
    let now = state.clock.now();
    let read = async {
        let detail = store::console::credential(&state.pool, user).await?;
        let filter = store::console::EventFilter { user_id: Some(user.to_owned()), ..Default::default() };
        let events = store::console::events(&state.pool, &filter, 200).await?;
        Ok::<_, sqlx::Error>((detail, events))
    };
    match read.await {
        Ok((Some(c), events)) => {
            let body = maud::html! { (views::lookup_form(user)) (views::credential(&c, &events, who, now, note)) };
            screen(state, "Credential lookup", who, Nav::Credentials, body)
        }
        Ok((None, events)) => {
            let body = maud::html! {
                (views::lookup_form(user))
                (views::message("bad", "No credential is stored for this user id."))
                @if !events.is_empty() {
                    p.meta { "Its events are kept until retention prunes them (it may have been erased):" }
                }
            };
            html(StatusCode::NOT_FOUND, views::page("Credential lookup", Some(who), Nav::Credentials, None, body))
        }
        Err(e) => db_error(who, e),
    }
}

async fn credential(State(state): State<ConsoleState>, who: Principal, Query(q): Query<UserQuery>) -> Response {
    credential_page(&state, &who, &q.user, None).await
}

#[derive(Deserialize)]
struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    note: String,
}

async fn check_now(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let now = state.clock.now();
    match store::console::request_check(&state.pool, &f.user, now, &who.actor()).await {
        Ok(outcome) => {
            let note = match outcome {
                store::console::Requested::Done => {
                    tracing::info!(user_id = %f.user, by = %who.actor(), "console: priority check requested");
                    views::message(
                        "good",
                        "Check requested: a running service checks it within a second or so. Reload to see the answer.",
                    )
                }
                store::console::Requested::AlreadyPending => {
                    views::message("good", "A check is already pending; nothing more was done.")
                }
                store::console::Requested::NotCheckable => {
                    views::message("bad", "No checkable credential is stored for this user id; nothing was done.")
                }
            };
            credential_page(&state, &who, &f.user, Some(note)).await
        }
        Err(e) => db_error(&who, e),
    }
}

async fn recheck(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let now = state.clock.now();
    let run = async {
        let mut tx = state.pool.begin().await?;
        let filter = store::status::RecheckFilter { supplier: None, user_id: Some(f.user.clone()) };
        let n = store::status::recheck(&mut *tx, &filter, now).await?;
        if n > 0 {
            store::console::record_action(&mut *tx, &f.user, "recheck", &who.actor(), serde_json::json!({}), now)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(n)
    };
    match run.await {
        Ok(n) => {
            let note = if n > 0 {
                tracing::info!(user_id = %f.user, by = %who.actor(), "console: credential made due now");
                views::message("good", "Made due now: the next sweep (or priority round) checks it.")
            } else {
                views::message("good", "Already due (or not checkable); nothing more was done.")
            };
            credential_page(&state, &who, &f.user, Some(note)).await
        }
        Err(e) => db_error(&who, e),
    }
}

// ---- canaries ----

async fn canaries_page(state: &ConsoleState, who: &Principal, note: Option<Markup>, status: StatusCode) -> Response {
    match store::canaries::list(&state.pool, None).await {
        Ok(rows) => {
            let body = maud::html! { @if let Some(n) = note { (n) } (views::canaries(&rows, who, state.clock.now())) };
            html(status, views::page("Canaries", Some(who), Nav::Canaries, None, body))
        }
        Err(e) => db_error(who, e),
    }
}

async fn canaries(State(state): State<ConsoleState>, who: Principal) -> Response {
    canaries_page(&state, &who, None, StatusCode::OK).await
}

async fn canary_add(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let user = f.user.trim();
    let note = Some(f.note.trim()).filter(|n| !n.is_empty());
    let now = state.clock.now();
    let run = async {
        let mut tx = state.pool.begin().await?;
        let added = store::canaries::add(&mut *tx, user, note, now).await?;
        if added {
            let detail = serde_json::json!({ "note": note });
            store::console::record_action(&mut *tx, user, "canary_add", &who.actor(), detail, now).await?;
        }
        tx.commit().await?;
        Ok::<_, store::canaries::AddError>(added)
    };
    let (status, text, kind) = match run.await {
        Ok(true) => {
            tracing::info!(user_id = %user, by = %who.actor(), "console: canary added");
            (StatusCode::OK, "Added as a canary.".to_owned(), "good")
        }
        Ok(false) => (StatusCode::OK, "Already a canary; nothing more was done.".to_owned(), "good"),
        Err(store::canaries::AddError::UnknownUser) => {
            (StatusCode::BAD_REQUEST, "No credential is stored for this user id.".to_owned(), "bad")
        }
        Err(store::canaries::AddError::Unsupported) => (
            StatusCode::BAD_REQUEST,
            "A Microtest credential is never checked, so it cannot be a canary.".to_owned(),
            "bad",
        ),
        Err(store::canaries::AddError::InvalidNote(why)) => {
            (StatusCode::BAD_REQUEST, format!("The note {why}."), "bad")
        }
        Err(store::canaries::AddError::Database(e)) => return db_error(&who, e),
    };
    canaries_page(&state, &who, Some(views::message(kind, &text)), status).await
}

async fn canary_remove(State(state): State<ConsoleState>, who: Principal, Form(f): Form<UserForm>) -> Response {
    if let Some(refused) = refuse(&who, &f.csrf) {
        return refused;
    }
    let now = state.clock.now();
    let run = async {
        let mut tx = state.pool.begin().await?;
        let removed = store::canaries::remove(&mut *tx, &f.user).await?;
        if removed {
            store::console::record_action(&mut *tx, &f.user, "canary_remove", &who.actor(), serde_json::json!({}), now)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(removed)
    };
    match run.await {
        Ok(removed) => {
            if removed {
                tracing::info!(user_id = %f.user, by = %who.actor(), "console: canary removed");
            }
            let text = if removed {
                "Removed; the credential itself is kept."
            } else {
                "It was not a canary; nothing was done."
            };
            canaries_page(&state, &who, Some(views::message("good", text)), StatusCode::OK).await
        }
        Err(e) => db_error(&who, e),
    }
}

// ---- events ----

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    before: Option<i64>,
}

const EVENTS_PAGE: i64 = 100;

async fn events(State(state): State<ConsoleState>, who: Principal, Query(q): Query<EventsQuery>) -> Response {
    let known = |v: &str, list: &[&str]| Some(v.to_owned()).filter(|v| list.contains(&v.as_str()));
    let filter = store::console::EventFilter {
        user_id: Some(q.user.trim().to_owned()).filter(|u| !u.is_empty()),
        supplier: known(&q.supplier, &["emis", "tpp", "vision", "microtest"]),
        kind: known(&q.kind, views::KINDS),
        reason: known(&q.reason, views::REASONS),
        before_id: q.before,
    };
    match store::console::events(&state.pool, &filter, EVENTS_PAGE).await {
        Ok(rows) => {
            let next = (rows.len() as i64 == EVENTS_PAGE).then(|| {
                format!(
                    "/events?supplier={}&kind={}&reason={}&user={}&before={}",
                    views::enc(filter.supplier.as_deref().unwrap_or("")),
                    views::enc(filter.kind.as_deref().unwrap_or("")),
                    views::enc(filter.reason.as_deref().unwrap_or("")),
                    views::enc(filter.user_id.as_deref().unwrap_or("")),
                    rows.last().map_or(0, |r| r.id)
                )
            });
            let query = views::EventQuery {
                supplier: filter.supplier.as_deref().unwrap_or(""),
                kind: filter.kind.as_deref().unwrap_or(""),
                reason: filter.reason.as_deref().unwrap_or(""),
                user: filter.user_id.as_deref().unwrap_or(""),
            };
            screen(&state, "Events", &who, Nav::Events, views::events(&rows, &query, next, state.clock.now()))
        }
        Err(e) => db_error(&who, e),
    }
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
