//! The refresh lifecycle end to end (contract, "Refresh lifecycle"): tokens written in,
//! checked by sweeps, refreshed by the RP, until the loop guard suppresses prompts and
//! the window ends — crossing 7 days on the manual clock.

use chrono::TimeDelta;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::helpers::*;

/// Two sweeps at least `IM1_CONFIRM_AFTER` apart: a revoked token is confirmed.
async fn confirm(app: &TestApp) {
    sweep_with(&app.engine()).await;
    app.advance(TimeDelta::minutes(15));
    sweep_with(&app.engine()).await;
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn refreshes_that_never_work_exhaust_then_the_window_ends(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut listener = PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen("im1_credential_status").await.unwrap();

    // A token that is revoked, and every refreshed token after it revoked too.
    let mut generation = 0;
    let mut write_token = |app: &TestApp| {
        generation += 1;
        let token = format!("guid-gen-{generation}");
        app.sim.script(&token, steps(&["not_registered"]));
        emis_line("u1", &token)
    };
    app.import(&[write_token(&app)]).await;
    confirm(&app).await;
    let row = app.row("u1").await;
    assert_eq!((row.status.as_str(), row.refresh_required, row.refresh_attempts), ("invalid", true, 0));

    // Three refreshes at the user's next logins, each token confirmed invalid again.
    for attempt in 1..=3 {
        app.import(&[write_token(&app)]).await;
        let row = app.row("u1").await;
        assert_eq!(row.status, "unchecked", "a new token is unchecked");
        assert!(!row.refresh_required, "writing a token clears the flag");
        assert_eq!(row.refresh_attempts, attempt, "a token replacing an invalid one is an attempt");
        confirm(&app).await;
        let row = app.row("u1").await;
        assert_eq!(row.status, "invalid");
        if attempt < 3 {
            assert!(row.refresh_required, "attempt {attempt}");
        } else {
            assert_eq!(row.reason.as_deref(), Some("refresh_exhausted"));
            assert!(!row.refresh_required, "the loop guard: no more prompts");
            assert_eq!(row.refresh_suppressed_until, Some(app.clock.now_utc() + TimeDelta::days(7)));
        }
    }
    let exhausted_at = app.clock.now_utc();

    // During the window the token is still checked on schedule, and nobody is prompted.
    app.advance(TimeDelta::days(2));
    let calls = app.sim.token_calls("guid-gen-4");
    sweep_with(&app.engine()).await;
    assert_eq!(app.sim.token_calls("guid-gen-4"), calls + 1, "checks continue during suppression");
    assert!(!app.row("u1").await.refresh_required);

    // The window ends: the next confirmed invalid answer flags the user once more.
    app.clock.set(exhausted_at + TimeDelta::days(7) + TimeDelta::hours(1));
    im1_revalidator::store::status::recheck(
        &app.pool,
        &im1_revalidator::store::status::RecheckFilter { supplier: None, user_id: Some("u1".into()) },
        app.clock.now_utc(),
    )
    .await
    .unwrap();
    sweep_with(&app.engine()).await;
    let row = app.row("u1").await;
    assert!(row.refresh_required, "a new round of prompts after the window");
    assert_eq!(row.refresh_attempts, 0, "attempts start again from zero");
    assert_eq!(row.reason.as_deref(), Some("not_registered"));

    // Finally a refresh that works: a valid check clears everything.
    let token = "guid-good";
    app.sim.script(token, steps(&["valid"]));
    app.import(&[emis_line("u1", token)]).await;
    sweep_with(&app.engine()).await;
    let row = app.row("u1").await;
    assert_eq!((row.status.as_str(), row.refresh_required, row.refresh_attempts), ("valid", false, 0));
    assert_eq!(row.refresh_suppressed_until, None);

    // Every status or refresh_required change was notified, in order, with the contract's payload.
    let mut payloads = Vec::new();
    while let Ok(Ok(Some(n))) = tokio::time::timeout(std::time::Duration::from_millis(200), listener.try_recv()).await {
        payloads.push(serde_json::from_str::<serde_json::Value>(n.payload()).unwrap());
    }
    let seen: Vec<(String, bool)> = payloads
        .iter()
        .map(|p| {
            (p["status"].as_str().unwrap_or_default().to_owned(), p["refresh_required"].as_bool().unwrap_or(false))
        })
        .collect();
    assert_eq!(seen.first(), Some(&("unchecked".to_owned(), false)));
    assert!(seen.contains(&("invalid".to_owned(), true)));
    assert_eq!(seen.last(), Some(&("valid".to_owned(), false)));
    assert!(payloads.iter().all(|p| p["user_id"] == "u1" && p.as_object().unwrap().len() == 3));

    // And every transition left an event row; none holds a token.
    let events = app.events("u1").await;
    assert!(events.iter().any(|e| e.outcome.as_deref() == Some("invalid")));
    let text: String = sqlx::query_scalar("SELECT string_agg(evidence::text, ' ') FROM im1_credential_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!text.contains("guid-gen"), "{text}");
}
