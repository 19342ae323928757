//! Key rotation: `keys status`, `keys rotate` (through the library and the binary), and the
//! start-up check that refuses to run while a key id in use is not configured.

use std::collections::HashMap;
use std::time::Duration;

use im1_revalidator::crypto::{Keyring, key_id_of};
use im1_revalidator::keys::{self, RotateOptions, Rotation};
use im1_revalidator::simulator::{Behaviour, Step};
use im1_revalidator::store;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::helpers::*;

/// Every test's tokens contain this, so one search finds any that leaked.
const SECRET: &str = "SECRET-ROT";

fn ring(spec: &str) -> Keyring {
    Keyring::parse(spec).expect("test keys parse")
}

/// The configuration after a new key `b` was put first, `a` kept to decrypt.
fn rotated_ring() -> Keyring {
    ring(&format!("{KEY_B},{KEY_A}"))
}

fn options() -> RotateOptions {
    RotateOptions { batch: 500, retries: 0, pause: Duration::from_millis(20) }
}

/// Imports `n` EMIS users `u1`..`un` under key `a` (spawn_app's configuration), with
/// tokens `SECRET-ROT-1`..
async fn populate(app: &TestApp, n: usize) {
    let lines: Vec<_> = (1..=n).map(|i| emis_line(&format!("u{i}"), &format!("{SECRET}-{i}"))).collect();
    app.import(&lines).await;
}

/// Each token row's decrypted plaintext, by user id, under `keys`.
async fn plaintexts(pool: &PgPool, keys: &Keyring) -> HashMap<String, String> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT user_id, token_ciphertext FROM im1_credentials WHERE token_ciphertext IS NOT NULL ORDER BY user_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(user, ciphertext)| {
            let plain = keys.decrypt(&user, &ciphertext).unwrap_or_else(|e| panic!("{user}: {e}"));
            (user, plain.expose_secret().to_owned())
        })
        .collect()
}

/// Everything about every row except what rotation may change: fences, standings,
/// schedule, leases, creation time.
async fn untouched_columns(pool: &PgPool) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT to_jsonb(c) - 'token_ciphertext' - 'key_id' - 'updated_at' FROM im1_credentials c ORDER BY user_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn key_ids(pool: &PgPool) -> HashMap<String, Option<String>> {
    sqlx::query_as::<_, (String, Option<String>)>("SELECT user_id, key_id FROM im1_credentials")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn ciphertext(pool: &PgPool, user: &str) -> Vec<u8> {
    sqlx::query_scalar("SELECT token_ciphertext FROM im1_credentials WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn set_ciphertext(pool: &PgPool, user: &str, bytes: &[u8]) {
    sqlx::query("UPDATE im1_credentials SET token_ciphertext = $2 WHERE user_id = $1")
        .bind(user)
        .bind(bytes)
        .execute(pool)
        .await
        .unwrap();
}

async fn rotate(app: &TestApp, keys: &Keyring, options: RotateOptions) -> Rotation {
    keys::rotate(&app.pool, keys, &app.clock, options).await.expect("rotation runs")
}

fn env(pool: &PgPool, keys: &str) -> Vec<(String, String)> {
    vec![("DATABASE_URL".into(), database_url(pool)), ("IM1_ENCRYPTION_KEYS".into(), keys.into())]
}

fn assert_no_secret(stdout: &str, stderr: &str) {
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "a token leaked:\n{stdout}\n{stderr}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn rotation_moves_every_token_to_the_primary_and_changes_nothing_else(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 5).await;
    app.import(&[serde_json::json!({"user_id": "m1", "supplier": "microtest", "ods_code": "M12345",
                                    "token": {"linkage_key": "dummy"}})])
        .await;
    // Standings and fences worth keeping: a first strike, valid verdicts, bumped fences.
    app.sim.script(&format!("{SECRET}-2"), steps(&["not_registered"]));
    app.sweep().await;
    assert_eq!(app.row("u2").await.last_outcome.as_deref(), Some("suspect"));
    let before_plain = plaintexts(&pool, &ring(KEY_A)).await;
    let before_rows = untouched_columns(&pool).await;

    app.advance(chrono::TimeDelta::minutes(1));
    let keys = rotated_ring();
    let report = rotate(&app, &keys, options()).await;
    assert_eq!(report.total_rotated(), 5);
    assert_eq!(report.rotated.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!((report.left, report.locked, report.batches), (0, 0, 1));
    assert!(report.undecryptable.is_empty() && report.complete());

    // Every token opens under the new key alone, to the same plaintext, and says so.
    assert_eq!(plaintexts(&pool, &ring(KEY_B)).await, before_plain);
    for (user, id) in key_ids(&pool).await {
        if user == "m1" {
            assert_eq!(id, None, "a Microtest row has no token to rotate");
        } else {
            assert_eq!(id.as_deref(), Some("b"), "{user}");
            assert_eq!(key_id_of(&ciphertext(&pool, &user).await), Ok("b"));
        }
    }
    assert_eq!(untouched_columns(&pool).await, before_rows, "fences, standings and schedule unchanged");
    let updated: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE updated_at = $1")
        .bind(app.clock.now_utc())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(updated, 5, "updated_at moves on the rotated rows only, to the caller's clock");

    // A second rotation finds nothing to do and writes nothing.
    app.advance(chrono::TimeDelta::minutes(1));
    let again = rotate(&app, &keys, options()).await;
    assert_eq!((again.total_rotated(), again.batches, again.left), (0, 0, 0));
    let updated_now: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE updated_at = $1")
        .bind(app.clock.now_utc())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(updated_now, 0);

    // The old key can now go: a sweep with only `b` reads every token.
    let mut vars = app.vars.clone();
    vars.insert("IM1_ENCRYPTION_KEYS".into(), KEY_B.into());
    app.advance(chrono::TimeDelta::days(2));
    let swept = sweep_with(&app.engine_with(&vars)).await;
    assert_eq!(swept.checks, 5);
    assert!(!swept.outcomes.contains_key("skipped"), "{:?}", swept.outcomes);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn an_interrupted_rotation_resumes_where_it_stopped(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 5).await;
    let before = plaintexts(&pool, &ring(KEY_A)).await;
    let keys = rotated_ring();

    // One batch of two, then the process "dies": those two are committed, the rest untouched.
    let batch = store::keys::rotate_batch(&pool, &keys, "", 2, app.clock.now_utc()).await.unwrap();
    assert_eq!(batch.selected, 2);
    let users: Vec<&str> = batch.rotated.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(users, ["u1", "u2"]);
    assert_eq!(batch.last_user_id.as_deref(), Some("u2"));
    let status = keys::status(&pool, &keys).await.unwrap();
    let counts: Vec<(&str, i64)> = status.keys.iter().map(|k| (k.key_id.as_str(), k.tokens)).collect();
    assert_eq!(counts, [("b", 2), ("a", 3)]);
    assert_eq!(status.to_rotate, 3);

    // Run again, in batches of one: it continues with what is left.
    let report = rotate(&app, &keys, RotateOptions { batch: 1, ..options() }).await;
    assert_eq!(report.total_rotated(), 3);
    assert_eq!(report.batches, 3);
    assert!(report.complete());
    assert_eq!(plaintexts(&pool, &ring(KEY_B)).await, before);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_locked_row_is_skipped_and_picked_up_later(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 4).await;
    let keys = rotated_ring();

    // Another transaction (an import, say) holds u2.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM im1_credentials WHERE user_id = 'u2' FOR UPDATE").execute(&mut *holder).await.unwrap();
    let report = rotate(&app, &keys, options()).await;
    assert_eq!(report.total_rotated(), 3, "the others are not held up");
    assert_eq!((report.left, report.locked), (1, 1));
    assert!(report.undecryptable.is_empty());
    assert_eq!(key_ids(&pool).await["u2"].as_deref(), Some("a"));

    // The next run takes it once it is free.
    holder.rollback().await.unwrap();
    let report = rotate(&app, &keys, options()).await;
    assert_eq!(report.total_rotated(), 1);
    assert!(report.complete());

    // Within one run: a row held during the first pass is taken by a retry pass. u8 is
    // free and goes in the first pass; u9 would share its batch if it were free too.
    app.import(&[emis_line("u8", &format!("{SECRET}-8")), emis_line("u9", &format!("{SECRET}-9"))]).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM im1_credentials WHERE user_id = 'u9' FOR UPDATE").execute(&mut *holder).await.unwrap();
    let rotation = {
        let pool = pool.clone();
        let clock = app.clock.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let options = RotateOptions { retries: 100, pause: Duration::from_millis(20), ..options() };
            keys::rotate(&pool, &keys, &clock, options).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    holder.commit().await.unwrap();
    let report = rotation.await.unwrap();
    assert_eq!(report.total_rotated(), 2);
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.batches, 2, "u9 was found by a later pass than u8");
    assert_eq!(key_id_of(&ciphertext(&pool, "u9").await), Ok("b"));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn rotation_beside_a_running_sweep_loses_no_verdict(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 3).await;
    for i in 1..=3 {
        app.sim.script(&format!("{SECRET}-{i}"), vec![Step::new(Behaviour::Valid).delayed(400)]);
    }
    let engine = app.engine();
    let sweep = tokio::spawn(async move { sweep_with(&engine).await });
    // Wait until the sweep has claimed its rows (leases taken, fences bumped).
    let mut claimed = false;
    for _ in 0..200 {
        let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE lease_expires_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        if leased == 3 {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(claimed, "the sweep never claimed its rows");
    let fences: Vec<i64> =
        sqlx::query_scalar("SELECT fence FROM im1_credentials ORDER BY user_id").fetch_all(&pool).await.unwrap();
    let report = rotate(&app, &rotated_ring(), options()).await;
    assert_eq!(report.total_rotated(), 3, "a claim holds a lease, not a lock");
    let after: Vec<i64> =
        sqlx::query_scalar("SELECT fence FROM im1_credentials ORDER BY user_id").fetch_all(&pool).await.unwrap();
    assert_eq!(after, fences, "rotation does not bump the fence");

    let swept = sweep.await.unwrap();
    assert_eq!(swept.leases_lost, 0, "every verdict landed");
    for i in 1..=3 {
        assert_eq!(app.row(&format!("u{i}")).await.status, "valid");
    }
    assert_eq!(key_ids(&pool).await.values().filter(|k| k.as_deref() == Some("b")).count(), 3);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn undecryptable_rows_are_named_and_left_alone_while_the_rest_rotate(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 5).await;
    // u2: tampered bytes. u4: sealed under a key that is not configured, although its
    // key_id column still says `a` (the start-up check reads the column, so it passes).
    let mut tampered = ciphertext(&pool, "u2").await;
    *tampered.last_mut().unwrap() ^= 1;
    set_ciphertext(&pool, "u2", &tampered).await;
    let stray = ring("zz:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .encrypt("u4", &SecretString::from(r#"{"access_identity_guid":"SECRET-ROT-4"}"#.to_owned()));
    set_ciphertext(&pool, "u4", &stray).await;

    let out =
        run_binary(&["keys", "rotate", "--batch", "2"], env(&pool, &format!("{KEY_B},{KEY_A}")), String::new()).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains(r#"rotated 3 tokens from key ids ["a"] to "b"; 2 left"#), "{stdout}");
    assert!(stdout.contains(r#"not rotated: user "u2" (key id "a"): the stored ciphertext failed authentication"#));
    assert!(stdout.contains(r#"not rotated: user "u4" (key id "a"): the stored ciphertext uses a key id that is not"#));
    assert!(stderr.contains("2 token(s) could not be decrypted"), "{stderr}");
    assert!(stderr.contains("keys rotate: batch committed"), "progress on stderr: {stderr}");
    assert_no_secret(&stdout, &stderr);

    assert_eq!(ciphertext(&pool, "u2").await, tampered, "left exactly as it was");
    assert_eq!(ciphertext(&pool, "u4").await, stray);
    let ids = key_ids(&pool).await;
    for user in ["u1", "u3", "u5"] {
        assert_eq!(ids[user].as_deref(), Some("b"), "{user}");
    }
    for user in ["u2", "u4"] {
        assert_eq!(ids[user].as_deref(), Some("a"), "{user}");
    }
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn keys_status_and_rotate_through_the_binary(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 3).await;
    let new_config = env(&pool, &format!("{KEY_B},{KEY_A}"));
    let mut all = String::new();
    let mut run = async |args: &[&str], env: Vec<(String, String)>, want: i32| {
        let out = run_binary(args, env, String::new()).await;
        let (code, stdout, stderr) = outcome(&out);
        assert_eq!(code, want, "{args:?}\n{stdout}\n{stderr}");
        all.push_str(&stdout);
        all.push_str(&stderr);
        stdout
    };

    let before = run(&["keys", "status"], new_config.clone(), 0).await;
    let lines: Vec<Vec<&str>> = before.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["key", "id", "tokens"]);
    assert_eq!(lines[1], ["b", "0", "primary"]);
    assert_eq!(lines[2], ["a", "3", "configured", "(decrypt", "only)"]);
    assert!(before.contains(r#"3 token(s) are not under the primary key "b": run `keys rotate`"#), "{before}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["keys", "status", "--json"], new_config.clone(), 0).await).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "primary": "b",
            "keys": [
                {"key_id": "b", "tokens": 0, "primary": true, "configured": true},
                {"key_id": "a", "tokens": 3, "primary": false, "configured": true},
            ],
            "to_rotate": 3,
            "undecryptable": 0,
        })
    );

    let rotated = run(&["keys", "rotate"], new_config.clone(), 0).await;
    assert_eq!(rotated, "rotated 3 tokens from key ids [\"a\"] to \"b\"; 0 left\n");
    let again = run(&["keys", "rotate"], new_config.clone(), 0).await;
    assert_eq!(again, "rotated 0 tokens from key ids [] to \"b\"; 0 left\n");

    let after = run(&["keys", "status"], new_config.clone(), 0).await;
    assert!(after.contains("every token is under the primary key \"b\""), "{after}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["keys", "status", "--json"], new_config.clone(), 0).await).unwrap();
    assert_eq!(json["keys"][0], serde_json::json!({"key_id": "b", "tokens": 3, "primary": true, "configured": true}));
    assert_eq!(json["keys"][1]["tokens"], 0);
    assert_eq!(json["to_rotate"], 0);

    // Now `a` can go; and a key id in use but missing is reported plainly (status exits 0:
    // it is the tool for finding out).
    let only_b = env(&pool, KEY_B);
    run(&["check-config"], only_b.clone(), 0).await;
    let only_a = env(&pool, KEY_A);
    let missing = run(&["keys", "status"], only_a.clone(), 0).await;
    assert!(missing.contains("NOT CONFIGURED"), "{missing}");
    assert!(
        missing.contains(r#"key id "b" is not in IM1_ENCRYPTION_KEYS: its 3 token(s) cannot be decrypted"#),
        "{missing}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["keys", "status", "--json"], only_a, 0).await).unwrap();
    assert_eq!(json["undecryptable"], 3);
    assert_eq!(json["keys"][1], serde_json::json!({"key_id": "b", "tokens": 3, "primary": false, "configured": false}));
    assert!(!all.contains(SECRET), "a token leaked:\n{all}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn commands_refuse_to_start_while_a_key_in_use_is_not_configured(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    populate(&app, 3).await;
    let mut env = env(&pool, KEY_B);
    env.extend([
        ("IM1_EMIS_URL".to_owned(), app.running.emis_url()),
        ("IM1_EMIS_APPLICATION_ID".to_owned(), "app".to_owned()),
        ("IM1_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
    ]);
    for args in [&["run"][..], &["sweep"], &["check-config"], &["keys", "rotate"]] {
        let out = run_binary(args, env.clone(), String::new()).await;
        let (code, stdout, stderr) = outcome(&out);
        assert_eq!(code, 2, "{args:?}\n{stdout}\n{stderr}");
        assert!(
            stderr.contains(
                r#"key id "a" encrypts 3 token(s) but is not in IM1_ENCRYPTION_KEYS: add it back (decrypt-only, after the primary) until `keys rotate` has moved them"#
            ),
            "{args:?}: {stderr}"
        );
        assert_no_secret(&stdout, &stderr);
    }
    assert_eq!(app.sim.calls().emis.sessions, 0, "no sweep ran");
    assert_eq!(key_ids(&pool).await.values().filter(|k| k.as_deref() == Some("a")).count(), 3, "nothing rotated");
}
