use super::*;
use chrono::TimeZone;

fn rules() -> Rules {
    Rules::new(Duration::from_secs(24 * 3600), Duration::from_secs(15 * 60), 3, Duration::from_secs(7 * 24 * 3600))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap()
}

fn mins(m: i64) -> TimeDelta {
    TimeDelta::minutes(m)
}

fn transient() -> Observation {
    Observation::NoVerdict { kind: LastOutcome::Transient, retry_after: None }
}

const REVOKED: Observation = Observation::Invalid(Reason::AccessRevoked);

/// Runs observations in order, each at its own time, returning every decision.
fn run(start: Standing, steps: &[(TimeDelta, Observation)]) -> Vec<Decision> {
    let mut standing = start;
    let mut out = Vec::new();
    for (at, obs) in steps {
        let d = decide(&standing, obs, t0() + *at, &rules(), 0.0);
        standing = d.standing.clone();
        out.push(d);
    }
    out
}

#[test]
fn valid_answer_verifies_and_reschedules_a_day_later() {
    let d = decide(&Standing::unchecked(), &Observation::Valid, t0(), &rules(), 0.0);
    assert_eq!(d.standing.status, Status::Valid);
    assert_eq!(d.standing.last_verified_at, Some(t0()));
    assert_eq!(d.next_check_at, t0() + TimeDelta::hours(24));
    assert!(d.event && d.notify);
}

#[test]
fn recheck_is_jittered_within_ten_percent() {
    let early = decide(&Standing::unchecked(), &Observation::Valid, t0(), &rules(), -1.0).next_check_at;
    let late = decide(&Standing::unchecked(), &Observation::Valid, t0(), &rules(), 1.0).next_check_at;
    assert_eq!(early, t0() + TimeDelta::minutes(24 * 60 * 9 / 10));
    assert_eq!(late, t0() + TimeDelta::minutes(24 * 60 * 11 / 10));
}

#[test]
fn first_invalid_is_only_a_strike() {
    let d = decide(&Standing::unchecked(), &REVOKED, t0(), &rules(), 0.5);
    assert_eq!(d.standing.status, Status::Unchecked);
    assert!(!d.standing.refresh_required);
    assert_eq!(d.standing.last_outcome, Some(LastOutcome::Suspect));
    assert_eq!(d.standing.strike_at, Some(t0()));
    // Exactly the confirmation delay: no jitter may bring it sooner.
    assert_eq!(d.next_check_at, t0() + mins(15));
    assert!(d.event && !d.notify);
}

#[test]
fn second_invalid_after_the_delay_confirms_with_its_own_reason() {
    let ds = run(Standing::unchecked(), &[(mins(0), Observation::Invalid(Reason::TokenRejected)), (mins(15), REVOKED)]);
    let s = &ds[1].standing;
    assert_eq!(s.status, Status::Invalid);
    assert_eq!(s.reason, Some(Reason::AccessRevoked));
    assert!(s.refresh_required);
    assert_eq!(s.invalidated_at, Some(t0() + mins(15)));
    assert_eq!(s.strike_at, None);
    assert!(ds[1].notify);
}

#[test]
fn second_invalid_too_soon_stays_suspect() {
    let ds = run(Standing::unchecked(), &[(mins(0), REVOKED), (mins(14), REVOKED)]);
    assert_eq!(ds[1].standing.status, Status::Unchecked);
    assert_eq!(ds[1].standing.last_outcome, Some(LastOutcome::Suspect));
    assert_eq!(ds[1].standing.strike_at, Some(t0()));
    assert_eq!(ds[1].next_check_at, t0() + mins(15));
    assert!(!ds[1].event, "suspect again is not a change");
}

#[test]
fn valid_answer_clears_a_strike() {
    let ds = run(Standing::unchecked(), &[(mins(0), REVOKED), (mins(15), Observation::Valid), (mins(30), REVOKED)]);
    assert_eq!(ds[1].standing.strike_at, None);
    assert_eq!(ds[2].standing.status, Status::Valid, "a new first strike, not a confirmation");
    assert_eq!(ds[2].standing.last_outcome, Some(LastOutcome::Suspect));
}

#[test]
fn transient_neither_adds_nor_clears_a_strike() {
    let ds = run(Standing::unchecked(), &[(mins(0), REVOKED), (mins(15), transient()), (mins(20), REVOKED)]);
    assert_eq!(ds[1].standing.strike_at, Some(t0()));
    assert_eq!(ds[1].standing.last_outcome, Some(LastOutcome::Transient));
    assert_eq!(ds[2].standing.status, Status::Invalid);

    let only_transients = run(Standing::unchecked(), &[(mins(0), transient()), (mins(5), transient())]);
    assert_eq!(only_transients[1].standing.strike_at, None);
}

#[test]
fn no_verdict_never_changes_status_or_refresh_flag() {
    let confirmed = run(Standing::unchecked(), &[(mins(0), REVOKED), (mins(15), REVOKED)])[1].standing.clone();
    for kind in [
        LastOutcome::Transient,
        LastOutcome::PracticeUnavailable,
        LastOutcome::SupplierConfigError,
        LastOutcome::Held,
        LastOutcome::Skipped,
    ] {
        for start in [Standing::unchecked(), confirmed.clone()] {
            let d = decide(&start, &Observation::NoVerdict { kind, retry_after: None }, t0(), &rules(), 0.0);
            assert_eq!(d.standing.status, start.status);
            assert_eq!(d.standing.refresh_required, start.refresh_required);
            assert_eq!(d.standing.reason, start.reason);
            assert!(!d.notify);
        }
    }
}

#[test]
fn skipped_keeps_last_checked_at() {
    let mut s = Standing::unchecked();
    s.last_checked_at = Some(t0() - TimeDelta::days(1));
    let d = decide(&s, &Observation::NoVerdict { kind: LastOutcome::Skipped, retry_after: None }, t0(), &rules(), 0.0);
    assert_eq!(d.standing.last_checked_at, s.last_checked_at);
    assert_eq!(d.standing.last_outcome, Some(LastOutcome::Skipped));
    assert!(d.event);
}

#[test]
fn backoff_doubles_to_a_cap() {
    let r = rules();
    let steps: Vec<i64> = (1..=9).map(|n| backoff(&r, n, 0.0).num_seconds()).collect();
    assert_eq!(steps, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    assert_eq!(backoff(&r, i32::MAX, 0.0).num_seconds(), 3600);
}

#[test]
fn retry_after_is_never_undercut() {
    let obs = Observation::NoVerdict { kind: LastOutcome::Transient, retry_after: Some(Duration::from_secs(7200)) };
    let d = decide(&Standing::unchecked(), &obs, t0(), &rules(), -1.0);
    assert_eq!(d.next_check_at, t0() + TimeDelta::hours(2));
    let short = Observation::NoVerdict { kind: LastOutcome::Transient, retry_after: Some(Duration::from_secs(1)) };
    let d = decide(&Standing::unchecked(), &short, t0(), &rules(), 0.0);
    assert_eq!(d.next_check_at, t0() + mins(1), "the backoff still applies");
}

#[test]
fn already_invalid_stays_invalid_on_one_answer_and_keeps_invalidated_at() {
    let ds = run(Standing::unchecked(), &[(mins(0), REVOKED), (mins(15), REVOKED), (TimeDelta::days(1), REVOKED)]);
    assert_eq!(ds[2].standing.status, Status::Invalid);
    assert_eq!(ds[2].standing.invalidated_at, Some(t0() + mins(15)));
    assert!(!ds[2].event, "a routine check that confirms what was known adds no event");
}

#[test]
fn refresh_lifecycle_exhausts_then_suppresses_then_starts_again() {
    let r = rules();
    let mut s = Standing::unchecked();
    let mut now = t0();
    // Three refreshes, each producing a token that is confirmed invalid.
    for attempt in 0..=3 {
        s = decide(&s, &REVOKED, now, &r, 0.0).standing;
        now += mins(15);
        s = decide(&s, &REVOKED, now, &r, 0.0).standing;
        assert_eq!(s.status, Status::Invalid);
        if attempt < 3 {
            assert!(s.refresh_required, "attempt {attempt}");
            assert_eq!(s.reason, Some(Reason::AccessRevoked));
            // The RP refreshes at the next login and writes a new token.
            s = replace_token(Some(&s), now).standing;
            assert_eq!(s.refresh_attempts, attempt + 1);
            assert!(!s.refresh_required);
        } else {
            assert_eq!(s.reason, Some(Reason::RefreshExhausted));
            assert!(!s.refresh_required);
            assert_eq!(s.refresh_suppressed_until, Some(now + TimeDelta::days(7)));
        }
    }
    let exhausted_at = now;
    // During the window: checked on schedule, never flagged.
    now += TimeDelta::days(1);
    let d = decide(&s, &REVOKED, now, &r, 0.0);
    assert!(!d.standing.refresh_required);
    assert!(!d.event);
    s = d.standing;
    // The window ends: the next confirmed invalid flags the user once more.
    now = exhausted_at + TimeDelta::days(7);
    let d = decide(&s, &REVOKED, now, &r, 0.0);
    assert!(d.standing.refresh_required);
    assert_eq!(d.standing.refresh_attempts, 0);
    assert_eq!(d.standing.reason, Some(Reason::AccessRevoked));
    assert!(d.notify);
}

#[test]
fn valid_clears_the_loop_guard() {
    let mut s = Standing::unchecked();
    s.status = Status::Invalid;
    s.reason = Some(Reason::RefreshExhausted);
    s.refresh_attempts = 3;
    s.refresh_suppressed_until = Some(t0() + TimeDelta::days(3));
    let d = decide(&s, &Observation::Valid, t0(), &rules(), 0.0);
    assert_eq!(d.standing.refresh_attempts, 0);
    assert_eq!(d.standing.refresh_suppressed_until, None);
    assert_eq!(d.standing.reason, None);
}

#[test]
fn replacing_a_valid_token_or_first_import_is_no_attempt() {
    let first = replace_token(None, t0());
    assert_eq!(first.standing.refresh_attempts, 0);
    assert!(first.event && first.notify);
    assert_eq!(first.next_check_at, t0());
    let valid = decide(&Standing::unchecked(), &Observation::Valid, t0(), &rules(), 0.0).standing;
    assert_eq!(replace_token(Some(&valid), t0()).standing.refresh_attempts, 0);
}

#[test]
fn reported_refresh_failures_count_and_exhaust() {
    let r = rules();
    let confirmed = run(Standing::unchecked(), &[(mins(0), REVOKED), (mins(15), REVOKED)])[1].standing.clone();
    let mut s = confirmed;
    for _ in 0..2 {
        s = refresh_failed(&s, t0(), &r);
        assert!(s.refresh_required);
    }
    s = refresh_failed(&s, t0(), &r);
    assert_eq!(s.refresh_attempts, 3);
    assert_eq!(s.reason, Some(Reason::RefreshExhausted));
    assert!(!s.refresh_required);
}

#[test]
fn a_deferred_check_keeps_its_failures_and_is_due_when_the_breaker_allows() {
    let mut s = Standing::unchecked();
    s.failures = 3;
    s.last_checked_at = Some(t0());
    let obs = Observation::Deferred { retry_after: Duration::from_secs(40) };
    for jitter in [-1.0, 0.0, 1.0] {
        let d = decide(&s, &obs, t0(), &rules(), jitter);
        assert_eq!(d.standing.failures, 3, "no backoff growth");
        assert_eq!(d.standing.last_outcome, Some(LastOutcome::Skipped));
        assert_eq!(d.standing.last_checked_at, Some(t0()), "no check was made");
        assert_eq!(d.standing.status, s.status);
        assert!(d.next_check_at >= t0() + chrono::TimeDelta::seconds(40), "never sooner than the breaker allows");
        assert!(d.next_check_at <= t0() + chrono::TimeDelta::seconds(44));
    }
}
