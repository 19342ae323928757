//! Verdict safety under supplier failure, against the simulator over real HTTP and a real
//! database: outages, timeouts, retries and Retry-After, the circuit breaker, the
//! mass-invalidation guard, canaries, configuration errors and shared rate limits. "Two
//! processes" are two engines with their own process ids, as two replicas would be.

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeDelta;
use im1_revalidator::config::Settings;
use im1_revalidator::model::Supplier;
use im1_revalidator::simulator::{Behaviour, Step};
use im1_revalidator::store::status::RecheckFilter;
use im1_revalidator::sweep::{Engine, SweepRequest, Trigger};
use sqlx::PgPool;

use crate::helpers::*;

fn with(app: &TestApp, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars = app.vars.clone();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

async fn recheck_all(app: &TestApp) {
    im1_revalidator::store::status::recheck(&app.pool, &RecheckFilter::default(), app.clock.now_utc()).await.unwrap();
}

#[derive(Debug, sqlx::FromRow)]
struct SupplierRow {
    breaker_state: String,
    guard_held_since: Option<chrono::DateTime<chrono::Utc>>,
}

async fn supplier_state(app: &TestApp, supplier: &str) -> SupplierRow {
    sqlx::query_as::<_, SupplierRow>(
        "SELECT breaker_state, guard_held_since FROM im1_supplier_state WHERE supplier = $1",
    )
    .bind(supplier)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn import_emis(app: &TestApp, users: &[(String, Vec<Step>)]) {
    let lines: Vec<serde_json::Value> = users
        .iter()
        .map(|(user, script)| {
            let token = format!("guid-{user}");
            app.sim.script(&token, script.clone());
            emis_line(user, &token)
        })
        .collect();
    app.import(&lines).await;
}

/// `n` users named from `prefix` whose tokens always answer `behaviour`.
fn scripted(prefix: &str, n: usize, behaviour: Behaviour) -> Vec<(String, Vec<Step>)> {
    (0..n).map(|i| (format!("{prefix}{i:02}"), script(&[behaviour]))).collect()
}

fn script(behaviours: &[Behaviour]) -> Vec<Step> {
    behaviours.iter().map(|b| Step::new(*b)).collect()
}

fn metric(engine: &Engine, line_start: &str) -> Option<f64> {
    engine
        .metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn an_outage_mid_sweep_changes_no_status(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Every kind of unhealthy answer, each for a token that was valid a day ago, and an
    // outage switched on while the second sweep runs.
    let unhealthy = [
        Behaviour::Unavailable,
        Behaviour::ServerError,
        Behaviour::Garbage,
        Behaviour::ProxyHtml,
        Behaviour::RateLimited,
        Behaviour::NotFound,
        Behaviour::HugeBody,
        Behaviour::BadRequest,
    ];
    let users: Vec<(String, Vec<Step>)> = (0..40)
        .map(|i| {
            let second = if i < 16 { Step::new(Behaviour::Valid).delayed(40) } else { Step::new(unhealthy[i % 8]) };
            (format!("u{i:02}"), vec![Step::new(Behaviour::Valid), second])
        })
        .collect();
    import_emis(&app, &users).await;
    let first = app.sweep().await;
    assert_eq!(first.outcomes.get("valid"), Some(&40));

    app.advance(TimeDelta::hours(27));
    let sim = app.sim.clone();
    let flip = tokio::spawn(async move {
        while sim.calls().emis.sessions < 45 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sim.set_outage(Supplier::Emis, true);
    });
    let second = app.sweep().await;
    flip.abort();
    assert_eq!(second.status_changes, 0, "{second:?}");
    assert_eq!(second.newly_refresh_required, 0);
    for (user, _) in &users {
        let row = app.row(user).await;
        assert_eq!(row.status, "valid", "{user}: {row:?}");
        assert!(!row.refresh_required);
    }
    let unhealthy_outcomes: u64 = ["transient", "skipped"].iter().filter_map(|k| second.outcomes.get(*k)).sum();
    assert!(unhealthy_outcomes >= 24, "{second:?}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_timeout_is_transient_and_no_verdict(pool: PgPool) {
    let app = spawn_app(pool).await;
    let engine = app.engine_with(&with(&app, &[("IM1_HTTP_TIMEOUT", "300ms"), ("IM1_CHECK_TIMEOUT", "2s")]));
    app.emis_user("slow", &["hang"]).await;
    let report = sweep_with(&engine).await;
    assert_eq!(report.outcomes.get("transient"), Some(&1));
    let row = app.row("slow").await;
    assert_eq!((row.status.as_str(), row.last_outcome.as_deref()), ("unchecked", Some("transient")));
    assert_eq!(app.events("slow").await.last().unwrap().evidence["detail"], "timeout");
    app.sim.release_waiters();
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn transient_answers_are_retried_inside_one_check(pool: PgPool) {
    let app = spawn_app(pool).await;
    let engine = app.engine_with(&with(&app, &[("IM1_RETRY_ATTEMPTS", "3"), ("IM1_RETRY_MAX_DELAY", "20ms")]));
    let recovers = app.emis_user("recovers", &["server_error", "garbage", "valid"]).await;
    let never = app.emis_user("never", &["server_error"]).await;
    let report = sweep_with(&engine).await;
    assert_eq!(report.checks, 2);
    assert_eq!(app.row("recovers").await.status, "valid");
    assert_eq!(app.sim.token_calls(&recovers), 3, "two retries, then the valid answer");
    let row = app.row("never").await;
    assert_eq!((row.status.as_str(), row.last_outcome.as_deref()), ("unchecked", Some("transient")));
    assert_eq!(app.sim.token_calls(&never), 4, "the first call and three retries");
    assert!(metric(&engine, "im1_retries_total{supplier=\"emis\"}").unwrap() >= 5.0);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn scheduling_never_undercuts_retry_after(pool: PgPool) {
    let app = spawn_app(pool).await;
    let engine = app.engine_with(&with(&app, &[("IM1_RETRY_ATTEMPTS", "3"), ("IM1_RETRY_MAX_DELAY", "1s")]));
    let token = "guid-throttled";
    app.sim.script(token, vec![Step::new(Behaviour::RateLimited).retry_after(7200), Step::new(Behaviour::Valid)]);
    app.import(&[emis_line("throttled", token)]).await;
    let checked_at = app.clock.now_utc();
    sweep_with(&engine).await;
    assert_eq!(app.sim.token_calls(token), 1, "a Retry-After beyond the retry delay ends the check at once");
    let row = app.row("throttled").await;
    assert_eq!(row.last_outcome.as_deref(), Some("transient"));
    assert!(row.next_check_at >= checked_at + TimeDelta::seconds(7200), "{row:?}");

    // Scheduled sweeps before then leave it alone; the one after checks it.
    app.advance(TimeDelta::seconds(7199));
    sweep_with(&engine).await;
    assert_eq!(app.sim.token_calls(token), 1);
    app.advance(TimeDelta::seconds(1));
    sweep_with(&engine).await;
    assert_eq!(app.sim.token_calls(token), 2);
    assert_eq!(app.row("throttled").await.status, "valid");

    // A short Retry-After is waited out inside the check (no sooner than it says).
    let short = "guid-short";
    app.sim.script(short, vec![Step::new(Behaviour::RateLimited).retry_after(1), Step::new(Behaviour::Valid)]);
    app.import(&[emis_line("short", short)]).await;
    let started = std::time::Instant::now();
    sweep_with(&engine).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "the retry waited for Retry-After");
    assert_eq!(app.sim.token_calls(short), 2);
    assert_eq!(app.row("short").await.status, "valid");
}

fn breaker_vars(app: &TestApp) -> HashMap<String, String> {
    with(
        app,
        &[
            ("IM1_BREAKER_MIN_CALLS", "10"),
            ("IM1_BREAKER_THRESHOLD", "0.5"),
            ("IM1_BREAKER_COOLDOWN", "60s"),
            ("IM1_CONCURRENCY", "4"),
        ],
    )
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn an_open_breaker_makes_no_calls_until_a_probe_closes_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let users = scripted("u", 30, Behaviour::Valid);
    import_emis(&app, &users).await;
    app.sim.set_outage(Supplier::Emis, true);
    let engine = app.engine_with(&breaker_vars(&app));
    sweep_with(&engine).await;
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "open");
    assert_eq!(metric(&engine, "im1_supplier_circuit_open{supplier=\"emis\"}"), Some(1.0));

    // During the cool-off: every due row is skipped without a call.
    app.sim.set_outage(Supplier::Emis, false);
    app.advance(TimeDelta::seconds(30));
    recheck_all(&app).await;
    let calls = app.sim.calls().emis.sessions;
    let during = sweep_with(&engine).await;
    assert_eq!(app.sim.calls().emis.sessions, calls, "no call while the breaker is open");
    assert_eq!(during.outcomes.get("skipped"), Some(&30), "{during:?}");
    let row = app.row("u00").await;
    assert_eq!((row.status.as_str(), row.last_outcome.as_deref()), ("unchecked", Some("skipped")));
    assert_eq!(app.events("u00").await.last().unwrap().evidence["detail"], "breaker_open");
    assert!(row.next_check_at >= app.clock.now_utc() + TimeDelta::seconds(30), "not before the cool-off ends");

    // After the cool-off a probe decides; the supplier answers again, so it closes.
    app.advance(TimeDelta::seconds(31));
    recheck_all(&app).await;
    sweep_with(&engine).await;
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "closed");
    recheck_all(&app).await;
    sweep_with(&engine).await;
    for (user, _) in &users {
        assert_eq!(app.row(user).await.status, "valid", "{user}");
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_failed_probe_opens_the_breaker_for_another_cooloff(pool: PgPool) {
    let app = spawn_app(pool).await;
    let users = scripted("u", 12, Behaviour::ServerError);
    import_emis(&app, &users).await;
    let engine = app.engine_with(&breaker_vars(&app));
    sweep_with(&engine).await;
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "open");

    app.advance(TimeDelta::seconds(61));
    recheck_all(&app).await;
    let calls = app.sim.calls().emis.sessions;
    sweep_with(&engine).await;
    assert_eq!(app.sim.calls().emis.sessions, calls + 1, "one probe, no more");
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "open");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_breaker_opened_by_one_process_stops_the_others_calls(pool: PgPool) {
    let app = spawn_app(pool).await;
    let users = scripted("u", 20, Behaviour::Valid);
    import_emis(&app, &users).await;
    app.sim.set_outage(Supplier::Emis, true);
    let a = app.engine_with(&breaker_vars(&app));
    sweep_with(&a).await;
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "open");

    // Another process, started after, with work of its own: it makes no call either.
    app.sim.set_outage(Supplier::Emis, false);
    let more = scripted("v", 10, Behaviour::Valid);
    import_emis(&app, &more).await;
    let b = app.engine_with(&breaker_vars(&app));
    let calls = app.sim.calls().emis.sessions;
    let report = sweep_with(&b).await;
    assert_eq!(app.sim.calls().emis.sessions, calls);
    assert_eq!(report.outcomes.get("skipped"), Some(&10));
    assert_eq!(metric(&b, "im1_supplier_circuit_open{supplier=\"emis\"}"), Some(1.0));
}

/// A breaker that opens on one transient call and is half-open at once (no cool-off),
/// with retries: the first transient answer makes the check's retry meet a half-open
/// breaker. A long check timeout keeps a lost probe from being presumed lost (and sent
/// again) within the tests' few minutes.
fn instant_half_open_vars(app: &TestApp) -> HashMap<String, String> {
    with(
        app,
        &[
            ("IM1_CHECK_TIMEOUT", "10m"),
            ("IM1_BREAKER_MIN_CALLS", "1"),
            ("IM1_BREAKER_COOLDOWN", "0s"),
            ("IM1_RETRY_ATTEMPTS", "2"),
            ("IM1_RETRY_MAX_DELAY", "10ms"),
            ("IM1_CONCURRENCY", "1"),
        ],
    )
}

// Found by the soak: a check about to retry asked the half-open breaker for admission,
// took the probe and returned without sending it, so no probe ever reported and every
// later check of that supplier was skipped until the process restarted.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_retry_never_takes_the_half_open_probe(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = app.emis_user("u", &["server_error", "valid"]).await;
    let engine = app.engine_with(&instant_half_open_vars(&app));
    let first = sweep_with(&engine).await;
    assert_eq!(first.outcomes.get("transient"), Some(&1), "{first:?}");
    assert_eq!(app.sim.token_calls(&token), 1, "the breaker opened: no retry");

    // Once the backoff is over the same process sends the probe; it answers, and closes
    // the breaker.
    app.advance(TimeDelta::minutes(2));
    let second = sweep_with(&engine).await;
    assert_eq!(app.sim.token_calls(&token), 2, "the probe was sent: {second:?}");
    assert_eq!(app.row("u").await.status, "valid");
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "closed");
}

// Found by the soak: a canary probed at a sweep's start took the half-open breaker's probe
// and called as an ordinary check, never reporting, so the breaker stayed half-open. A
// canary is now the probe itself, called once, and its answer decides.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_canary_probed_while_half_open_is_the_breakers_probe(pool: PgPool) {
    let app = spawn_app(pool).await;
    let canary = app.emis_user("canary", &["valid"]).await;
    let users = scripted("u", 12, Behaviour::Valid);
    import_emis(&app, &users).await;
    app.sim.set_outage(Supplier::Emis, true);
    let engine = app.engine_with(&breaker_vars(&app));
    sweep_with(&engine).await;
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "open");

    // The outage ends and a canary is added; after the cool-off the breaker is half-open as
    // the next sweep starts, when canaries are probed. The canary's first answer is a 500:
    // the probe fails, the breaker opens for another cool-off, and the canary failed.
    app.sim.set_outage(Supplier::Emis, false);
    app.sim.script(&canary, vec![Step::new(Behaviour::ServerError), Step::new(Behaviour::Valid)]);
    im1_revalidator::store::canaries::add(&app.pool, "canary", None, app.clock.now_utc()).await.unwrap();
    let canary_outcome =
        || async { im1_revalidator::store::canaries::list(&app.pool, None).await.unwrap()[0].last_outcome.clone() };
    app.advance(TimeDelta::seconds(61));
    recheck_all(&app).await;
    let calls = app.sim.calls().emis.sessions;
    let report = sweep_with(&engine).await;
    assert_eq!(app.sim.calls().emis.sessions, calls + 1, "one call, the canary as the probe, no retry: {report:?}");
    assert_eq!(canary_outcome().await.as_deref(), Some("transient"));
    assert_eq!(report.canary_failed, vec![Supplier::Emis]);
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "open", "the failed probe re-opened it");

    // After another cool-off the canary, again the probe, answers valid: the breaker closes
    // and the rows are checked in the same sweep.
    app.advance(TimeDelta::seconds(61));
    recheck_all(&app).await;
    let report = sweep_with(&engine).await;
    assert!(report.canary_failed.is_empty(), "{report:?}");
    assert_eq!(canary_outcome().await.as_deref(), Some("valid"));
    assert_eq!(supplier_state(&app, "emis").await.breaker_state, "closed");
    for (user, _) in &users {
        assert_eq!(app.row(user).await.status, "valid", "{user}");
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_half_open_probe_that_never_reports_is_sent_again(pool: PgPool) {
    use im1_revalidator::safety::{Admission, Config, Safety};

    let app = spawn_app(pool).await;
    let settings = Settings::from_vars(&instant_half_open_vars(&app)).unwrap();
    let config = Config::from_settings(&settings);
    assert_eq!(config.probe_lost_after, 2 * settings.check_timeout);
    let safety = Safety::new(
        app.pool.clone(),
        std::sync::Arc::new(app.clock.clone()),
        std::sync::Arc::new(im1_revalidator::metrics::Metrics::new()),
        uuid::Uuid::new_v4(),
        "test",
        config,
        &im1_revalidator::safety::throttles(&settings),
    );
    // One transient call opens the breaker, and with no cool-off it is half-open.
    assert_eq!(safety.admit(Supplier::Emis), Admission::Call);
    safety.record_call(Supplier::Emis, true);
    assert!(!safety.calls_allowed(Supplier::Emis));
    assert_eq!(safety.admit(Supplier::Emis), Admission::Probe);
    let turned_away = Admission::Skip { why: "breaker_half_open", retry_after: None };
    assert_eq!(safety.admit(Supplier::Emis), turned_away, "one probe out at a time");

    // The probe is lost (its check dropped, say): until it is presumed lost nothing else
    // goes out; then another probe does.
    let lost_after = TimeDelta::from_std(config.probe_lost_after).unwrap();
    app.advance(lost_after - TimeDelta::milliseconds(1));
    assert_eq!(safety.admit(Supplier::Emis), turned_away);
    app.advance(TimeDelta::milliseconds(1));
    assert_eq!(safety.admit(Supplier::Emis), Admission::Probe);
    assert_eq!(safety.admit(Supplier::Emis), turned_away);

    // This one reports a real answer: the breaker closes.
    let answered = im1_revalidator::suppliers::Evidence::detail("a real answer");
    safety.probe_result(Supplier::Emis, &im1_revalidator::suppliers::Outcome::Valid, &answered).await;
    assert!(safety.calls_allowed(Supplier::Emis));
    assert_eq!(safety.admit(Supplier::Emis), Admission::Call);
}

fn guard_vars(app: &TestApp) -> HashMap<String, String> {
    with(app, &[("IM1_GUARD_MIN_CHECKS", "50"), ("IM1_GUARD_THRESHOLD", "0.1"), ("IM1_GUARD_WINDOW", "1h")])
}

/// `n` users from `prefix`, every third answering not registered.
fn population(prefix: &str, n: usize) -> Vec<(String, Vec<Step>)> {
    (0..n)
        .map(|i| {
            let b = if i % 3 == 0 { Behaviour::NotRegistered } else { Behaviour::Valid };
            (format!("{prefix}{i:02}"), script(&[b]))
        })
        .collect()
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_guard_trips_on_an_invalid_share_split_between_two_processes(pool: PgPool) {
    let app = spawn_app(pool).await;
    import_emis(&app, &population("a", 30)).await;
    let a = app.engine_with(&guard_vars(&app));
    let report = a
        .sweep(
            SweepRequest { supplier: Some(Supplier::Emis), dry_run: false, trigger: Trigger::Command },
            im1_revalidator::shutdown::Shutdown::never(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcomes.get("suspect"), Some(&10));
    assert!(supplier_state(&app, "emis").await.guard_held_since.is_none(), "30 checks: below the minimum");

    // The other process's 30 checks, 10 invalid: neither reached 50 alone.
    import_emis(&app, &population("b", 30)).await;
    let b = app.engine_with(&guard_vars(&app));
    sweep_with(&b).await;
    assert!(supplier_state(&app, "emis").await.guard_held_since.is_some(), "60 checks, a third invalid");
    assert_eq!(metric(&b, "im1_invalidation_guard_held{supplier=\"emis\"}"), Some(1.0));

    // Confirmations come a quarter of an hour later: all held, no user flagged.
    app.advance(TimeDelta::minutes(16));
    let confirm = sweep_with(&a).await;
    assert!(confirm.outcomes.get("held").copied().unwrap_or(0) >= 10, "{confirm:?}");
    assert_eq!(confirm.newly_refresh_required, 0);
    let row = app.row("a00").await;
    assert_eq!(
        (row.status.as_str(), row.last_outcome.as_deref(), row.refresh_required),
        ("unchecked", Some("held"), false)
    );
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_held_verdicts WHERE supplier = 'emis'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(held >= 10);
    let flagged = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM im1_credentials WHERE refresh_required")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(flagged().await, 0);

    // The operator looks, judges the wave genuine, and releases it.
    let env = vec![("DATABASE_URL".to_owned(), database_url(&app.pool))];
    let (code, out, err) =
        outcome(&run_binary(&["guard", "list", "--supplier", "emis"], env.clone(), String::new()).await);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("A81001"), "held verdicts by practice: {out}");
    let (code, out, err) = outcome(&run_binary(&["guard", "release", "--supplier", "emis"], env, String::new()).await);
    assert_eq!(code, 0, "{err}");
    // Held confirmations flag their users; a held first strike becomes only suspect.
    let now_flagged = flagged().await;
    assert!(now_flagged >= 10 && now_flagged <= held, "{now_flagged} of {held}: {out}");
    assert_eq!(app.row("a00").await.status, "invalid");
    assert!(supplier_state(&app, "emis").await.guard_held_since.is_none(), "released: the guard is clear");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_supplier_configuration_error_stops_that_supplier_for_the_sweep(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut vars = with(&app, &[("IM1_CONCURRENCY", "1"), ("IM1_BATCH_SIZE", "4")]);
    vars.insert("IM1_TPP_URL".into(), app.running.tpp_url());
    vars.insert("IM1_TPP_PROVIDER_ID".into(), "wrong-provider".into());
    let lines: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            let account = format!("acc-{i}");
            app.sim.script(&account, script(&[Behaviour::TppInvalidProvider]));
            serde_json::json!({"user_id": format!("t{i}"), "supplier": "tpp", "ods_code": "B81001",
                               "token": {"account_id": account, "passphrase": "pass"}})
        })
        .collect();
    app.import(&lines).await;
    app.emis_user("e1", &["valid"]).await;
    let engine = app.engine_with(&vars);
    let report = sweep_with(&engine).await;
    assert_eq!(report.stopped, vec![Supplier::Tpp]);
    assert_eq!(app.sim.calls().tpp.authenticate, 1, "the first answer stops the supplier");
    assert_eq!(app.row("e1").await.status, "valid", "other suppliers carry on");
    assert_eq!(metric(&engine, "im1_supplier_config_errors_total{supplier=\"tpp\"}"), Some(1.0));
    let mut outcomes = HashMap::new();
    for i in 0..10 {
        let row = app.row(&format!("t{i}")).await;
        assert_eq!(row.status, "unchecked");
        *outcomes.entry(row.last_outcome.clone()).or_insert(0) += 1;
    }
    assert_eq!(outcomes.get(&Some("supplier_config_error".to_owned())), Some(&1), "{outcomes:?}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn practice_unavailable_is_no_verdict_backs_off_and_is_counted(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("closed", &["practice_not_live"]).await;
    let engine = app.engine();
    let now = app.clock.now_utc();
    sweep_with(&engine).await;
    let row = app.row("closed").await;
    assert_eq!((row.status.as_str(), row.last_outcome.as_deref()), ("unchecked", Some("practice_unavailable")));
    assert!(row.next_check_at >= now + TimeDelta::seconds(50), "backed off");
    assert_eq!(metric(&engine, "im1_checks_total{supplier=\"emis\",outcome=\"practice_unavailable\"}"), Some(1.0));
    let ods: String = sqlx::query_scalar(
        "SELECT ods_code FROM im1_credential_events WHERE user_id = 'closed' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ods, "A81001", "the event carries the practice; no metric label does");
    assert!(!engine.metrics.encode().contains("A81001"));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_dry_run_changes_no_shared_state(pool: PgPool) {
    let app = spawn_app(pool).await;
    let users = scripted("u", 20, Behaviour::NotRegistered);
    import_emis(&app, &users).await;
    let engine = app.engine_with(&with(&app, &[("IM1_GUARD_MIN_CHECKS", "5")]));
    let report = engine
        .sweep(
            SweepRequest { supplier: None, dry_run: true, trigger: Trigger::Command },
            im1_revalidator::shutdown::Shutdown::never(),
        )
        .await
        .unwrap();
    assert_eq!(report.checks, 20);
    assert!(supplier_state(&app, "emis").await.guard_held_since.is_none());
    let counted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_supplier_counts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(counted, 0);
    assert_eq!(app.row("u00").await.last_outcome, None, "no verdict written");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_failing_canary_blocks_that_suppliers_verdicts(pool: PgPool) {
    let app = spawn_app(pool).await;
    // The canary's token was good; the supplier now calls it unregistered, then recovers.
    let canary = app.emis_user("canary", &["not_registered", "valid"]).await;
    let users = scripted("u", 10, Behaviour::NotRegistered);
    import_emis(&app, &users).await;
    im1_revalidator::store::canaries::add(&app.pool, "canary", Some("ops test account"), app.clock.now_utc())
        .await
        .unwrap();
    let engine = app.engine();
    let report = sweep_with(&engine).await;
    assert_eq!(report.canary_failed, vec![Supplier::Emis]);
    assert_eq!(report.outcomes.get("skipped"), Some(&11), "{report:?}");
    assert_eq!(report.outcomes.get("suspect"), None, "no verdict, not even a first strike");
    assert_eq!(app.sim.token_calls("guid-u00"), 0, "no call for the supplier's rows");
    let row = app.row("u00").await;
    assert_eq!((row.status.as_str(), row.last_outcome.as_deref()), ("unchecked", Some("skipped")));
    assert_eq!(app.events("u00").await.last().unwrap().evidence["detail"], "canary_failed");
    assert_eq!(metric(&engine, "im1_canary_failures_total{supplier=\"emis\"}"), Some(1.0));
    let probe = &im1_revalidator::store::canaries::list(&app.pool, None).await.unwrap()[0];
    assert_eq!(probe.last_outcome.as_deref(), Some("invalid"));
    assert_eq!(app.row("canary").await.status, "unchecked", "a probe never changes the canary's own row");

    // The canary answers valid again: verdicts flow (first strikes here).
    app.advance(TimeDelta::minutes(5));
    recheck_all(&app).await;
    let report = sweep_with(&engine).await;
    assert!(report.canary_failed.is_empty());
    assert_eq!(report.outcomes.get("suspect"), Some(&10), "{report:?}");
    assert!(app.sim.token_calls(&canary) >= 2, "probed again, outside the once-per-cycle rule");
}

/// Calls of `times` (seconds) in the busiest window of `width` seconds.
fn busiest(times: &[f64], width: f64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn two_processes_together_stay_within_the_shared_rate_limit(pool: PgPool) {
    let app = spawn_app(pool).await;
    let users = scripted("u", 70, Behaviour::Valid);
    import_emis(&app, &users).await;
    let vars = with(
        &app,
        &[("IM1_EMIS_RATE", "20"), ("IM1_EMIS_BURST", "4"), ("IM1_EMIS_MAX_IN_FLIGHT", "4"), ("IM1_BATCH_SIZE", "10")],
    );
    let (a, b) = (app.engine_with(&vars), app.engine_with(&vars));
    // Both are live before either sweeps, as replicas of a deployment are.
    a.safety.sync().await.unwrap();
    b.safety.sync().await.unwrap();
    let (ra, rb) = tokio::join!(sweep_with(&a), sweep_with(&b));
    assert_eq!(ra.checks + rb.checks, 70);
    assert!(ra.checks > 0 && rb.checks > 0, "both processes worked: {} and {}", ra.checks, rb.checks);
    assert_eq!(a.safety.throttle(Supplier::Emis).unwrap().share().processes, 2);

    let times = app.sim.call_times(Supplier::Emis);
    assert!(times.len() >= 70, "{} calls", times.len());
    // Each process: 10/s with a burst of 2; together never more than 20/s plus the bursts.
    let peak = busiest(&times, 1.0);
    // 20/s plus the two bursts of 2, plus 2 for the jitter of arrival times.
    assert!(peak <= 26, "{peak} calls in one second");
    let span = times.last().unwrap() - times.first().unwrap();
    let rate = (times.len() - 4) as f64 / span;
    assert!(rate <= 21.0, "{rate:.1} calls per second over {span:.2}s");
    assert!(app.sim.max_in_flight(Supplier::Emis) <= 4);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_sweep_process_joining_another_shares_the_rate_limit(pool: PgPool) {
    let app = spawn_app(pool).await;
    import_emis(&app, &scripted("u", 150, Behaviour::Valid)).await;
    let env = binary_env(
        database_url(&app.pool),
        &app,
        &[
            ("IM1_EMIS_RATE", "20"),
            ("IM1_EMIS_BURST", "4"),
            // Few rows claimed ahead, so the one that joins later finds work left.
            ("IM1_CONCURRENCY", "4"),
            ("IM1_BATCH_SIZE", "2"),
        ],
    );
    // One starts alone at the whole rate; the other joins while it is sweeping.
    let first = tokio::spawn(run_binary(&["sweep", "--json"], env.clone(), String::new()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = run_binary(&["sweep", "--json"], env, String::new()).await;
    let a = first.await.unwrap();
    let report_checks = |out: &std::process::Output| {
        let (code, stdout, stderr) = outcome(out);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["checks"].as_u64().unwrap()
    };
    let checks = report_checks(&a) + report_checks(&b);
    assert_eq!(checks, 150);
    let (ca, cb) = (report_checks(&a), report_checks(&b));
    assert!(cb >= 5, "the later process found work too: {ca} and {cb}");
    let times = app.sim.call_times(Supplier::Emis);
    let peak = busiest(&times, 1.0);
    // 20/s plus the burst of 4, plus 2 for the jitter of arrival times on a loaded machine.
    // Without the joiner's wait this measured 30.
    assert!(peak <= 26, "{peak} calls in one second: the two processes must share 20/s (burst 4)");
    let processes: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_processes").fetch_one(&app.pool).await.unwrap();
    assert_eq!(processes, 0, "each process removed its heartbeat row on exit");
}

/// Every finished check is counted in the shared minute counts (what the console's
/// "checks per minute" reads), whatever its outcome, once per check however many calls it
/// made; a dry run counts nothing (`a_dry_run_changes_no_shared_state`).
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn every_finished_check_is_counted_once_in_the_shared_minutes(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut users = scripted("ok", 4, Behaviour::Valid);
    users.extend(scripted("gone", 3, Behaviour::NotRegistered));
    users.extend(scripted("down", 2, Behaviour::ServerError));
    import_emis(&app, &users).await;
    // Two retries (a millisecond apart) for the failing ones; the breaker left closed.
    let vars =
        with(&app, &[("IM1_RETRY_ATTEMPTS", "2"), ("IM1_RETRY_MAX_DELAY", "1ms"), ("IM1_BREAKER_MIN_CALLS", "1000")]);
    let report = sweep_with(&app.engine_with(&vars)).await;
    assert_eq!(report.checks, 9);
    let (checks, calls): (i64, i64) =
        sqlx::query_as("SELECT sum(checks)::int8, sum(calls)::int8 FROM im1_supplier_counts WHERE supplier = 'emis'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(checks, 9, "one count per check");
    assert!(calls > checks, "the failing ones were retried, so calls ({calls}) outnumber checks");
    let minutes =
        im1_revalidator::store::console::minutes(&app.pool, app.clock.now_utc() - TimeDelta::hours(1)).await.unwrap();
    assert_eq!(minutes.iter().filter(|m| m.supplier == "emis").map(|m| m.checks).sum::<i64>(), 9);
}
