//! The operator console in a real browser: headless Chromium through chromedriver
//! (WebDriver, `fantoccini`) against `run` (the binary) with a real PostgreSQL and the
//! simulator. Sweeps run in the test process on a manual clock, sharing the database with
//! `run`, so the states the console shows are made by the real write paths.
//!
//! Screenshots of every screen are written to `docs/console/` (committed, for the README).
//! Needs `chromium` and `chromium-driver` (Debian); `scripts/test` installs them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use im1_revalidator::clock::ManualClock;
use im1_revalidator::model::Supplier;
use sqlx::PgPool;

use super::helpers::*;

/// The password every test user signs in with (hashed by the binary's own command).
const PASSWORD: &str = "correct horse battery staple";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver is installed (Debian: apt-get install chromium chromium-driver; scripts/test does it)");
    Driver { child, url: format!("http://127.0.0.1:{port}") }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let client = reqwest::Client::new();
    wait_for_status(&client, &format!("{}/status", driver.url), 200).await;
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1360,1000",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a browser session starts")
}

/// Writes the page's screenshot to docs/console/NAME.png.
async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn text(c: &Client, css: &str) -> String {
    c.wait().for_element(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

async fn body(c: &Client) -> String {
    text(c, "body").await
}

async fn sign_in(c: &Client, base: &str, name: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Css("input[name=name]")).await.unwrap().send_keys(name).await.unwrap();
    c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    c.find(Locator::Css("form.login button")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("#live")).await.unwrap();
}

async fn sign_out(c: &Client) {
    c.find(Locator::Css("form[action='/logout'] button")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("form.login")).await.unwrap();
}

/// Builds and submits a form from inside the page (what a forged or hand-made request
/// looks like to the server), then waits for the answer page.
async fn post_form(c: &Client, action: &str, fields: &[(&str, &str)]) -> String {
    let fields: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    c.execute(
        "const [action, fields] = arguments; const f = document.createElement('form'); f.method = 'post'; \
         f.action = action; for (const [k, v] of Object.entries(fields)) { const i = document.createElement('input'); \
         i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); } document.body.appendChild(f); \
         document.title = 'submitting'; f.submit();",
        vec![action.into(), fields.into()],
    )
    .await
    .unwrap();
    c.wait().for_element(Locator::XPath("//title[not(text()='submitting')]")).await.unwrap();
    body(c).await
}

async fn held(pool: &PgPool, ods: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM im1_held_verdicts WHERE ods_code = $1")
        .bind(ods)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn flagged(pool: &PgPool, ods: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE ods_code = $1 AND refresh_required")
        .bind(ods)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn line(user: &str, ods: &str) -> serde_json::Value {
    serde_json::json!({"user_id": user, "supplier": "emis", "ods_code": ods,
                       "token": {"access_identity_guid": format!("guid-{user}")}})
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_console_in_a_real_browser(pool: PgPool) {
    let mut app = spawn_app(pool.clone()).await;
    // The sweeps below run on a clock a little behind the real one, so that what they
    // wrote is in the past for `run`, which reads the system clock.
    app.clock = ManualClock::new(Utc::now() - TimeDelta::minutes(40));

    // 30 users at one practice and 5 at another whose tokens the supplier rejects, 20
    // good ones. A first sweep (guard off) gives the rejected ones their first strike.
    let mut lines = Vec::new();
    for i in 0..30 {
        lines.push(line(&format!("a-{i:02}"), "A81001"));
        app.sim.script(&format!("guid-a-{i:02}"), steps(&["not_registered"]));
    }
    for i in 0..5 {
        lines.push(line(&format!("c-{i}"), "C83003"));
        app.sim.script(&format!("guid-c-{i}"), steps(&["not_registered"]));
    }
    for i in 0..20 {
        lines.push(line(&format!("b-{i:02}"), "B82002"));
    }
    app.import(&lines).await;
    let mut vars = app.vars.clone();
    vars.insert("DATABASE_URL".into(), database_url(&pool));
    vars.insert("IM1_GUARD_THRESHOLD".into(), "1".into());
    sweep_with(&app.engine_with(&vars)).await;
    assert_eq!(app.row("a-00").await.last_outcome.as_deref(), Some("suspect"));

    // The confirming answers come 20 minutes later, with the guard on: 35 invalid of 55
    // answers in its window trips it, so every confirmation is held, none applied.
    app.advance(TimeDelta::minutes(20));
    vars.insert("IM1_GUARD_THRESHOLD".into(), "0.1".into());
    vars.insert("IM1_GUARD_MIN_CHECKS".into(), "50".into());
    sweep_with(&app.engine_with(&vars)).await;
    assert_eq!((held(&pool, "A81001").await, held(&pool, "C83003").await), (30, 5));
    assert_eq!(flagged(&pool, "A81001").await, 0);

    // `run` serves the console (no schedule: the test sweeps), with one operator and one
    // viewer whose hashes the binary makes.
    let out = run_binary(&["console", "hash-password"], vec![], format!("{PASSWORD}\n")).await;
    let (code, hash, _) = outcome(&out);
    assert_eq!(code, 0);
    let users = format!("ops:operator:{h};viewer:viewer:{h}", h = hash.trim());
    let console_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let console_addr = format!("127.0.0.1:{console_port}");
    let (_admin, run) = spawn_run_with(
        &pool,
        &app,
        "off",
        &[("IM1_CONSOLE_ADDR", &console_addr), ("IM1_CONSOLE_USERS", &users), ("IM1_CONSOLE_REFRESH", "1s")],
    );
    let base = format!("http://{console_addr}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    wait_for_status(&http, &format!("{base}/login"), 200).await;
    // Unknown pages are a 404 page, not a stack; pages need a session.
    let missing = http.get(format!("{base}/no/such/page")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("There is no such page"));
    let anonymous = http.get(format!("{base}/held")).send().await.unwrap();
    assert_eq!((anonymous.status().as_u16(), anonymous.headers()["location"].to_str().unwrap()), (303, "/login"));
    let login = http.get(format!("{base}/login")).send().await.unwrap();
    let csp = login.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");

    let driver = chromedriver();
    let profile = std::env::temp_dir().join(format!("im1-console-chromium-{}", uuid::Uuid::new_v4()));
    let c = browser(&driver, &profile).await;

    // A wrong password is refused with the same words as an unknown name.
    c.goto(&format!("{base}/login")).await.unwrap();
    shot(&c, "login").await;
    c.find(Locator::Css("input[name=name]")).await.unwrap().send_keys("ops").await.unwrap();
    c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("wrong password!").await.unwrap();
    c.find(Locator::Css("form.login button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".flash").await.contains("were not accepted"));

    // Overview: the guard holds EMIS, with its held verdicts.
    sign_in(&c, &base, "ops").await;
    let guard = text(&c, "[data-guard=emis]").await;
    assert!(guard.contains("HOLDING"), "{guard}");
    assert!(text(&c, "[data-held=emis]").await.contains("35"));
    assert!(!text(&c, "[data-supplier=emis]").await.contains("refresh required"));
    shot(&c, "overview-guard-holding").await;

    // Held verdicts, largest practice first, with the supplier's evidence.
    c.find(Locator::LinkText("Held verdicts")).await.unwrap().click().await.unwrap();
    let practices = c.wait().for_element(Locator::Css("[data-held-supplier=emis] tbody")).await.unwrap();
    let first = practices.find(Locator::Css("tr")).await.unwrap().text().await.unwrap();
    assert!(first.starts_with("A81001 30"), "{first}");
    let page = body(&c).await;
    assert!(page.contains("not_registered") && page.contains("HTTP"), "{page}");
    assert!(!page.contains("guid-"), "no token on the page");
    shot(&c, "held-verdicts").await;

    // A forged form (no CSRF token) is refused and changes nothing.
    let refused = post_form(&c, "/held/discard", &[("supplier", "emis")]).await;
    assert!(refused.contains("missing or wrong CSRF token"), "{refused}");
    assert_eq!(held(&pool, "A81001").await + held(&pool, "C83003").await, 35);

    // Release practice A81001: the confirmation says how many users it flags.
    c.goto(&format!("{base}/held?supplier=emis")).await.unwrap();
    c.find(Locator::Css("tr[data-ods=A81001] a.button")).await.unwrap().click().await.unwrap();
    assert_eq!(text(&c, "[data-flagged]").await, "30");
    shot(&c, "held-confirm-release").await;
    assert_eq!(flagged(&pool, "A81001").await, 0, "the confirmation changed nothing");
    c.find(Locator::Css("form[action='/held/release'] button")).await.unwrap().click().await.unwrap();
    let done = text(&c, ".flash").await;
    assert!(done.contains("30 held verdict(s) applied, 30 user(s) newly flagged"), "{done}");
    assert!(text(&c, "[data-remaining]").await.contains("5 held verdict(s) remaining; guard still holding"));
    shot(&c, "held-released").await;
    assert_eq!((flagged(&pool, "A81001").await, held(&pool, "A81001").await), (30, 0));
    let by: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT evidence->>'by' FROM im1_credential_events WHERE kind = 'guard' AND ods_code = 'A81001'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(by, ["console:ops"], "every release event names the console user");

    // Submitting the release again (a double submit) changes nothing.
    c.back().await.unwrap();
    c.wait().for_element(Locator::Css("form[action='/held/release'] button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".flash").await.contains("0 held verdict(s) applied, 0 user(s) newly flagged"));
    assert_eq!(flagged(&pool, "A81001").await, 30);

    // Credential lookup: the user's standing and timeline, the release among it.
    c.find(Locator::LinkText("Credential lookup")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("input[name=user]")).await.unwrap().send_keys("a-07").await.unwrap();
    c.find(Locator::Css("form.search button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, "[data-status]").await.contains("invalid · not_registered"));
    let timeline = text(&c, "ol.timeline").await;
    assert!(timeline.contains("guard") && timeline.contains("console:ops"), "{timeline}");
    assert!(timeline.contains("suspect"), "the first strike is in the timeline: {timeline}");
    assert!(!body(&c).await.contains("guid-a-07"), "never the token");
    // "Check now" asks for a priority check, once however often it is submitted.
    c.find(Locator::Css("form[action='/credentials/check'] button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".flash").await.contains("Check requested") || body(&c).await.contains("already pending"));
    shot(&c, "credential-timeline").await;

    // Canaries: add one, see it, remove it.
    c.find(Locator::LinkText("Canaries")).await.unwrap().click().await.unwrap();
    c.wait()
        .for_element(Locator::Css("form[action='/canaries/add'] input[name=user]"))
        .await
        .unwrap()
        .send_keys("b-00")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/canaries/add'] input[name=note]"))
        .await
        .unwrap()
        .send_keys("practice test patient")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/canaries/add'] button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".flash").await.contains("Added as a canary"));
    assert!(text(&c, "tr[data-canary=b-00]").await.contains("practice test patient"));
    shot(&c, "canaries").await;
    c.find(Locator::Css("tr[data-canary=b-00] button")).await.unwrap().click().await.unwrap();
    assert!(text(&c, ".flash").await.contains("Removed"));
    let audit: Vec<String> = sqlx::query_scalar(
        "SELECT evidence->>'action' || ' ' || (evidence->>'by') FROM im1_credential_events \
          WHERE kind = 'operator' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(audit, ["check_now console:ops", "canary_add console:ops", "canary_remove console:ops"]);

    // Events, filtered by kind.
    c.goto(&format!("{base}/events?kind=guard")).await.unwrap();
    let events = text(&c, "table.events tbody").await;
    assert!(events.contains("A81001") && !events.contains("B82002"), "only guard events: {events}");
    shot(&c, "events").await;

    // An outage: the next sweep's calls fail, the breaker opens, and the open overview
    // shows it without a reload.
    c.goto(&format!("{base}/overview")).await.unwrap();
    assert!(text(&c, "[data-breaker=emis]").await.contains("closed"));
    app.sim.set_outage(Supplier::Emis, true);
    let now = ManualClock::new(Utc::now());
    im1_revalidator::store::status::recheck(
        &pool,
        &im1_revalidator::store::status::RecheckFilter { supplier: Some(Supplier::Emis), user_id: None },
        now.now_utc(),
    )
    .await
    .unwrap();
    vars.insert("IM1_BREAKER_MIN_CALLS".into(), "5".into());
    let mut settings = im1_revalidator::config::Settings::from_vars(&vars).unwrap();
    let engine = im1_revalidator::cli::engine(&mut settings, pool.clone(), Arc::new(now), "test").unwrap();
    sweep_with(&engine).await;
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::XPath("//dd[@data-breaker='emis']/span[text()='open']"))
        .await
        .expect("the overview refreshes itself and shows the breaker open");
    shot(&c, "overview-breaker-open").await;

    // A viewer reads but cannot act, even with a well-formed form and its own token.
    sign_out(&c).await;
    sign_in(&c, &base, "viewer").await;
    c.goto(&format!("{base}/held?supplier=emis")).await.unwrap();
    let page = body(&c).await;
    assert!(page.contains("C83003") && page.contains("may read but not release"), "{page}");
    assert!(c.find_all(Locator::Css("a.button")).await.unwrap().is_empty(), "no action for a viewer");
    shot(&c, "viewer-held").await;
    let csrf = c
        .find(Locator::Css("form[action='/logout'] input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let refused = post_form(&c, "/held/release", &[("csrf", &csrf), ("supplier", "emis")]).await;
    assert!(refused.contains("Your role (viewer) may read but not act"), "{refused}");
    assert_eq!(held(&pool, "C83003").await, 5, "nothing released");
    shot(&c, "viewer-refused").await;

    c.close().await.unwrap();
    drop(driver);
    let _ = std::fs::remove_dir_all(&profile);
    let out = stop_run(run).await;
    let (_, stdout, stderr) = outcome(&out);
    for secret in ["guid-", PASSWORD, hash.trim()] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} leaked into run's output");
    }
}

/// Serves the console in this process (real HTTP on loopback) with `extra` console
/// settings; returns its base URL.
async fn serve_console(pool: &PgPool, extra: &[(&str, &str)]) -> String {
    let mut vars: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", "postgres://unused@127.0.0.1/unused"),
        ("IM1_CONSOLE_ADDR", "127.0.0.1:0"),
        ("IM1_SCHEDULE", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = im1_revalidator::config::Settings::from_vars(&vars).expect("valid console settings");
    let console = settings.console.clone().unwrap();
    let listener = im1_revalidator::console::bind(&console).await.unwrap();
    // Over TLS by the name in the test certificate; otherwise by address, as before.
    let port = listener.local_addr().unwrap().port();
    let base =
        if console.tls.is_some() { format!("https://localhost:{port}") } else { format!("http://127.0.0.1:{port}") };
    let state =
        im1_revalidator::console::ConsoleState::new(pool.clone(), &settings, console, im1_revalidator::clock::system());
    tokio::spawn(im1_revalidator::console::serve(listener, state, im1_revalidator::shutdown::Shutdown::never()));
    base
}

/// The console behind an SSO proxy: the trusted header names the user; `alice` is an
/// operator and everyone else a viewer. Each request goes out as the user a test names.
struct Proxied {
    http: reqwest::Client,
    base: String,
}

impl Proxied {
    async fn start(pool: &PgPool) -> Proxied {
        let base = serve_console(
            pool,
            &[("IM1_CONSOLE_TRUSTED_HEADER", "X-Auth-Request-User"), ("IM1_CONSOLE_TRUSTED_OPERATORS", "alice")],
        )
        .await;
        Proxied { http: no_redirects(), base }
    }

    /// A GET as `user`, or with no header at all.
    async fn get(&self, user: Option<&str>, path: &str) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(user) = user {
            request = request.header("x-auth-request-user", user);
        }
        request.send().await.unwrap()
    }

    async fn page(&self, user: &str, path: &str) -> String {
        self.get(Some(user), path).await.text().await.unwrap()
    }

    /// A form POST as `user`; `body` is already URL-encoded.
    async fn post(&self, user: &str, path: &str, body: String) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("x-auth-request-user", user)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

/// The value of the first form field `name` on a page.
fn form_field(page: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let rest = page.split(&marker).nth(1).unwrap_or_else(|| panic!("no field {name} in {page}"));
    rest.split('"').next().unwrap().to_owned()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `name=value` of a response's `Set-Cookie` named `name`, and the whole header.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        let pair = v.split(';').next()?.trim();
        pair.starts_with(&format!("{name}=")).then(|| (pair.to_owned(), v.to_owned()))
    })
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn failed_sign_ins_are_rate_limited_and_the_cookie_is_strict(pool: PgPool) {
    let hash = im1_revalidator::console::auth::hash_password(PASSWORD).unwrap();
    let users = format!("ops:operator:{hash}");
    let base = serve_console(&pool, &[("IM1_CONSOLE_USERS", &users), ("IM1_CONSOLE_SECURE_COOKIE", "true")]).await;
    let http = no_redirects();
    let attempt = |password: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let page = http.get(format!("{base}/login")).send().await.unwrap();
            let (cookie, _) = set_cookie(&page, "im1_console_login").expect("a sign-in form cookie");
            let csrf = cookie.split_once('=').unwrap().1.to_owned();
            http.post(format!("{base}/login"))
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("csrf={csrf}&name=ops&password={}", password.replace(' ', "+")))
                .send()
                .await
                .unwrap()
        }
    };
    // A form without its CSRF token is refused before any password is checked.
    let forged = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=ops&password=x")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    let ok = attempt(PASSWORD).await;
    assert_eq!(ok.status(), 303);
    let (_, header) = set_cookie(&ok, "im1_console").expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(header.contains(flag), "{flag} missing from {header}");
    }
    // Four more attempts fit in the per-user allowance of five a minute; the next is
    // refused without checking the password, even the right one.
    for _ in 0..4 {
        assert_eq!(attempt("wrong password").await.status(), 401);
    }
    let limited = attempt(PASSWORD).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.text().await.unwrap().contains("Too many sign-in attempts"));
}

/// Served over TLS, the console marks its cookies `Secure` without being told to
/// (`IM1_CONSOLE_SECURE_COOKIE` unset), and a plain-HTTP request on its port gets no page.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn over_tls_every_cookie_is_secure_by_default(pool: PgPool) {
    crate::helpers::install_crypto();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("im1-console-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("console.crt"), dir.join("console.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let hash = im1_revalidator::console::auth::hash_password(PASSWORD).unwrap();
    let users = format!("ops:operator:{hash}");
    let (cert_path, key_path) = (cert.display().to_string(), key.display().to_string());
    let base = serve_console(
        &pool,
        &[("IM1_CONSOLE_USERS", &users), ("IM1_CONSOLE_TLS_CERT", &cert_path), ("IM1_CONSOLE_TLS_KEY", &key_path)],
    )
    .await;
    assert!(base.starts_with("https://"), "{base}");
    let roots = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let https =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).tls_certs_only([roots]).build().unwrap();

    let page = https.get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let (cookie, header) = set_cookie(&page, "im1_console_login").expect("a sign-in form cookie");
    assert!(header.contains("Secure"), "the sign-in cookie is not Secure: {header}");
    let csrf = cookie.split_once('=').unwrap().1.to_owned();
    let signed_in = https
        .post(format!("{base}/login"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&name=ops&password={}", PASSWORD.replace(' ', "+")))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let (_, session) = set_cookie(&signed_in, "im1_console").expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(session.contains(flag), "{flag} missing from {session}");
    }

    // Plain HTTP on the TLS port: the handshake fails, so no page (and no cookie) is served.
    let plain = base.replacen("https://", "http://", 1);
    let refused = no_redirects().get(format!("{plain}/login")).send().await;
    assert!(refused.as_ref().map_or(true, |r| set_cookie(r, "im1_console_login").is_none()), "{refused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A viewer may ask for a check now (a priority check, judged like any other, its event
/// naming the viewer) but may not recheck; both forms still need the viewer's own token.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_viewer_may_ask_for_a_check_now_and_nothing_more(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.emis_user("u1", &[]).await;
    let console = Proxied::start(&pool).await;
    let page = console.page("bob", "/credentials?user=u1").await;
    assert!(page.contains("/credentials/check") && !page.contains("/credentials/recheck"), "{page}");
    let csrf = form_field(&page, "csrf");
    let post = |path: &'static str, body: String| console.post("bob", path, body);
    let pending = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT priority_requested_at IS NOT NULL FROM im1_credentials WHERE user_id = 'u1'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(post("/credentials/check", "user=u1".into()).await.status(), 403, "no token, no check");
    assert!(!pending().await);
    assert_eq!(post("/credentials/recheck", format!("csrf={csrf}&user=u1")).await.status(), 403);

    let done = post("/credentials/check", format!("csrf={csrf}&user=u1")).await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Check requested"));
    assert!(pending().await, "the priority check is queued");
    let again = post("/credentials/check", format!("csrf={csrf}&user=u1")).await.text().await.unwrap();
    assert!(again.contains("already pending"), "{again}");
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT evidence->>'action', evidence->>'by' FROM im1_credential_events WHERE kind = 'operator'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(events, [("check_now".to_owned(), "console:bob".to_owned())], "one event, naming bob");
}

/// A release applies what its confirmation showed: when more verdicts were held while the
/// operator read it, the release is refused with the new numbers, and nothing is done
/// until they confirm again. A repeated submit then changes nothing.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_release_never_flags_more_users_than_its_confirmation_showed(pool: PgPool) {
    use im1_revalidator::model::Reason;
    let mut app = spawn_app(pool.clone()).await;
    // What the test writes must be in the past for the console, which reads the system clock.
    app.clock = ManualClock::new(Utc::now() - TimeDelta::minutes(40));
    app.emis_user("u1", &["not_registered"]).await;
    app.emis_user("u2", &["not_registered"]).await;
    app.sweep().await;
    assert_eq!(app.row("u2").await.last_outcome.as_deref(), Some("suspect"));
    // Both confirmations come while the guard holds; the operator first sees only u1's.
    app.advance(TimeDelta::minutes(15));
    crate::guard::hold_guard(&app).await;
    crate::guard::hold_answers(&app, &[("u1", Reason::NotRegistered)]).await;

    let console = Proxied::start(&pool).await;
    let confirmation = || async {
        let page = console.page("alice", "/held/confirm?action=release&supplier=emis").await;
        (form_field(&page, "csrf"), form_field(&page, "confirmed"))
    };
    let release = |body: String| console.post("alice", "/held/release", body);
    let flagged = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM im1_credentials WHERE refresh_required")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let (csrf, confirmed) = confirmation().await;
    assert_eq!(confirmed, "1", "the confirmation says one user will be flagged");

    // A sweep holds u2's confirmation while the operator reads.
    crate::guard::hold_answers(&app, &[("u2", Reason::NotRegistered)]).await;
    let refused = release(format!("csrf={csrf}&supplier=emis&confirmed={confirmed}")).await;
    assert_eq!(refused.status(), 409);
    let page = refused.text().await.unwrap();
    assert!(page.contains("would now flag 2 user(s), not 1") && page.contains("Nothing was done"), "{page}");
    assert_eq!(flagged().await, 0, "nothing released");
    // Without a confirmation at all: refused too.
    assert_eq!(release(format!("csrf={csrf}&supplier=emis")).await.status(), 400);
    assert_eq!(flagged().await, 0);

    // Confirmed again with the new numbers: released, both flagged.
    let (csrf, confirmed) = confirmation().await;
    assert_eq!(confirmed, "2");
    let form = format!("csrf={csrf}&supplier=emis&confirmed={confirmed}");
    let done = release(form.clone()).await;
    assert_eq!(done.status(), 200);
    assert_eq!(flagged().await, 2);
    let guard_events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM im1_credential_events WHERE kind = 'guard'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let events = guard_events().await;
    // The same form again (a double submit): nothing left to release, nothing written.
    assert_eq!(release(form).await.status(), 200);
    assert_eq!((flagged().await, guard_events().await), (2, events));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_trusted_header_names_the_user_and_its_role_and_forms_still_need_their_token(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.emis_user("u1", &[]).await;
    let console = Proxied::start(&pool).await;
    assert_eq!(console.get(None, "/overview").await.status(), 303, "no header, no session: sign in");
    let page = console.page("bob", "/credentials?user=u1").await;
    assert!(page.contains(r#"data-role="viewer""#) && !page.contains("/credentials/recheck"), "bob is a viewer");
    let page = console.page("alice", "/credentials?user=u1").await;
    assert!(page.contains(r#"data-role="operator""#) && page.contains("/credentials/recheck"), "alice acts");
    assert!(!page.contains("Sign out"), "a proxy's user signs out at the proxy");
    let csrf = form_field(&page, "csrf");
    let post = |user: &'static str, body: String| console.post(user, "/credentials/recheck", body);
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM im1_credential_events WHERE kind = 'operator'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // Without the token, with bob's role, or with alice's token under bob's name: refused.
    assert_eq!(post("alice", "user=u1".into()).await.status(), 403);
    assert_eq!(post("bob", format!("csrf={csrf}&user=u1")).await.status(), 403);
    assert_eq!(events().await, 0);
    // The new row is due at once; make it not due, so a recheck has something to do.
    sqlx::query("UPDATE im1_credentials SET next_check_at = now() + interval '1 day'").execute(&pool).await.unwrap();
    let done = post("alice", format!("csrf={csrf}&user=u1")).await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Made due now"));
    // Submitted twice: the second finds it due already and writes nothing.
    let again = post("alice", format!("csrf={csrf}&user=u1")).await.text().await.unwrap();
    assert!(again.contains("Already due"), "{again}");
    let by: Vec<String> =
        sqlx::query_scalar("SELECT evidence->>'by' FROM im1_credential_events WHERE kind = 'operator'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(by, ["console:alice"]);
}
