//! The console's pages, server-rendered with maud (every interpolation is HTML-escaped).
//! Each takes data already read; none reads the database. No token, ciphertext or key
//! is ever in that data: the store's console queries do not select them.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, html};

use super::auth::Principal;

mod canaries;
mod credential;
mod events;
mod held;
mod overview;

pub use self::canaries::canaries;
pub use self::credential::{credential, lookup_form};
pub use self::events::{EventQuery, KINDS, REASONS, events};
pub use self::held::{HeldSupplier, confirm, held, resolved};
pub use self::overview::{Overview, overview, overview_live};

/// Percent-encodes a query value (user ids may hold any printable character).
pub fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true).replace('T', " ")
}

pub(super) fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_owned(), time)
}

/// How long ago (or ahead) `t` is, to the nearest unit.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = if secs < 0 { (-secs, true) } else { (secs, false) };
    let text = match n {
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h {}m", n / 3600, (n % 3600) / 60),
        _ => format!("{}d", n / 86_400),
    };
    if future { format!("in {text}") } else { format!("{text} ago") }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Held,
    Credentials,
    Canaries,
    Events,
    None,
}

/// The page around every screen: navigation, who is signed in, and the sign-out form.
pub fn page(title: &str, who: Option<&Principal>, nav: Nav, refresh: Option<u64>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                @if let Some(secs) = refresh {
                    // Without JavaScript the overview reloads itself; with it, only the
                    // live section is fetched (console.js) and this never fires.
                    noscript { meta http-equiv="refresh" content=(secs * 3); }
                }
                title { (title) " · im1-revalidator console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    span.brand { "im1-revalidator" }
                    @if let Some(who) = who {
                        nav {
                            @for (item, href, label) in [
                                (Nav::Overview, "/overview", "Overview"),
                                (Nav::Held, "/held", "Held verdicts"),
                                (Nav::Credentials, "/credentials", "Credential lookup"),
                                (Nav::Canaries, "/canaries", "Canaries"),
                                (Nav::Events, "/events", "Events"),
                            ] {
                                a href=(href) class=[(item == nav).then_some("active")] { (label) }
                            }
                        }
                        span.who {
                            span data-user=(who.name) { (who.name) } " · "
                            span.role data-role=(who.role.as_str()) { (who.role.as_str()) }
                            @if who.session {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(who.csrf);
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn login(csrf: &str, message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p.flash.bad role="alert" { (m) } }
        form.card.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            label { "User name" input type="text" name="name" autocomplete="username" required autofocus; }
            label { "Password" input type="password" name="password" autocomplete="current-password" required; }
            button type="submit" { "Sign in" }
        }
    }
}

pub fn message(kind: &str, text: &str) -> Markup {
    html! { p class={"flash " (kind)} role="status" { (text) } }
}

/// A page-sized refusal or error (never internal error text).
pub fn problem(text: &str, back: Option<&str>) -> Markup {
    html! {
        (message("bad", text))
        @if let Some(back) = back { p { a href=(back) { "Back" } } }
    }
}

pub(super) fn badge(kind: &str, text: &str) -> Markup {
    html! { span class={"badge " (kind)} { (text) } }
}

pub(super) fn breaker_badge(state: Option<&str>) -> Markup {
    match state {
        Some("open") => badge("bad", "open"),
        Some("half_open") => badge("warn", "half-open"),
        Some(s) => badge("good", s),
        None => html! { "—" },
    }
}

pub fn not_found() -> Markup {
    html! { (message("bad", "There is no such page.")) p { a href="/overview" { "Overview" } } }
}

/// The stylesheet and the script, embedded in the binary.
pub const CSS: &str = include_str!("../assets/console.css");
pub const JS: &str = include_str!("../assets/console.js");
