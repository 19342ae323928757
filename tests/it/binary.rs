//! The built binary, as operators and the acceptance scenarios run it: exit codes,
//! messages, and that no token text reaches stdout or stderr.

use std::process::Output;

use sqlx::PgPool;

use crate::helpers::*;

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn base_env(pool: &PgPool) -> Vec<(String, String)> {
    vec![("DATABASE_URL".into(), database_url(pool)), ("IM1_ENCRYPTION_KEYS".into(), KEY_A.into())]
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn import_rejects_the_whole_file_listing_every_bad_line(pool: PgPool) {
    let file = [
        r#"{"user_id":"u1","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"SECRET-ONE"}}"#,
        "",
        r#"{"user_id":"u2","supplier":"emis","ods_code":"a81001","token":{"access_identity_guid":"SECRET-TWO"}}"#,
        r#"{"user_id":"u3","supplier":"tpp","ods_code":"B81001","token":{"account_id":"SECRET-ACC"}}"#,
        r#"not json SECRET-THREE"#,
        r#"{"user_id":"u1","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"SECRET-FOUR"}}"#,
        r#"{"user_id":"u5","supplier":"vision","ods_code":"C81001","token":{"rosu_account_id":"r","api_key":"k","apikey":"SECRET-FIVE"}}"#,
    ]
    .join("\n");
    let out = run_binary(&["credentials", "import", "-"], base_env(&pool), file.clone()).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "line 3: ods_code: must be 3 to 10 uppercase letters and digits",
        "line 4: token.passphrase: is required",
        "line 5: line: is not valid JSON",
        "line 6: user_id: repeats line 1",
        "line 7: token.apikey: is not a vision token field",
        "import rejected: 5 bad line(s) of 6; nothing was imported",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(!stdout.contains("SECRET") && !stderr.contains("SECRET"), "{stdout}{stderr}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0, "all or nothing");

    let out = run_binary(&["credentials", "import", "--skip-invalid"], base_env(&pool), file).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("line 6: user_id: repeats line 1"));
    assert!(stdout.contains("1 new"), "{stdout}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn hostile_import_lines_are_rejected_cleanly(pool: PgPool) {
    let mut file = Vec::new();
    file.extend_from_slice(
        br#"{"user_id":"u1","supplier":"emis","ods_code":"A81001","token":{"access_identity_guid":"g"}}"#,
    );
    file.push(b'\n');
    file.extend_from_slice(&vec![b'x'; 200_000]);
    file.push(b'\n');
    file.extend_from_slice(b"{\"user_id\":\"u\xff\"}\n");
    file.extend_from_slice(format!("{}{}\n", "[".repeat(10_000), "]".repeat(10_000)).as_bytes());
    let path = std::env::temp_dir().join(format!("im1-hostile-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&path, &file).unwrap();
    let out = run_binary(&["credentials", "import", path.to_str().unwrap()], base_env(&pool), String::new()).await;
    std::fs::remove_file(&path).ok();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: line is longer than 65536 bytes"), "{stderr}");
    assert!(stderr.contains("line 3: line is not valid UTF-8"), "{stderr}");
    assert!(stderr.contains("line 4: line: is nested too deeply"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[tokio::test]
async fn bad_configuration_names_every_problem_and_exits_2() {
    let out = run_binary(
        &["check-config"],
        vec![
            ("IM1_LEASE".into(), "2s".into()),
            ("IM1_CONCURRENCY".into(), "lots".into()),
            ("IM1_ENCRYPTION_KEYS".into(), "k1:SECRET-NOT-BASE64!".into()),
            ("IM1_SCHEDULE".into(), "every tuesday".into()),
        ],
        String::new(),
    )
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for var in ["IM1_LEASE", "IM1_CONCURRENCY", "IM1_ENCRYPTION_KEYS", "IM1_SCHEDULE"] {
        assert!(stderr.contains(var), "{var} not named in:\n{stderr}");
    }
    assert!(!stderr.contains("SECRET"), "{stderr}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out =
        run_binary(&["recheck"], vec![("DATABASE_URL".into(), "postgres://x@127.0.0.1/x".into())], String::new()).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--supplier S, --user U or --all"));
    let out = run_binary(&["no-such-command"], vec![], String::new()).await;
    assert_eq!(out.status.code(), Some(2));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn sweep_status_and_recheck_through_the_binary_never_print_a_token(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.sim.script("SECRET-REVOKED", steps(&["not_registered"]));
    app.sim.script("SECRET-DOWN", steps(&["server_error"]));
    let lines = [
        emis_line("good", "SECRET-GOOD").to_string(),
        emis_line("revoked", "SECRET-REVOKED").to_string(),
        emis_line("down", "SECRET-DOWN").to_string(),
    ]
    .join("\n");
    let mut env = base_env(&pool);
    env.extend([
        ("IM1_EMIS_URL".to_owned(), app.running.emis_url()),
        ("IM1_EMIS_APPLICATION_ID".to_owned(), "app".to_owned()),
        ("IM1_CONFIRM_AFTER".to_owned(), "0s".to_owned()),
        ("RUST_LOG".to_owned(), "debug".to_owned()),
    ]);
    let mut all_output = String::new();
    let mut step = |out: Output, code: i32| {
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{o}\n{e}");
        all_output.push_str(&o);
        all_output.push_str(&e);
        o
    };
    step(run_binary(&["migrate"], env.clone(), String::new()).await, 0);
    step(run_binary(&["credentials", "import"], env.clone(), lines).await, 0);
    let dry = step(run_binary(&["sweep", "--dry-run"], env.clone(), String::new()).await, 0);
    assert!(dry.contains("would change revoked (emis): unchecked -> unchecked, outcome suspect"), "{dry}");
    step(run_binary(&["sweep"], env.clone(), String::new()).await, 0);
    step(run_binary(&["sweep", "--supplier", "emis"], env.clone(), String::new()).await, 0);
    step(run_binary(&["recheck", "--all"], env.clone(), String::new()).await, 0);
    let status = step(run_binary(&["status", "--json"], env.clone(), String::new()).await, 0);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["suppliers"]["emis"]["statuses"]["valid"], 1);
    assert_eq!(status["suppliers"]["emis"]["statuses"]["invalid"], 1);
    assert_eq!(status["suppliers"]["emis"]["refresh_required"], 1);
    let table = step(run_binary(&["status"], env.clone(), String::new()).await, 0);
    assert!(table.starts_with("supplier"), "{table}");
    step(run_binary(&["check-config"], env.clone(), String::new()).await, 0);
    assert!(all_output.contains("credential standing changed"), "logs are written");
    assert!(!all_output.contains("SECRET"), "a token leaked:\n{all_output}");
    let events: String =
        sqlx::query_scalar("SELECT coalesce(string_agg(e::text, ' '), '') FROM im1_credential_events e")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!events.contains("SECRET"));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn check_config_names_key_ids_in_use_but_not_configured(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.import(&[emis_line("u1", "g1")]).await;
    let env = vec![("DATABASE_URL".into(), database_url(&pool)), ("IM1_ENCRYPTION_KEYS".into(), KEY_B.into())];
    let out = run_binary(&["check-config"], env, String::new()).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(r#"key id "a" encrypts 1 token(s) but is not in IM1_ENCRYPTION_KEYS"#), "{stderr}");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn run_sweeps_on_schedule_serves_admin_and_stops_on_sigterm(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.sim.script("SECRET-RUN-REVOKED", steps(&["not_registered"]));
    app.import(&[emis_line("u1", "SECRET-RUN-OK"), emis_line("u2", "SECRET-RUN-REVOKED")]).await;
    let (port, child) = spawn_run(&pool, &app, "* * * * * *");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_status(&client, &format!("{base}/healthz"), 200).await;
    wait_for_status(&client, &format!("{base}/readyz"), 200).await;
    // The every-second schedule sweeps; wait until a sweep has been recorded.
    let mut metrics = String::new();
    for _ in 0..400 {
        metrics = wait_for_status(&client, &format!("{base}/metrics"), 200).await;
        if metrics.contains("im1_credentials{supplier=\"emis\",status=\"valid\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    for name in [
        "im1_credentials{supplier=\"emis\",status=\"valid\"} 1",
        "im1_checks_total{supplier=\"emis\",outcome=\"valid\"}",
        "im1_checks_total{supplier=\"emis\",outcome=\"suspect\"}",
        "im1_refresh_required{supplier=\"emis\"} 0",
        "im1_next_sweep_timestamp_seconds",
        "im1_last_sweep_success_timestamp_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(!metrics.contains("u1") && !metrics.contains("A81001"), "no user id or ODS code as a label");
    let out = stop_run(child).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(!stdout.contains("SECRET") && !stderr.contains("SECRET"));
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials WHERE lease_expires_at IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leased, 0);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn readyz_fails_before_migrations(pool: PgPool) {
    // A database with no schema: `run` refuses to start, naming the fix.
    sqlx::query("DROP TABLE _sqlx_migrations").execute(&pool).await.unwrap();
    let out = run_binary(&["run"], base_env(&pool), String::new()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("run `im1-revalidator migrate` first"));
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn run_without_a_schedule_still_serves_priority_checks(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.import(&[emis_line("u1", "guid-prio")]).await;
    let (port, child) = spawn_run(&pool, &app, "off");
    let client = reqwest::Client::new();
    wait_for_status(&client, &format!("http://127.0.0.1:{port}/readyz"), 200).await;
    assert_eq!(app.sim.token_calls("guid-prio"), 0, "no schedule, no sweep");
    let asked = chrono::Utc::now();
    assert!(im1_revalidator::store::priority::request(&pool, "u1", asked, None).await.unwrap());
    let mut served = false;
    for _ in 0..400 {
        if !im1_revalidator::store::priority::pending(&pool, "u1").await.unwrap() {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    stop_run(child).await;
    assert!(served, "the priority request was never served");
    assert_eq!(app.sim.token_calls("guid-prio"), 1);
    let row = im1_revalidator::store::status::row(&pool, "u1").await.unwrap().unwrap();
    assert_eq!(row.status, "valid");
}
