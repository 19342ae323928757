//! Canary credentials: the store API the sweep calls, and `credentials canary
//! add|remove|list` through the built binary (exit codes, output, and that no token text
//! ever reaches stdout or stderr).

use std::process::Command;

use chrono::TimeDelta;
use im1_revalidator::model::Supplier;
use im1_revalidator::store::canaries::{self, AddError};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;

/// A TPP and a Vision credential (with secret-looking token text) and a Microtest one.
async fn seed_others(app: &TestApp) {
    app.import(&[
        json!({"user_id": "t1", "supplier": "tpp", "ods_code": "B81001",
               "token": {"account_id": "SECRET-ACCOUNT", "passphrase": "SECRET-PASS"}}),
        json!({"user_id": "v1", "supplier": "vision", "ods_code": "C81001",
               "token": {"rosu_account_id": "SECRET-ROSU", "api_key": "SECRET-KEY"}}),
        json!({"user_id": "m1", "supplier": "microtest", "ods_code": "M12345",
               "token": {"linkage_key": "SECRET-DUMMY"}}),
    ])
    .await;
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn add_list_and_remove_through_the_store(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("e2", &[]).await;
    app.emis_user("e1", &[]).await;
    seed_others(&app).await;
    let now = t0();

    assert!(canaries::add(&app.pool, "t1", Some("TPP test patient"), now).await.unwrap());
    assert!(canaries::add(&app.pool, "e2", None, now).await.unwrap());
    assert!(canaries::add(&app.pool, "e1", Some("first note"), now).await.unwrap());
    assert!(canaries::add(&app.pool, "v1", None, now).await.unwrap());

    // Ordered by supplier, then user id; supplier and practice come from the credential.
    let all = canaries::list(&app.pool, None).await.unwrap();
    let order: Vec<(&str, Supplier, &str)> =
        all.iter().map(|r| (r.user_id.as_str(), r.supplier, r.ods_code.as_str())).collect();
    assert_eq!(
        order,
        [
            ("e1", Supplier::Emis, "A81001"),
            ("e2", Supplier::Emis, "A81001"),
            ("t1", Supplier::Tpp, "B81001"),
            ("v1", Supplier::Vision, "C81001"),
        ]
    );
    assert_eq!(all[0].note.as_deref(), Some("first note"));
    assert_eq!(all[0].added_at, now);
    assert_eq!((all[0].last_probed_at, all[0].last_outcome.as_deref(), &all[0].last_evidence), (None, None, &None));
    let tpp = canaries::list(&app.pool, Some(Supplier::Tpp)).await.unwrap();
    assert_eq!(tpp.len(), 1);
    assert_eq!(tpp[0].note.as_deref(), Some("TPP test patient"));
    assert!(canaries::list(&app.pool, Some(Supplier::Microtest)).await.unwrap().is_empty());

    // Adding again is not an error: a note replaces the old one, none keeps it, an empty
    // one clears it; the first added_at stays.
    let later = now + TimeDelta::hours(1);
    assert!(!canaries::add(&app.pool, "e1", Some("second note"), later).await.unwrap());
    let note_of = |rows: Vec<canaries::CanaryRow>, user: &str| {
        rows.into_iter().find(|r| r.user_id == user).map(|r| (r.note, r.added_at))
    };
    assert_eq!(note_of(canaries::list(&app.pool, None).await.unwrap(), "e1"), Some((Some("second note".into()), now)));
    assert!(!canaries::add(&app.pool, "e1", None, later).await.unwrap());
    assert_eq!(note_of(canaries::list(&app.pool, None).await.unwrap(), "e1"), Some((Some("second note".into()), now)));
    assert!(!canaries::add(&app.pool, "e1", Some(""), later).await.unwrap());
    assert_eq!(note_of(canaries::list(&app.pool, None).await.unwrap(), "e1"), Some((None, now)));

    // Removing is idempotent and leaves the credential alone.
    assert!(canaries::remove(&app.pool, "e1").await.unwrap());
    assert!(!canaries::remove(&app.pool, "e1").await.unwrap());
    assert!(!canaries::remove(&app.pool, "nobody").await.unwrap());
    assert_eq!(canaries::list(&app.pool, Some(Supplier::Emis)).await.unwrap().len(), 1);
    assert_eq!(app.row("e1").await.status, "unchecked");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn unknown_users_microtest_and_bad_notes_are_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("e1", &[]).await;
    seed_others(&app).await;

    assert!(matches!(canaries::add(&app.pool, "nobody", None, t0()).await, Err(AddError::UnknownUser)));
    assert!(matches!(canaries::add(&app.pool, "m1", None, t0()).await, Err(AddError::Unsupported)));
    let long = "x".repeat(501);
    assert!(matches!(canaries::add(&app.pool, "e1", Some(&long), t0()).await, Err(AddError::InvalidNote(_))));
    assert!(matches!(canaries::add(&app.pool, "e1", Some("a\nb"), t0()).await, Err(AddError::InvalidNote(_))));
    assert!(canaries::list(&app.pool, None).await.unwrap().is_empty(), "nothing was marked");
    assert!(canaries::add(&app.pool, "e1", Some(&"x".repeat(500)), t0()).await.unwrap());
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn probes_read_the_stored_ciphertext_and_record_results(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = app.emis_user("e1", &[]).await;
    app.emis_user("e2", &[]).await;
    app.emis_user("e3", &[]).await;
    seed_others(&app).await;
    for user in ["e2", "e1", "t1"] {
        canaries::add(&app.pool, user, None, t0()).await.unwrap();
    }

    let probes = canaries::for_supplier(&app.pool, Supplier::Emis).await.unwrap();
    let users: Vec<&str> = probes.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(users, ["e1", "e2"], "only EMIS canaries, by user id; e3 is no canary");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_ciphertext FROM im1_credentials WHERE user_id = 'e1'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(probes[0].token_ciphertext, stored);
    assert_eq!((probes[0].supplier, probes[0].ods_code.as_str()), (Supplier::Emis, "A81001"));
    // The ciphertext is the credential's own: it decrypts to the imported token.
    let settings = app.settings();
    let keys = settings.keys.as_ref().expect("keys configured");
    let plain = keys.decrypt("e1", &probes[0].token_ciphertext).expect("decrypts");
    assert!(secrecy::ExposeSecret::expose_secret(&plain).contains(&token));
    let shown = format!("{probes:?}");
    assert!(shown.contains("[ciphertext]") && !shown.contains(&token), "{shown}");
    assert_eq!(canaries::for_supplier(&app.pool, Supplier::Tpp).await.unwrap().len(), 1);
    assert!(canaries::for_supplier(&app.pool, Supplier::Vision).await.unwrap().is_empty());
    assert!(canaries::for_supplier(&app.pool, Supplier::Microtest).await.unwrap().is_empty());

    let at = t0() + TimeDelta::minutes(5);
    let evidence = json!({"http_status": 200});
    canaries::record_probe(&app.pool, "e1", "valid", &evidence, at).await.unwrap();
    let e1 = canaries::list(&app.pool, None).await.unwrap().into_iter().find(|r| r.user_id == "e1").unwrap();
    assert_eq!(e1.last_probed_at, Some(at));
    assert_eq!(e1.last_outcome.as_deref(), Some("valid"));
    assert_eq!(e1.last_evidence, Some(evidence.clone()));

    // A later probe replaces it; an older one (another replica finishing late) does not.
    let later = at + TimeDelta::minutes(5);
    let failed = json!({"http_status": 500, "code": -1030});
    canaries::record_probe(&app.pool, "e1", "invalid", &failed, later).await.unwrap();
    canaries::record_probe(&app.pool, "e1", "valid", &evidence, at).await.unwrap();
    let e1 = canaries::list(&app.pool, None).await.unwrap().into_iter().find(|r| r.user_id == "e1").unwrap();
    assert_eq!((e1.last_probed_at, e1.last_outcome.as_deref()), (Some(later), Some("invalid")));
    assert_eq!(e1.last_evidence, Some(failed));

    // A probe never changes the credential's own standing, and recording for a
    // non-canary is a no-op.
    assert_eq!(app.row("e1").await.status, "unchecked");
    assert_eq!(app.row("e1").await.last_outcome, None);
    canaries::record_probe(&app.pool, "e3", "valid", &evidence, at).await.unwrap();
    assert_eq!(canaries::list(&app.pool, None).await.unwrap().len(), 3);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn erasing_a_credential_removes_its_canary(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.emis_user("e1", &[]).await;
    app.emis_user("e2", &[]).await;
    canaries::add(&app.pool, "e1", Some("gone soon"), t0()).await.unwrap();
    canaries::add(&app.pool, "e2", None, t0()).await.unwrap();

    assert!(im1_revalidator::store::credentials::erase(&app.pool, "e1", t0()).await.unwrap());
    let left: Vec<String> = canaries::list(&app.pool, None).await.unwrap().into_iter().map(|r| r.user_id).collect();
    assert_eq!(left, ["e2"]);
    assert!(canaries::for_supplier(&app.pool, Supplier::Emis).await.unwrap().iter().all(|p| p.user_id == "e2"));
    assert!(!canaries::remove(&app.pool, "e1").await.unwrap());
    // And an erased user cannot be marked again until re-imported.
    assert!(matches!(canaries::add(&app.pool, "e1", None, t0()).await, Err(AddError::UnknownUser)));
}

// ---- the binary ----

/// Runs the binary with only `DATABASE_URL` (no encryption keys: canaries never need them).
async fn canary_cmd(pool: &PgPool, args: &[&str]) -> (Option<i32>, String, String) {
    let mut argv = vec!["credentials", "canary"];
    argv.extend_from_slice(args);
    let (code, out, err) =
        outcome(&run_binary(&argv, vec![("DATABASE_URL".into(), database_url(pool))], String::new()).await);
    (Some(code).filter(|c| *c >= 0), out, err)
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_binary_adds_lists_and_removes_canaries(pool: PgPool) {
    let app = spawn_app(pool).await;
    let emis_token = app.emis_user("e1", &[]).await;
    seed_others(&app).await;
    let mut outputs = String::new();
    let mut run = async |args: &[&str]| {
        let (code, stdout, stderr) = canary_cmd(&app.pool, args).await;
        outputs.push_str(&stdout);
        outputs.push_str(&stderr);
        (code, stdout, stderr)
    };

    let (code, stdout, stderr) = run(&["add", "e1", "--note", "practice test patient"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"e1\" is now a canary"), "{stdout}");
    let (code, stdout, stderr) = run(&["add", "t1"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("now a canary"), "{stdout}");
    let (code, stdout, _) = run(&["add", "t1", "--note", "TPP test patient"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("already a canary; its note was updated"), "{stdout}");

    // Unknown users and Microtest credentials are input errors naming the user.
    let (code, stdout, stderr) = run(&["add", "no-such-user"]).await;
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("no-such-user") && stderr.contains("no credential is stored"), "{stderr}");
    let (code, _, stderr) = run(&["add", "m1"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("\"m1\"") && stderr.contains("Microtest"), "{stderr}");
    let long = "n".repeat(501);
    let (code, _, stderr) = run(&["add", "v1", "--note", &long]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--note must be at most 500 characters"), "{stderr}");
    let (code, _, stderr) = run(&["list", "--supplier", "nhs"]).await;
    assert_eq!(code, Some(2), "{stderr}");

    // The table: a header, one row per canary, aligned columns.
    canaries::record_probe(&app.pool, "e1", "valid", &json!({"http_status": 200}), t0()).await.unwrap();
    let (code, stdout, stderr) = run(&["list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for header in ["user_id", "supplier", "ods_code", "added", "last probe", "last outcome", "note"] {
        assert!(lines[0].contains(header), "{stdout}");
    }
    assert!(lines[1].starts_with("e1 ") && lines[1].contains("emis") && lines[1].contains("A81001"), "{stdout}");
    assert!(lines[1].contains("2026-11-26T09:00:00Z") && lines[1].contains("valid"), "{stdout}");
    assert!(lines[1].ends_with("practice test patient"), "{stdout}");
    assert!(lines[2].starts_with("t1 ") && lines[2].contains("never"), "{stdout}");
    assert!(lines[2].ends_with("TPP test patient"), "{stdout}");
    let (code, stdout, _) = run(&["list", "--supplier", "tpp"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    // JSON: an array of rows.
    let (code, stdout, stderr) = run(&["list", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).expect("a JSON array");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["user_id"], "e1");
    assert_eq!(rows[0]["supplier"], "emis");
    assert_eq!(rows[0]["ods_code"], "A81001");
    assert_eq!(rows[0]["note"], "practice test patient");
    assert_eq!(rows[0]["last_outcome"], "valid");
    assert_eq!(rows[0]["last_evidence"], json!({"http_status": 200}));
    assert_eq!(rows[1]["user_id"], "t1");
    assert_eq!(rows[1]["last_probed_at"], Value::Null);
    let (_, stdout, _) = run(&["list", "--json", "--supplier", "vision"]).await;
    assert_eq!(serde_json::from_str::<Value>(&stdout).expect("JSON"), json!([]));

    // Remove, twice: the second says it was not one and still succeeds.
    let (code, stdout, stderr) = run(&["remove", "e1"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("no longer a canary"), "{stdout}");
    let (code, stdout, stderr) = run(&["remove", "e1"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"e1\" was not a canary"), "{stdout}");
    let (code, stdout, _) = run(&["remove", "t1"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("no longer a canary"));
    let (code, stdout, _) = run(&["list"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(stdout, "no canaries\n");
    let (_, stdout, _) = run(&["list", "--json"]).await;
    assert_eq!(serde_json::from_str::<Value>(&stdout).expect("JSON"), json!([]));

    // No token text anywhere, and the credentials themselves are untouched.
    assert!(!outputs.contains("SECRET") && !outputs.contains(&emis_token), "{outputs}");
    assert_eq!(app.row("e1").await.status, "unchecked");
}

#[tokio::test]
async fn the_binary_needs_a_database_url() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["credentials", "canary", "list"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("runner task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_URL is required"), "{stderr}");
}
