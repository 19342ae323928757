//! The sweep end to end: claims, verdicts, two strikes, transient safety, leases, skipped
//! rows, Retry-After and concurrency, all against the simulator over HTTP.

use std::collections::HashMap;

use chrono::TimeDelta;
use im1_revalidator::shutdown::Shutdown;
use im1_revalidator::sweep::{SweepRequest, Trigger};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::helpers::*;
use im1_revalidator::model::{Reason, Supplier};
use im1_revalidator::store::claims::{Claimed, Verdict, WriteKind};

/// Claims every due EMIS credential as process `owner` would, with a two-minute lease.
async fn claim_all(app: &TestApp, owner: uuid::Uuid) -> Vec<Claimed> {
    im1_revalidator::store::claims::claim(
        &app.pool,
        Supplier::Emis,
        t0(),
        t0(),
        t0() + TimeDelta::minutes(2),
        owner,
        100,
    )
    .await
    .unwrap()
}

/// The verdict a process holding `claimed` would write after observing `observation`.
fn verdict_for(app: &TestApp, claimed: &Claimed, observation: im1_revalidator::policy::Observation) -> Verdict {
    Verdict {
        user_id: claimed.user_id.clone(),
        fence: claimed.fence,
        from_status: claimed.standing.status,
        decision: im1_revalidator::policy::decide(
            &claimed.standing,
            &observation,
            t0(),
            &im1_revalidator::sweep::rules(&app.settings()),
            0.0,
        ),
        evidence: serde_json::json!({}),
        held: None,
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn valid_token_is_verified_and_rescheduled_about_a_day_later(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &["valid"]).await;
    let report = app.sweep().await;
    assert_eq!(report.checks, 1);
    let row = app.row("u1").await;
    assert_eq!(row.status, "valid");
    assert_eq!(row.last_outcome.as_deref(), Some("valid"));
    assert_eq!(row.last_verified_at, Some(t0()));
    let wait = row.next_check_at - t0();
    assert!(wait >= TimeDelta::minutes(24 * 54) && wait <= TimeDelta::minutes(24 * 66), "{wait}");
    // Not due again: a second sweep makes no call.
    let calls = app.sim.calls().emis.sessions;
    assert_eq!(app.sweep().await.checks, 0);
    assert_eq!(app.sim.calls().emis.sessions, calls);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn two_strikes_confirm_only_after_the_delay(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut listener = PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen("im1_credential_status").await.unwrap();
    app.emis_user("u1", &["not_registered", "invalid_linkage"]).await;
    // The import itself notifies (a new row).
    let first = listener.recv().await.unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(first.payload()).unwrap()["status"], "unchecked");

    app.sweep().await;
    let row = app.row("u1").await;
    assert_eq!(row.status, "unchecked", "one invalid answer is not a verdict");
    assert_eq!(row.last_outcome.as_deref(), Some("suspect"));
    assert!(!row.refresh_required);
    assert_eq!(row.next_check_at, t0() + TimeDelta::minutes(15));

    app.advance(TimeDelta::minutes(14));
    assert_eq!(app.sweep().await.checks, 0, "not due before the confirmation delay");

    app.advance(TimeDelta::minutes(1));
    app.sweep().await;
    let row = app.row("u1").await;
    assert_eq!(row.status, "invalid");
    assert_eq!(row.reason.as_deref(), Some("token_rejected"), "the confirming answer's own reason");
    assert!(row.refresh_required);
    assert_eq!(row.invalidated_at, Some(t0() + TimeDelta::minutes(15)));

    let notified = listener.recv().await.unwrap();
    let payload: serde_json::Value = serde_json::from_str(notified.payload()).unwrap();
    assert_eq!(payload, serde_json::json!({"user_id": "u1", "status": "invalid", "refresh_required": true}));

    let events = app.events("u1").await;
    let kinds: Vec<(&str, Option<&str>)> =
        events.iter().map(|e| (e.to_status.as_str(), e.outcome.as_deref())).collect();
    assert_eq!(kinds, [("unchecked", None), ("unchecked", Some("suspect")), ("invalid", Some("invalid"))]);
    let evidence = &events[2].evidence;
    assert_eq!(evidence["http_status"], 400);
    assert_eq!(evidence["code"], "-1105");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn transient_answers_never_change_status_or_clear_a_strike(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("good", &["valid", "unavailable", "server_error", "garbage", "rate_limited", "hang"]).await;
    app.emis_user("bad", &["not_registered", "unavailable", "not_registered"]).await;
    app.sweep().await;
    assert_eq!(app.row("good").await.status, "valid");
    for step in 0..5 {
        app.advance(TimeDelta::days(2));
        app.sweep().await;
        let good = app.row("good").await;
        assert_eq!(good.status, "valid", "step {step}");
        assert!(!good.refresh_required);
        assert_eq!(good.last_outcome.as_deref(), Some("transient"), "step {step}");
        if step == 0 {
            let bad = app.row("bad").await;
            assert_eq!(bad.last_outcome.as_deref(), Some("transient"));
            assert_eq!(bad.status, "unchecked");
        }
        if step == 1 {
            assert_eq!(app.row("bad").await.status, "invalid", "the strike survived the transient answer");
        }
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn supplier_outage_mid_life_changes_no_status(pool: PgPool) {
    let app = spawn_app(pool).await;
    for i in 0..20 {
        app.emis_user(&format!("u{i}"), &[]).await;
    }
    app.sweep().await;
    app.sim.set_outage(im1_revalidator::model::Supplier::Emis, true);
    app.advance(TimeDelta::days(2));
    let report = app.sweep().await;
    assert_eq!(report.outcomes.get("transient"), Some(&20));
    assert_eq!(report.status_changes, 0);
    let flagged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_credential_status WHERE status <> 'valid' OR refresh_required")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(flagged, 0);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn retry_after_is_honoured_by_automatic_scheduling(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = "guid-throttled";
    let step: im1_revalidator::simulator::Step =
        serde_json::from_value(serde_json::json!({"behaviour": "rate_limited", "retry_after_secs": 7200})).unwrap();
    app.sim.script(token, vec![step]);
    app.import(&[emis_line("u1", token)]).await;
    app.sweep().await;
    let row = app.row("u1").await;
    assert_eq!(row.last_outcome.as_deref(), Some("transient"));
    assert!(row.next_check_at >= t0() + TimeDelta::hours(2), "{}", row.next_check_at);
    app.advance(TimeDelta::minutes(119));
    assert_eq!(app.sweep().await.checks, 0);
    app.advance(TimeDelta::minutes(1));
    assert_eq!(app.sweep().await.checks, 1);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn operator_recheck_may_undercut_retry_after(pool: PgPool) {
    let app = spawn_app(pool).await;
    let step: im1_revalidator::simulator::Step =
        serde_json::from_value(serde_json::json!({"behaviour": "unavailable", "retry_after_secs": 3600})).unwrap();
    app.sim.script("guid-x", vec![step]);
    app.import(&[emis_line("u1", "guid-x")]).await;
    app.sweep().await;
    let filter = im1_revalidator::store::status::RecheckFilter { supplier: None, user_id: Some("u1".into()) };
    let n = im1_revalidator::store::status::recheck(&app.pool, &filter, t0()).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(app.sweep().await.checks, 1);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn two_concurrent_sweepers_check_each_credential_exactly_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut lines = Vec::new();
    for i in 0..600 {
        lines.push(emis_line(&format!("u{i:04}"), &format!("guid-{i:04}")));
    }
    app.import(&lines).await;
    let mut vars = app.vars.clone();
    vars.insert("IM1_CONCURRENCY".into(), "100".into());
    let (a, b) = (app.engine_with(&vars), app.engine_with(&vars));
    let (ra, rb) = tokio::join!(sweep_with(&a), sweep_with(&b));
    assert_eq!(ra.checks + rb.checks, 600, "a={} b={}", ra.checks, rb.checks);
    for i in 0..600 {
        assert_eq!(app.sim.token_calls(&format!("guid-{i:04}")), 1, "guid-{i:04}");
    }
    let valid: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE status = 'valid' AND lease_expires_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(valid, 600);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_dead_sweepers_claims_are_recovered_after_the_lease(pool: PgPool) {
    let app = spawn_app(pool).await;
    for i in 0..5 {
        app.emis_user(&format!("u{i}"), &[]).await;
    }
    // A process claims everything and dies before writing anything back.
    let dead = uuid::Uuid::new_v4();
    let claimed = claim_all(&app, dead).await;
    assert_eq!(claimed.len(), 5);
    assert_eq!(app.sweep().await.checks, 0, "live leases block others");
    app.advance(TimeDelta::minutes(2));
    let report = app.sweep().await;
    assert_eq!(report.checks, 5, "expired leases are reclaimed");
    // The dead process's late write is fenced off.
    let stale = claimed.into_iter().next().unwrap();
    let late = verdict_for(&app, &stale, im1_revalidator::policy::Observation::Invalid(Reason::AccessRevoked));
    let written = im1_revalidator::store::claims::write_back(&app.pool, &[late], t0(), WriteKind::Check).await.unwrap();
    assert_eq!(written.written, 0);
    assert_eq!(written.lost, vec![stale.user_id.clone()]);
    assert_eq!(app.row(&stale.user_id).await.last_outcome.as_deref(), Some("valid"));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_token_replaced_during_a_check_keeps_no_stale_verdict(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &[]).await;
    let claimed = claim_all(&app, uuid::Uuid::new_v4()).await;
    app.import(&[emis_line("u1", "guid-new")]).await;
    let c = &claimed[0];
    let verdict = verdict_for(&app, c, im1_revalidator::policy::Observation::Valid);
    let written =
        im1_revalidator::store::claims::write_back(&app.pool, &[verdict], t0(), WriteKind::Check).await.unwrap();
    assert_eq!(written.written, 0);
    let row = app.row("u1").await;
    assert_eq!(row.status, "unchecked");
    assert_eq!(row.next_check_at, t0(), "the new token is due at once, unclaimed");
    assert_eq!(app.sweep().await.checks, 1);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn unusable_rows_are_skipped_never_judged(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("unknown-key", &["not_registered"]).await;
    app.emis_user("tampered", &["not_registered"]).await;
    app.emis_user("moved", &["not_registered"]).await;
    app.emis_user("fields", &["not_registered"]).await;
    // Written around the service: a ciphertext under a key we do not hold, a flipped
    // byte, another user's ciphertext, and a token JSON lacking its supplier's field.
    let mut other = app.vars.clone();
    other.insert("IM1_ENCRYPTION_KEYS".into(), KEY_B.into());
    let b = im1_revalidator::config::Settings::from_vars(&other).unwrap();
    let b = b.keys.as_ref().unwrap();
    let foreign = b.encrypt("unknown-key", &secrecy::SecretString::from(r#"{"access_identity_guid":"g"}"#));
    sqlx::query("UPDATE im1_credentials SET token_ciphertext = $1 WHERE user_id = 'unknown-key'")
        .bind(foreign)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE im1_credentials SET token_ciphertext = overlay(token_ciphertext placing '\\xff'::bytea from length(token_ciphertext) - 3) WHERE user_id = 'tampered'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE im1_credentials SET token_ciphertext = (SELECT token_ciphertext FROM im1_credentials WHERE user_id = 'fields') WHERE user_id = 'moved'")
        .execute(&app.pool)
        .await
        .unwrap();
    let settings = app.settings();
    let a = settings.keys.as_ref().unwrap();
    let empty = a.encrypt("fields", &secrecy::SecretString::from(r#"{"wrong_field":"x"}"#));
    sqlx::query("UPDATE im1_credentials SET token_ciphertext = $1 WHERE user_id = 'fields'")
        .bind(empty)
        .execute(&app.pool)
        .await
        .unwrap();

    let engine = app.engine();
    for _ in 0..3 {
        sweep_with(&engine).await;
        app.advance(TimeDelta::hours(2));
    }
    assert_eq!(app.sim.calls().emis.sessions, 0, "no supplier call for an unusable row");
    for (user, why) in [
        ("unknown-key", "unknown_key_id"),
        ("tampered", "decryption_failed"),
        ("moved", "decryption_failed"),
        ("fields", "token_fields_missing"),
    ] {
        let row = app.row(user).await;
        assert_eq!(row.status, "unchecked", "{user}");
        assert!(!row.refresh_required, "{user}");
        assert_eq!(row.last_outcome.as_deref(), Some("skipped"), "{user}");
        assert_eq!(row.last_checked_at, None, "{user}: no check was made");
        let events = app.events(user).await;
        let skip = events.iter().find(|e| e.outcome.as_deref() == Some("skipped")).expect("a skip event");
        assert_eq!(skip.evidence["detail"], why, "{user}");
        assert_eq!(events.len(), 2, "{user}: one event for the change, none for repeats");
    }
    let metrics = engine.metrics.encode();
    assert!(metrics.contains("im1_rows_skipped_total{supplier=\"emis\",why=\"unknown_key_id\"} 3"), "{metrics}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn dry_run_checks_but_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &["not_registered"]).await;
    app.emis_user("u2", &["valid"]).await;
    let before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_credential_events").fetch_one(&app.pool).await.unwrap();
    let report = app
        .engine()
        .sweep(SweepRequest { supplier: None, dry_run: true, trigger: Trigger::Command }, Shutdown::never())
        .await
        .unwrap();
    assert_eq!(report.checks, 2);
    let changes: HashMap<&str, &str> =
        report.changes.iter().map(|c| (c.user_id.as_str(), c.outcome.as_deref().unwrap_or(""))).collect();
    assert_eq!(changes, HashMap::from([("u1", "suspect"), ("u2", "valid")]));
    assert_eq!(app.row("u1").await.last_outcome, None);
    assert_eq!(app.row("u2").await.status, "unchecked");
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_credential_events").fetch_one(&app.pool).await.unwrap();
    assert_eq!(before, after);
    let sweeps: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_sweeps").fetch_one(&app.pool).await.unwrap();
    assert_eq!(sweeps, 0);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn every_check_is_counted_and_every_sweep_recorded(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &["valid"]).await;
    app.emis_user("u2", &["unavailable"]).await;
    let engine = app.engine();
    sweep_with(&engine).await;
    let text = engine.metrics.encode();
    assert!(text.contains("im1_checks_total{supplier=\"emis\",outcome=\"valid\"} 1"), "{text}");
    assert!(text.contains("im1_checks_total{supplier=\"emis\",outcome=\"transient\"} 1"), "{text}");
    let last = im1_revalidator::store::sweeps::last_success(&app.pool).await.unwrap().expect("recorded");
    assert_eq!(last.checks, 2);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn shutdown_before_checks_start_gives_claims_back(pool: PgPool) {
    let app = spawn_app(pool).await;
    for i in 0..10 {
        app.emis_user(&format!("u{i}"), &["hang"]).await;
    }
    let mut vars = app.vars.clone();
    vars.insert("IM1_CONCURRENCY".into(), "2".into());
    vars.insert("IM1_SHUTDOWN_GRACE".into(), "0s".into());
    let engine = app.engine_with(&vars);
    let (trigger, stop) = im1_revalidator::shutdown::channel();
    let sweep = engine.sweep(SweepRequest { supplier: None, dry_run: false, trigger: Trigger::Command }, stop);
    let fire = async {
        // Wait until both concurrency slots are taken by hanging checks, then stop.
        while app.sim.calls().emis.sessions < 2 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        trigger.fire();
    };
    let (report, ()) = tokio::join!(sweep, fire);
    let report = report.unwrap();
    assert!(report.interrupted);
    assert_eq!(report.released, 10);
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE lease_expires_at IS NOT NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(leased, 0, "every unfinished claim was given back");
    for i in 0..10 {
        app.sim.script(&format!("guid-u{i}"), steps(&["valid"]));
    }
    assert_eq!(app.sweep().await.checks, 10, "and is due again for anyone");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn old_events_are_pruned_in_batches_and_new_ones_kept(pool: PgPool) {
    let app = spawn_app(pool).await;
    for i in 0..3 {
        app.emis_user(&format!("u{i}"), &[]).await;
    }
    sqlx::query("UPDATE im1_credential_events SET at = at - interval '401 days'")
        .execute(&app.pool)
        .await
        .expect_err("events are append-only");
    // Events written 401 days ago (by a clock that far back) are past the default retention.
    app.clock.set(t0() - TimeDelta::days(401));
    app.emis_user("old", &[]).await;
    app.clock.set(t0());
    let engine = app.engine();
    im1_revalidator::sweep::schedule::prune_events(&engine, std::time::Duration::from_secs(400 * 86_400)).await;
    let left: Vec<String> = sqlx::query_scalar("SELECT user_id FROM im1_credential_events ORDER BY user_id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["u0", "u1", "u2"]);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn heartbeats_extend_only_our_claims_and_never_wait_on_a_locked_row(pool: PgPool) {
    let app = spawn_app(pool).await;
    for i in 0..3 {
        app.emis_user(&format!("u{i}"), &[]).await;
    }
    let me = uuid::Uuid::new_v4();
    let claimed = claim_all(&app, me).await;
    let mut held: Vec<(String, i64)> = claimed.iter().map(|c| (c.user_id.clone(), c.fence)).collect();
    held.sort();
    let later = t0() + TimeDelta::minutes(10);
    let extended = im1_revalidator::store::claims::extend_leases(&app.pool, &held, me, later).await.unwrap();
    assert_eq!(extended, 3);
    let someone_else =
        im1_revalidator::store::claims::extend_leases(&app.pool, &held, uuid::Uuid::new_v4(), later).await.unwrap();
    assert_eq!(someone_else, 0, "only the owner extends a claim");

    // Another transaction (an import replacing u0's token, say) holds u0's row.
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM im1_credentials WHERE user_id = 'u0' FOR UPDATE").execute(&mut *other).await.unwrap();
    let extended = im1_revalidator::store::claims::extend_leases(&app.pool, &held, me, later).await.unwrap();
    assert_eq!(extended, 2, "the locked row is skipped, not waited for");
    other.rollback().await.unwrap();
    let until: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT lease_expires_at FROM im1_credentials ORDER BY user_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(until, [later; 3]);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn priority_requests_are_served_between_sweeps(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("asked", &["valid"]).await;
    sweep_with(&app.engine()).await;
    // Verified a moment ago: not due for a day. Others are due now.
    for i in 0..6 {
        app.emis_user(&format!("due{i}"), &[]).await;
    }
    let p = &app.pool;
    assert!(im1_revalidator::store::priority::request(p, "asked", t0(), None).await.unwrap());
    assert!(!im1_revalidator::store::priority::request(p, "nobody", t0(), None).await.unwrap());
    assert!(im1_revalidator::store::priority::pending(p, "asked").await.unwrap());

    // Between sweeps, `run` serves only the requests.
    let report = app.engine().sweep_priority(Shutdown::never()).await.unwrap();
    assert_eq!(report.checks, 1);
    assert_eq!(app.sim.token_calls("guid-asked"), 2);
    assert!(!im1_revalidator::store::priority::pending(p, "asked").await.unwrap(), "the request is served");
    assert_eq!(app.row("due0").await.last_checked_at, None, "scheduled work waits for its sweep");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn priority_requests_never_starve_scheduled_work(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut lines = Vec::new();
    for i in 0..40 {
        lines.push(emis_line(&format!("u{i:02}"), &format!("guid-{i:02}")));
    }
    app.import(&lines).await;
    // Half of them also asked for a check now; batches of 4 take at most 2 of those.
    for i in 0..20 {
        im1_revalidator::store::priority::request(&app.pool, &format!("u{i:02}"), t0(), None).await.unwrap();
    }
    let mut vars = app.vars.clone();
    vars.insert("IM1_BATCH_SIZE".into(), "4".into());
    vars.insert("IM1_CONCURRENCY".into(), "1".into());
    let report = sweep_with(&app.engine_with(&vars)).await;
    assert_eq!(report.checks, 40, "every due credential checked once, asked or not");
    for i in 0..40 {
        assert_eq!(app.sim.token_calls(&format!("guid-{i:02}")), 1, "guid-{i:02}");
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE priority_requested_at IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
}

/// Retention at scale: a month wholly past the horizon is dropped as a partition (its rows
/// counted, never deleted one by one); the horizon's own month loses only its older rows;
/// events of a month not created yet wait in the default partition and move into their
/// month when it is created.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn retention_drops_whole_months_and_trims_the_horizons_month(pool: PgPool) {
    use chrono::{TimeZone, Utc};
    use im1_revalidator::store::events;
    let app = spawn_app(pool).await;
    let partition_of = |user: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT tableoid::regclass::text FROM im1_credential_events WHERE user_id = $1",
            )
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // Events in March and early and late June 2025; June's month created beforehand.
    let june = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
    assert_eq!(events::ensure_months(&app.pool, june).await.unwrap(), 4);
    app.clock.set(Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap());
    app.emis_user("march", &[]).await;
    app.clock.set(june + TimeDelta::days(2));
    app.emis_user("early-june", &[]).await;
    app.clock.set(june + TimeDelta::days(20));
    app.emis_user("late-june", &[]).await;
    assert_eq!(partition_of("march").await, "im1_credential_events_default");
    assert_eq!(partition_of("early-june").await, "im1_credential_events_y2025m06");

    // March's month is created late: its row moves out of the default partition.
    assert_eq!(events::ensure_months(&app.pool, Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap()).await.unwrap(), 4);
    assert_eq!(partition_of("march").await, "im1_credential_events_y2025m03");

    // The horizon falls on 10 June: March (and April, May) go whole; June keeps its late row.
    let pruned = events::prune(&app.pool, june + TimeDelta::days(10)).await.unwrap();
    assert_eq!(pruned, events::Pruned { dropped: 1, deleted: 1 });
    let left: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM im1_credential_events WHERE at < '2025-07-01' ORDER BY user_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(left, ["late-june"]);
    let months: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'im1_credential_events'::regclass AND c.relname < 'im1_credential_events_y2025m07'
          ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(months, ["im1_credential_events_default", "im1_credential_events_y2025m06"]);
}
