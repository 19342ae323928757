//! `guard list|release|discard`: held verdicts made through the real write path (claim,
//! then the write-back storing the held answer while the supplier's guard holds), then
//! released or discarded by the store functions and by the binary.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use im1_revalidator::model::{LastOutcome, Reason, Supplier};
use im1_revalidator::policy::{self, Observation};
use im1_revalidator::store::claims::{self, Claimed, Verdict, WriteKind};
use im1_revalidator::store::guard::{self, Resolved};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::helpers::*;

fn line(user: &str, ods: &str, token: &str) -> serde_json::Value {
    serde_json::json!({"user_id": user, "supplier": "emis", "ods_code": ods,
                       "token": {"access_identity_guid": token}})
}

/// The supplier's evidence for a held answer (what an EMIS rejection looks like).
fn evidence() -> serde_json::Value {
    serde_json::json!({"http_status": 400, "code": "-1105", "message": "Invalid linkage"})
}

/// Trips the EMIS guard, as the sweep would.
pub(crate) async fn hold_guard(app: &TestApp) {
    sqlx::query(
        "UPDATE im1_supplier_state SET guard_held_since = $1, \
         guard_evidence = '{\"checks\": 60, \"invalid\": 20}' WHERE supplier = 'emis'",
    )
    .bind(app.clock.now_utc())
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn claim_due(app: &TestApp) -> Vec<Claimed> {
    let now = app.clock.now_utc();
    claims::claim(&app.pool, Supplier::Emis, now, now, now + TimeDelta::minutes(2), uuid::Uuid::new_v4(), 100)
        .await
        .unwrap()
}

fn rules(app: &TestApp) -> policy::Rules {
    im1_revalidator::sweep::rules(&app.settings())
}

/// The verdict a sweep writes for `claimed` after `observation`, now.
fn verdict(app: &TestApp, claimed: &Claimed, observation: Observation, held: Option<Reason>) -> Verdict {
    Verdict {
        user_id: claimed.user_id.clone(),
        fence: claimed.fence,
        from_status: claimed.standing.status,
        decision: policy::decide(&claimed.standing, &observation, app.clock.now_utc(), &rules(app), 0.0),
        evidence: evidence(),
        held,
    }
}

/// Claims the due EMIS rows and writes, for each user in `answers`, the invalid answer the
/// guard holds (the others' claims are given back unjudged).
pub(crate) async fn hold_answers(app: &TestApp, answers: &[(&str, Reason)]) {
    let answers: HashMap<&str, Reason> = answers.iter().copied().collect();
    let claimed = claim_due(app).await;
    let mut verdicts = Vec::new();
    for c in &claimed {
        if let Some(reason) = answers.get(c.user_id.as_str()) {
            let held = Observation::NoVerdict { kind: LastOutcome::Held, retry_after: None };
            verdicts.push(verdict(app, c, held, Some(*reason)));
        }
    }
    assert_eq!(verdicts.len(), answers.len(), "every user to hold was due");
    let written = claims::write_back(&app.pool, &verdicts, app.clock.now_utc(), WriteKind::Check).await.unwrap();
    assert_eq!(written.held, answers.len() as u64);
    give_back_claims(app).await;
}

/// Gives back every claim still held, as a sweep does at its end.
async fn give_back_claims(app: &TestApp) {
    sqlx::query("UPDATE im1_credentials SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL")
        .execute(&app.pool)
        .await
        .unwrap();
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct GuardRow {
    guard_held_since: Option<DateTime<Utc>>,
    guard_window_from: Option<DateTime<Utc>>,
    guard_evidence: Option<serde_json::Value>,
    updated_at: Option<DateTime<Utc>>,
}

async fn guard_row(app: &TestApp) -> GuardRow {
    sqlx::query_as(
        "SELECT guard_held_since, guard_window_from, guard_evidence, updated_at \
         FROM im1_supplier_state WHERE supplier = 'emis'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn held_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM im1_held_verdicts").fetch_one(&app.pool).await.unwrap()
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_released_first_strike_is_only_suspect(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &[]).await;
    hold_guard(&app).await;
    hold_answers(&app, &[("u1", Reason::NotRegistered)]).await;
    let row = app.row("u1").await;
    assert_eq!((row.status.as_str(), row.last_outcome.as_deref()), ("unchecked", Some("held")));

    app.advance(TimeDelta::hours(1));
    let now = app.clock.now_utc();
    let resolved = guard::release(&app.pool, Supplier::Emis, None, now, &rules(&app)).await.unwrap();
    assert_eq!(
        resolved,
        Resolved { applied: 1, newly_flagged: 0, stale: 0, discarded: 0, remaining: 0, guard_cleared: true }
    );
    let row = app.row("u1").await;
    assert_eq!(row.status, "unchecked", "one invalid answer is not a verdict, released or not");
    assert_eq!(row.last_outcome.as_deref(), Some("suspect"));
    assert!(!row.refresh_required);
    assert_eq!(row.next_check_at, now + TimeDelta::minutes(15), "the second strike comes no sooner");

    let events = app.events("u1").await;
    let last = events.last().unwrap();
    assert_eq!((last.kind.as_str(), last.outcome.as_deref()), ("guard", Some("suspect")));
    assert_eq!(last.evidence["guard"], "released");
    assert_eq!(last.evidence["code"], "-1105", "the supplier's held evidence is kept");

    assert_eq!(held_count(&app).await, 0);
    let state = guard_row(&app).await;
    assert_eq!(
        state,
        GuardRow { guard_held_since: None, guard_window_from: Some(now), guard_evidence: None, updated_at: Some(now) }
    );
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_released_confirmation_flags_the_user_and_notifies(pool: PgPool) {
    let app = spawn_app(pool).await;
    // A first strike at t0, through a real sweep.
    app.emis_user("u1", &["not_registered"]).await;
    app.sweep().await;
    assert_eq!(app.row("u1").await.last_outcome.as_deref(), Some("suspect"));
    // The confirming answer comes while the guard holds.
    app.advance(TimeDelta::minutes(15));
    hold_guard(&app).await;
    hold_answers(&app, &[("u1", Reason::AccessRevoked)]).await;
    let row = app.row("u1").await;
    assert_eq!((row.status.as_str(), row.refresh_required), ("unchecked", false), "held, not applied");

    let mut listener = PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen("im1_credential_status").await.unwrap();
    app.advance(TimeDelta::minutes(30));
    let now = app.clock.now_utc();
    let resolved = guard::release(&app.pool, Supplier::Emis, None, now, &rules(&app)).await.unwrap();
    assert_eq!((resolved.applied, resolved.newly_flagged, resolved.stale), (1, 1, 0));
    assert!(resolved.guard_cleared);

    let row = app.row("u1").await;
    assert_eq!(row.status, "invalid");
    assert_eq!(row.reason.as_deref(), Some("access_revoked"), "the held answer's own reason");
    assert!(row.refresh_required);
    assert_eq!(row.invalidated_at, Some(now));

    let notified = listener.recv().await.unwrap();
    let payload: serde_json::Value = serde_json::from_str(notified.payload()).unwrap();
    assert_eq!(payload, serde_json::json!({"user_id": "u1", "status": "invalid", "refresh_required": true}));

    let events = app.events("u1").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "guard");
    assert_eq!((last.to_status.as_str(), last.outcome.as_deref()), ("invalid", Some("invalid")));
    assert_eq!(last.evidence["guard"], "released");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_held_verdict_whose_credential_moved_on_is_stale_and_not_applied(pool: PgPool) {
    let app = spawn_app(pool).await;
    for user in ["held", "checked", "replaced"] {
        app.emis_user(user, &[]).await;
    }
    hold_guard(&app).await;
    let all =
        [("held", Reason::TokenRejected), ("checked", Reason::TokenRejected), ("replaced", Reason::TokenRejected)];
    hold_answers(&app, &all).await;

    // Since then: one credential was checked again and found valid, one got a new token.
    app.advance(TimeDelta::minutes(10));
    let claimed = claim_due(&app).await;
    assert_eq!(claimed.len(), 3);
    let checked = claimed.iter().find(|c| c.user_id == "checked").unwrap();
    let v = verdict(&app, checked, Observation::Valid, None);
    claims::write_back(&app.pool, &[v], app.clock.now_utc(), WriteKind::Check).await.unwrap();
    give_back_claims(&app).await;
    app.import(&[emis_line("replaced", "guid-replaced-2")]).await;
    let checked_before = app.row("checked").await;
    let replaced_before = app.row("replaced").await;

    let now = app.clock.now_utc();
    let resolved = guard::release(&app.pool, Supplier::Emis, None, now, &rules(&app)).await.unwrap();
    assert_eq!((resolved.applied, resolved.stale, resolved.remaining), (1, 2, 0));
    assert!(resolved.guard_cleared);
    assert_eq!(app.row("held").await.last_outcome.as_deref(), Some("suspect"));
    assert_eq!(app.row("checked").await, checked_before, "a stale held answer changes nothing");
    assert_eq!(app.row("replaced").await, replaced_before);
    assert!(app.events("checked").await.iter().all(|e| e.kind != "guard"));
    assert_eq!(held_count(&app).await, 0, "stale held verdicts are dropped too");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn releasing_one_practice_keeps_the_guard_until_none_remain(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[
        line("a1", "A81001", "guid-a1"),
        line("a2", "A81001", "guid-a2"),
        line("b1", "B82002", "guid-b1"),
        line("c1", "C83003", "guid-c1"),
    ])
    .await;
    hold_guard(&app).await;
    let held_since = guard_row(&app).await.guard_held_since;
    hold_answers(
        &app,
        &[
            ("a1", Reason::NotRegistered),
            ("a2", Reason::NotRegistered),
            ("b1", Reason::TokenRejected),
            ("c1", Reason::AccessRevoked),
        ],
    )
    .await;

    // What an operator sees first: is one practice dominating?
    let by_practice = guard::held_by_practice(&app.pool, Supplier::Emis).await.unwrap();
    assert_eq!(by_practice, [("A81001".to_owned(), 2), ("B82002".to_owned(), 1), ("C83003".to_owned(), 1)]);
    let states = guard::states(&app.pool).await.unwrap();
    let names: Vec<&str> = states.iter().map(|s| s.supplier.as_str()).collect();
    assert_eq!(names, ["emis", "tpp", "vision"]);
    assert_eq!((states[0].held_verdicts, states[0].held_since), (4, held_since));
    assert_eq!(states[0].evidence, Some(serde_json::json!({"checks": 60, "invalid": 20})));
    assert_eq!((states[1].held_verdicts, states[1].held_since), (0, None));
    let listed = guard::held(&app.pool, Supplier::Emis, Some("A81001"), 50).await.unwrap();
    let users: Vec<&str> = listed.iter().map(|h| h.user_id.as_str()).collect();
    assert_eq!(users, ["a1", "a2"]);
    assert_eq!(listed[0].reason, "not_registered");
    assert_eq!(listed[0].evidence, evidence());
    assert_eq!(guard::held(&app.pool, Supplier::Emis, None, 3).await.unwrap().len(), 3, "the limit holds");
    assert!(guard::held(&app.pool, Supplier::Tpp, None, 50).await.unwrap().is_empty());

    app.advance(TimeDelta::minutes(5));
    let r = guard::release(&app.pool, Supplier::Emis, Some("A81001"), app.clock.now_utc(), &rules(&app)).await.unwrap();
    assert_eq!((r.applied, r.remaining, r.guard_cleared), (2, 2, false));
    let state = guard_row(&app).await;
    assert_eq!(state.guard_held_since, held_since, "still holding: other practices' answers remain");
    assert_eq!(state.guard_window_from, None);
    assert_eq!(app.row("b1").await.last_outcome.as_deref(), Some("held"), "another practice is untouched");

    let r = guard::discard(&app.pool, Supplier::Emis, Some("B82002"), app.clock.now_utc()).await.unwrap();
    assert_eq!((r.discarded, r.remaining, r.guard_cleared), (1, 1, false));

    app.advance(TimeDelta::minutes(5));
    let now = app.clock.now_utc();
    let r = guard::release(&app.pool, Supplier::Emis, Some("C83003"), now, &rules(&app)).await.unwrap();
    assert_eq!((r.applied, r.remaining, r.guard_cleared), (1, 0, true));
    let state = guard_row(&app).await;
    assert_eq!((state.guard_held_since, state.guard_window_from), (None, Some(now)));
    for user in ["a1", "a2", "c1"] {
        assert_eq!(app.row(user).await.last_outcome.as_deref(), Some("suspect"), "{user}");
    }
    assert_eq!(app.row("b1").await.last_outcome.as_deref(), Some("held"), "discarded: checked again on schedule");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn discard_leaves_standings_unchanged_records_events_and_clears_the_guard(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &["not_registered"]).await;
    app.emis_user("u2", &[]).await;
    app.sweep().await;
    app.advance(TimeDelta::minutes(15));
    // u1 carries a strike; u2 is valid and not due. Make u2 due, then hold both answers.
    sqlx::query("UPDATE im1_credentials SET next_check_at = $1")
        .bind(app.clock.now_utc())
        .execute(&app.pool)
        .await
        .unwrap();
    hold_guard(&app).await;
    hold_answers(&app, &[("u1", Reason::NotRegistered), ("u2", Reason::AccessRestricted)]).await;
    let before = (app.row("u1").await, app.row("u2").await);
    let events_before = (app.events("u1").await.len(), app.events("u2").await.len());

    app.advance(TimeDelta::hours(2));
    let now = app.clock.now_utc();
    let r = guard::discard(&app.pool, Supplier::Emis, None, now).await.unwrap();
    assert_eq!(r, Resolved { applied: 0, newly_flagged: 0, stale: 0, discarded: 2, remaining: 0, guard_cleared: true });
    assert_eq!((app.row("u1").await, app.row("u2").await), before, "standings are not changed");
    assert_eq!(held_count(&app).await, 0);

    let e2 = app.events("u2").await;
    assert_eq!(e2.len(), events_before.1 + 1);
    let last = e2.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.to_status.as_str(), last.outcome.as_deref()),
        ("guard", "valid", Some("held"))
    );
    assert_eq!(
        last.evidence,
        serde_json::json!({"guard": "discarded", "held_reason": "access_restricted", "held_evidence": evidence()})
    );
    let (from, reason, flagged, at): (Option<String>, Option<String>, bool, DateTime<Utc>) = sqlx::query_as(
        "SELECT from_status, reason, refresh_required, at FROM im1_credential_events \
         WHERE user_id = 'u2' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((from.as_deref(), reason, flagged, at), (Some("valid"), None, false, now));
    assert_eq!(app.events("u1").await.len(), events_before.0 + 1);

    assert_eq!(
        guard_row(&app).await,
        GuardRow { guard_held_since: None, guard_window_from: Some(now), guard_evidence: None, updated_at: Some(now) }
    );
    // Nothing held for another supplier: a discard there changes nothing and says the guard is clear.
    let r = guard::discard(&app.pool, Supplier::Tpp, None, now).await.unwrap();
    assert_eq!(r, Resolved { guard_cleared: true, ..Resolved::default() });
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_sweeps_late_write_after_a_release_is_dropped(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &[]).await;
    hold_guard(&app).await;
    hold_answers(&app, &[("u1", Reason::TokenRejected)]).await;
    // A sweep claims the row again (its held backoff is over) and is mid-check...
    app.advance(TimeDelta::minutes(5));
    let claimed = claim_due(&app).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].standing.last_outcome, Some(LastOutcome::Held));
    // ...when an operator releases.
    let now = app.clock.now_utc();
    let r = guard::release(&app.pool, Supplier::Emis, None, now, &rules(&app)).await.unwrap();
    assert_eq!(r.applied, 1);
    let released = app.row("u1").await;
    assert_eq!(released.last_outcome.as_deref(), Some("suspect"));

    // The sweep's verdict, from before the release, arrives with the old fence.
    let late = verdict(&app, &claimed[0], Observation::Valid, None);
    let written = claims::write_back(&app.pool, &[late], now, WriteKind::Check).await.unwrap();
    assert_eq!((written.written, written.lost.as_slice()), (0, ["u1".to_owned()].as_slice()));
    assert_eq!(app.row("u1").await, released, "the released verdict stands");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_verdict_held_after_the_guard_cleared_is_not_stored(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("u1", &[]).await;
    hold_guard(&app).await;
    // A process that claimed before the operator's discard holds its answer after it.
    let claimed = claim_due(&app).await;
    let r = guard::discard(&app.pool, Supplier::Emis, None, app.clock.now_utc()).await.unwrap();
    assert!(r.guard_cleared);
    let held = verdict(
        &app,
        &claimed[0],
        Observation::NoVerdict { kind: LastOutcome::Held, retry_after: None },
        Some(Reason::TokenRejected),
    );
    let written = claims::write_back(&app.pool, &[held], app.clock.now_utc(), WriteKind::Check).await.unwrap();
    assert_eq!((written.written, written.held), (1, 0));
    assert_eq!(held_count(&app).await, 0);
}

// The binary, as an operator runs it.

async fn run_async(args: &[&str], env: Vec<(String, String)>) -> (i32, String, String) {
    outcome(&run_binary(args, env, String::new()).await)
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn guard_commands_through_the_binary(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.import(&[
        line("u1", "A81001", "SECRET-TOKEN-1"),
        line("u2", "A81001", "SECRET-TOKEN-2"),
        line("u3", "B82002", "SECRET-TOKEN-3"),
    ])
    .await;
    hold_guard(&app).await;
    hold_answers(&app, &[("u1", Reason::NotRegistered), ("u2", Reason::NotRegistered), ("u3", Reason::TokenRejected)])
        .await;
    // Only DATABASE_URL: the guard commands read no token, so need no keys.
    let env = vec![("DATABASE_URL".to_owned(), database_url(&pool)), ("RUST_LOG".to_owned(), "debug".to_owned())];
    let mut all = String::new();
    let mut step = |(code, out, err): (i32, String, String), want: i32| {
        assert_eq!(code, want, "{out}\n{err}");
        all.push_str(&out);
        all.push_str(&err);
        (out, err)
    };

    let (out, _) = step(run_async(&["guard", "list"], env.clone()).await, 0);
    assert!(out.contains("emis: HOLDING since 2026-11-26T09:00:00Z, 3 held verdict(s)"), "{out}");
    assert!(out.contains(r#"tripped by: {"checks":60,"invalid":20}"#), "{out}");
    assert!(out.contains("tpp: clear, 0 held verdict(s)"), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().eq(["A81001", "2"])), "{out}");
    assert!(!out.contains("u1"), "without --supplier, no held verdicts are listed: {out}");

    let (out, _) = step(run_async(&["guard", "list", "--supplier", "emis", "--limit", "2"], env.clone()).await, 0);
    assert!(out.contains("first 2 held verdict(s)"), "{out}");
    assert!(out.contains("u1") && out.contains("not_registered"), "{out}");

    let (out, _) = step(run_async(&["guard", "list", "--supplier", "emis", "--json"], env.clone()).await, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let emis = &json["suppliers"][0];
    assert_eq!(emis["supplier"], "emis");
    assert_eq!(emis["holding"], true);
    assert_eq!(emis["held_verdicts"], 3);
    assert_eq!(emis["by_practice"][0], serde_json::json!({"ods_code": "A81001", "count": 2}));
    assert_eq!(emis["held"].as_array().unwrap().len(), 3);
    assert_eq!(json["suppliers"].as_array().unwrap().len(), 1);

    let (out, err) =
        step(run_async(&["guard", "release", "--supplier", "emis", "--ods-code", "B82002"], env.clone()).await, 0);
    assert!(out.contains("emis practice B82002: 1 held verdict(s) applied, 0 newly flagged"), "{out}");
    assert!(out.contains("emis: 2 held verdict(s) remaining"), "{out}");
    assert!(out.contains("emis: guard still holding"), "{out}");
    assert!(err.contains("guard verdicts released by an operator"), "{err}");
    assert_eq!(app.row("u3").await.last_outcome.as_deref(), Some("suspect"));

    let (out, _) = step(run_async(&["guard", "discard", "--supplier", "emis"], env.clone()).await, 0);
    assert!(out.contains("emis: 2 held verdict(s) discarded"), "{out}");
    assert!(out.contains("emis: guard clear"), "{out}");
    assert_eq!(app.row("u1").await.last_outcome.as_deref(), Some("held"), "discard changes no standing");
    assert!(guard_row(&app).await.guard_held_since.is_none());

    let (out, _) = step(run_async(&["guard", "list", "--json"], env.clone()).await, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["suppliers"].as_array().unwrap().len(), 3);
    assert_eq!(json["suppliers"][0]["holding"], false);

    // Bad input: exit 2, naming the problem, never echoing what was typed.
    for (args, message) in [
        (vec!["guard", "release", "--supplier", "SECRET-TOKEN-9"], "--supplier: must be one of emis, tpp, vision"),
        (vec!["guard", "discard", "--supplier", "microtest"], "microtest credentials are never checked"),
        (vec!["guard", "list", "--supplier", "microtest"], "microtest credentials are never checked"),
        (
            vec!["guard", "release", "--supplier", "emis", "--ods-code", "SECRET-TOKEN-9"],
            "--ods-code: must be 3 to 10 uppercase letters and digits",
        ),
        (vec!["guard", "discard", "--supplier", "tpp", "--ods-code", "a81001"], "--ods-code: must be"),
    ] {
        let (_, err) = step(run_async(&args, env.clone()).await, 2);
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let (_, err) = step(run_async(&["guard", "release"], env.clone()).await, 2);
    assert!(err.contains("--supplier"), "{err}");
    assert!(!all.contains("SECRET"), "a token (or what was typed) leaked:\n{all}");
}
