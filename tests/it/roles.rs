//! `deploy/sql/roles.sql`: the least-privilege roles, applied to each test's own database
//! exactly as an operator applies the file. Roles belong to the whole cluster (every test
//! database shares them) while grants belong to one database, so every test applies the
//! file to its own database; tests run in parallel, so the file must tolerate concurrent
//! runs, which one test provokes on purpose.
//!
//! The worker is proved by running the real commands as `im1_worker` (the binary with a
//! DATABASE_URL naming that role: trust authentication accepts any role with LOGIN); what
//! it and the reader must not do is proved by trying it and getting PostgreSQL's
//! `insufficient_privilege` (42501).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgPool};

use crate::helpers::*;

/// The file under test, byte for byte.
const ROLES_SQL: &str = include_str!("../../deploy/sql/roles.sql");

/// PostgreSQL's `insufficient_privilege`: "permission denied for ...", "must be owner of ...".
const INSUFFICIENT_PRIVILEGE: &str = "42501";

async fn apply_roles(pool: &PgPool) {
    sqlx::raw_sql(ROLES_SQL).execute(pool).await.expect("roles.sql applies");
}

/// This test database's URL with another user in it.
fn url_as(pool: &PgPool, role: &str) -> String {
    let url = database_url(pool);
    let (_, rest) = url.split_once('@').expect("the URL names a user");
    format!("postgres://{role}@{rest}")
}

/// A pool logged in as `role`. Close it before the test ends: the test database is dropped
/// afterwards, which a lingering session would prevent.
async fn connect_as(pool: &PgPool, role: &str) -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(&url_as(pool, role)).await.expect("the role can log in")
}

/// Runs `sql` and expects PostgreSQL to refuse it for lack of privilege.
async fn assert_denied(pool: &PgPool, sql: &'static str) {
    match sqlx::raw_sql(sql).execute(pool).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {}
        Err(e) => panic!("{sql}\nexpected permission denied (42501), got: {e}"),
        Ok(_) => panic!("{sql}\nexpected permission denied (42501), but it succeeded"),
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The binary's environment as `im1_worker`, pointed at this test's simulator.
fn worker_env(pool: &PgPool, app: &TestApp) -> Vec<(String, String)> {
    binary_env(
        url_as(pool, "im1_worker"),
        app,
        &[("IM1_CONFIRM_AFTER", "0s"), ("IM1_RETRY_ATTEMPTS", "0"), ("RUST_LOG", "info")],
    )
}

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Runs the binary as the worker and expects exit 0 with no database error swallowed
/// along the way: several paths (pruning, probe records, lease extension) only log a
/// failed statement, so a missing grant would not show in the exit code alone.
async fn worker_ok(args: &[&str], env: &[(String, String)], stdin: &str) -> String {
    let (code, stdout, stderr) = outcome(&run_binary(args, env.to_vec(), stdin.to_owned()).await);
    assert_eq!(code, 0, "{args:?} as im1_worker:\n{stdout}\n{stderr}");
    for bad in ["permission denied", "could not", "must be owner", "SECRET"] {
        assert!(!stdout.contains(bad) && !stderr.contains(bad), "{args:?}: {bad:?} in:\n{stdout}\n{stderr}");
    }
    stdout
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_reader_reads_the_status_view_and_nothing_else(pool: PgPool) {
    apply_roles(&pool).await;
    let app = spawn_app(pool.clone()).await;
    app.import(&[emis_line("u1", "SECRET-READER")]).await;
    let reader = connect_as(&pool, "im1_reader").await;

    let (status, refresh_required): (String, bool) =
        sqlx::query_as("SELECT status, refresh_required FROM im1_credential_status WHERE user_id = 'u1'")
            .fetch_one(&reader)
            .await
            .expect("the reader reads the view");
    assert_eq!((status.as_str(), refresh_required), ("unchecked", false));
    // RP backends may wait for changes; LISTEN needs no grant.
    let mut listener = PgListener::connect(&url_as(&pool, "im1_reader")).await.unwrap();
    listener.listen("im1_credential_status").await.expect("the reader may LISTEN");

    for sql in [
        // No table: not the tokens, not the audit trail, not the guard's or canaries' rows.
        "SELECT * FROM im1_credentials",
        "SELECT token_ciphertext FROM im1_credentials",
        "SELECT * FROM im1_credential_events",
        "SELECT * FROM im1_held_verdicts",
        "SELECT * FROM im1_canaries",
        "SELECT * FROM im1_sweeps",
        "SELECT * FROM im1_processes",
        "SELECT * FROM im1_supplier_state",
        "SELECT * FROM im1_supplier_counts",
        "SELECT * FROM _sqlx_migrations",
        // No write, through the (auto-updatable) view or otherwise.
        "UPDATE im1_credential_status SET refresh_required = false",
        "DELETE FROM im1_credential_status",
        "INSERT INTO im1_credential_status (user_id, supplier, ods_code, next_check_at, updated_at) \
         VALUES ('x', 'emis', 'A81001', now(), now())",
        "UPDATE im1_credentials SET refresh_required = false",
        "DELETE FROM im1_credentials",
        "INSERT INTO im1_credential_events (user_id, supplier, ods_code, at, kind, to_status, refresh_required) \
         VALUES ('x', 'emis', 'A81001', now(), 'check', 'valid', false)",
        "DELETE FROM im1_credential_events",
        "UPDATE im1_supplier_state SET guard_held_since = NULL",
        "DELETE FROM im1_held_verdicts",
        "DELETE FROM im1_canaries",
        "TRUNCATE im1_credentials",
        // No objects of its own, not even temporary ones.
        "CREATE TABLE reader_owned (a int)",
        "CREATE TEMPORARY TABLE reader_temp (a int)",
        "CREATE VIEW reader_view AS SELECT 1 AS one",
        "DROP VIEW im1_credential_status",
    ] {
        assert_denied(&reader, sql).await;
    }
    drop(listener);
    reader.close().await;
}

/// What each role may do on each relation of the schema, read from the catalog: a table a
/// new migration adds appears here with no privileges, and this test fails until
/// roles.sql decides what the worker needs on it.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn grants_are_exactly_those_roles_sql_documents(pool: PgPool) {
    apply_roles(&pool).await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        r#"
        SELECT c.relname::text,
               concat_ws(',', VARIADIC ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                         'TRUNCATE', 'REFERENCES', 'TRIGGER']) p WHERE has_table_privilege('im1_worker', c.oid, p))),
               concat_ws(',', VARIADIC ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                         'TRUNCATE', 'REFERENCES', 'TRIGGER']) p WHERE has_table_privilege('im1_reader', c.oid, p)))
          FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND NOT c.relispartition
         ORDER BY c.relname
        "#,
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let actual: BTreeMap<String, (String, String)> = rows.into_iter().map(|(t, w, r)| (t, (w, r))).collect();
    let expected: BTreeMap<String, (String, String)> = [
        ("_sqlx_migrations", "SELECT", ""),
        ("im1_canaries", "SELECT,INSERT,UPDATE,DELETE", ""),
        ("im1_credential_events", "SELECT,INSERT,DELETE", ""),
        ("im1_credential_status", "SELECT", "SELECT"),
        ("im1_credentials", "SELECT,INSERT,UPDATE,DELETE", ""),
        ("im1_held_verdicts", "SELECT,INSERT,UPDATE,DELETE", ""),
        ("im1_processes", "SELECT,INSERT,UPDATE,DELETE", ""),
        ("im1_supplier_counts", "SELECT,INSERT,UPDATE,DELETE", ""),
        ("im1_supplier_state", "SELECT,UPDATE", ""),
        ("im1_sweeps", "SELECT,INSERT,UPDATE", ""),
    ]
    .into_iter()
    .map(|(t, w, r)| (t.to_owned(), (w.to_owned(), r.to_owned())))
    .collect();
    assert_eq!(actual, expected, "(worker, reader) privileges per relation; a new table needs a line in roles.sql");

    // The events' monthly partitions are reached through the partitioned table only.
    let reachable: Vec<String> = sqlx::query_scalar(
        r#"
        SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relispartition
           AND (has_table_privilege('im1_worker', c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE')
                OR has_table_privilege('im1_reader', c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE'))
        "#,
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(reachable, Vec::<String>::new(), "no partition is granted directly");
    // Their upkeep runs as the owner, through two functions only the worker may call.
    let functions: Vec<(String, bool, bool)> = sqlx::query_as(
        r#"
        SELECT p.proname::text, has_function_privilege('im1_worker', p.oid, 'EXECUTE'),
               has_function_privilege('im1_reader', p.oid, 'EXECUTE')
          FROM pg_proc p
         WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'im1_events_%'
         ORDER BY p.proname
        "#,
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let functions: Vec<(&str, bool, bool)> = functions.iter().map(|(n, w, r)| (n.as_str(), *w, *r)).collect();
    assert_eq!(
        functions,
        [
            ("im1_events_drop_months_before", true, false),
            ("im1_events_ensure_month", false, false),
            ("im1_events_ensure_months", true, false),
        ]
    );

    let (flags, schema, database): (Vec<bool>, Vec<bool>, Vec<bool>) = sqlx::query_as(
        r#"
        SELECT ARRAY(SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls
                       FROM pg_roles WHERE rolname IN ('im1_worker', 'im1_reader')),
               ARRAY[has_schema_privilege('im1_worker', current_schema(), 'USAGE'),
                     has_schema_privilege('im1_reader', current_schema(), 'USAGE'),
                     has_schema_privilege('im1_worker', current_schema(), 'CREATE'),
                     has_schema_privilege('im1_reader', current_schema(), 'CREATE')],
               ARRAY[has_database_privilege('im1_worker', current_database(), 'CONNECT'),
                     has_database_privilege('im1_reader', current_database(), 'CONNECT'),
                     has_database_privilege('im1_worker', current_database(), 'TEMPORARY'),
                     has_database_privilege('im1_reader', current_database(), 'TEMPORARY'),
                     has_database_privilege('im1_worker', current_database(), 'CREATE'),
                     has_database_privilege('im1_reader', current_database(), 'CREATE')]
        "#,
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(flags, [false, false], "neither role has a power that bypasses grants");
    assert_eq!(schema, [true, true, false, false], "schema: USAGE for both, CREATE for neither");
    assert_eq!(database, [true, true, true, false, false, false], "database: CONNECT both, TEMPORARY worker only");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_worker_cannot_change_the_schema_or_rewrite_the_audit_trail(pool: PgPool) {
    apply_roles(&pool).await;
    let app = spawn_app(pool.clone()).await;
    app.import(&[emis_line("u1", "SECRET-AUDIT")]).await;
    let worker = connect_as(&pool, "im1_worker").await;

    for sql in [
        "DROP TABLE im1_credentials",
        "DROP TABLE im1_credential_events",
        "ALTER TABLE im1_credentials ADD COLUMN x int",
        "ALTER TABLE im1_credential_events DISABLE TRIGGER im1_credential_events_no_update",
        "DROP TRIGGER im1_credential_events_no_update ON im1_credential_events",
        "CREATE INDEX ON im1_credentials (status)",
        "CREATE OR REPLACE VIEW im1_credential_status AS SELECT * FROM im1_credentials",
        "CREATE TABLE worker_owned (a int)",
        "CREATE FUNCTION worker_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        // The audit trail is append-only: no rewriting, no wholesale wipe.
        "UPDATE im1_credential_events SET evidence = '{}'",
        "TRUNCATE im1_credential_events",
        // No migration: the ledger is read-only.
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999999999999, 'x', true, '\\x00', 0)",
        "DELETE FROM _sqlx_migrations",
        // No way up.
        "SET ROLE postgres",
    ] {
        assert_denied(&worker, sql).await;
    }
    // A GRANT without the grant option grants nothing (PostgreSQL only warns): the reader
    // still cannot read the tokens.
    let _ = sqlx::raw_sql("GRANT SELECT ON im1_credentials TO im1_reader").execute(&worker).await;
    let reader = connect_as(&pool, "im1_reader").await;
    assert_denied(&reader, "SELECT * FROM im1_credentials").await;
    reader.close().await;

    // What it does need: a temporary table (import) and retention pruning of old events.
    let mut tx = worker.begin().await.unwrap();
    sqlx::raw_sql("CREATE TEMPORARY TABLE im1_import_seen (user_id text PRIMARY KEY) ON COMMIT DROP")
        .execute(&mut *tx)
        .await
        .expect("the worker may create import's temporary table");
    tx.rollback().await.unwrap();
    assert_eq!(count(&worker, "SELECT count(*) FROM im1_credential_events").await, 1);
    // The import's event (at t0) moves from the default partition into its month's, which
    // the worker has created.
    let made = im1_revalidator::store::events::ensure_months(&worker, t0())
        .await
        .expect("the worker creates the coming months' event partitions");
    assert_eq!(made, 4);
    let pruned = im1_revalidator::store::events::prune(&worker, t0() + chrono::TimeDelta::days(100))
        .await
        .expect("the worker prunes events, dropping whole months");
    assert_eq!(pruned.total(), 1);
    assert_eq!(pruned.dropped, 1, "t0's month is dropped whole");
    // ... through the maintenance functions only: the partitions themselves are out of reach.
    assert_denied(&worker, "DROP TABLE im1_credential_events_default").await;
    assert_denied(&worker, "SELECT count(*) FROM im1_credential_events_default").await;
    worker.close().await;

    // `migrate` runs as the owner; as the worker it stops at the first statement.
    let (code, _, stderr) = outcome(
        &run_binary(&["migrate"], vec![("DATABASE_URL".into(), url_as(&pool, "im1_worker"))], String::new()).await,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}

/// The operator's commands, through the binary, as `im1_worker`: import (its temporary
/// table), canaries, sweeps that write verdicts, events and held verdicts, the guard
/// commands, recheck, status, check-config.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_worker_runs_import_sweep_guard_and_canaries_through_the_binary(pool: PgPool) {
    apply_roles(&pool).await;
    let app = spawn_app(pool.clone()).await;
    for token in ["SECRET-A1", "SECRET-A2", "SECRET-B1", "SECRET-B2"] {
        app.sim.script(token, steps(&["not_registered"]));
    }
    let line = |user: &str, ods: &str, token: &str| {
        serde_json::json!({"user_id": user, "supplier": "emis", "ods_code": ods,
                           "token": {"access_identity_guid": token}})
        .to_string()
    };
    let file = [
        line("good1", "A81001", "SECRET-G1"),
        line("good2", "A81001", "SECRET-G2"),
        line("a1", "A81001", "SECRET-A1"),
        line("a2", "A81001", "SECRET-A2"),
        line("b1", "B81001", "SECRET-B1"),
        line("b2", "B81001", "SECRET-B2"),
    ]
    .join("\n");
    let env = worker_env(&pool, &app);
    // The guard stays out of the first sweep's way.
    let calm = with(&env, &[("IM1_GUARD_MIN_CHECKS", "1000")]);

    let out = worker_ok(&["credentials", "import"], &env, &file).await;
    assert!(out.contains("6 new"), "{out}");
    worker_ok(&["credentials", "canary", "add", "good1", "--note", "test patient"], &env, "").await;
    assert!(worker_ok(&["credentials", "canary", "list"], &env, "").await.contains("good1"));

    worker_ok(&["sweep"], &calm, "").await;
    assert_eq!(count(&pool, "SELECT count(*) FROM im1_credentials WHERE last_outcome = 'suspect'").await, 4);
    assert_eq!(count(&pool, "SELECT count(*) FROM im1_credentials WHERE status = 'valid'").await, 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM im1_canaries WHERE last_outcome = 'valid'").await,
        1,
        "the canary's probe was recorded"
    );
    // Replacing a token reads, decrypts and compares the stored one first.
    let out = worker_ok(&["credentials", "import"], &env, &line("good2", "A81001", "SECRET-G2-NEW")).await;
    assert!(out.contains("1 replaced"), "{out}");

    // Now the guard trips on the first sweep's share of invalid answers and holds every
    // confirmation instead of flagging anyone.
    let jumpy = with(&env, &[("IM1_GUARD_MIN_CHECKS", "1"), ("IM1_GUARD_THRESHOLD", "0.1")]);
    worker_ok(&["recheck", "--all"], &env, "").await;
    worker_ok(&["sweep", "--dry-run"], &jumpy, "").await;
    worker_ok(&["sweep"], &jumpy, "").await;
    let held = count(&pool, "SELECT count(*) FROM im1_held_verdicts").await;
    assert!(held >= 1, "the guard held the confirmations");
    assert_eq!(count(&pool, "SELECT count(*) FROM im1_credentials WHERE refresh_required").await, 0);
    assert!(worker_ok(&["guard", "list", "--supplier", "emis"], &env, "").await.contains("A81001"));
    worker_ok(&["guard", "discard", "--supplier", "emis", "--ods-code", "B81001"], &env, "").await;
    worker_ok(&["guard", "release", "--supplier", "emis"], &env, "").await;
    assert_eq!(count(&pool, "SELECT count(*) FROM im1_held_verdicts").await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM im1_supplier_state WHERE guard_held_since IS NOT NULL").await,
        0,
        "released: the guard is clear"
    );

    worker_ok(&["recheck", "--supplier", "emis"], &env, "").await;
    worker_ok(&["sweep"], &calm, "").await;
    let status: serde_json::Value =
        serde_json::from_str(&worker_ok(&["status", "--json"], &env, "").await).expect("status --json");
    assert_eq!(status["suppliers"]["emis"]["statuses"]["invalid"], 4, "{status}");
    assert_eq!(status["suppliers"]["emis"]["refresh_required"], 4, "{status}");
    worker_ok(&["check-config"], &env, "").await;
    worker_ok(&["credentials", "canary", "remove", "good1"], &env, "").await;
    // Key rotation: a new primary key, the old one kept to decrypt.
    let rotated = with(&env, &[("IM1_ENCRYPTION_KEYS", &format!("{KEY_B},{KEY_A}"))]);
    assert!(worker_ok(&["keys", "status"], &rotated, "").await.contains('a'));
    worker_ok(&["keys", "rotate"], &rotated, "").await;
    let left = count(&pool, "SELECT count(*) FROM im1_credentials WHERE key_id <> 'b'").await;
    assert_eq!(left, 0, "every token re-encrypted by the worker");

    let sweeps = count(&pool, "SELECT count(*) FROM im1_sweeps WHERE succeeded").await;
    assert_eq!(sweeps, 3, "every sweep recorded itself");
    let events: String =
        sqlx::query_scalar("SELECT coalesce(string_agg(e::text, ' '), '') FROM im1_credential_events e")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(events.contains("\"guard\""), "guard events were written");
    assert!(!events.contains("SECRET"));
}

/// `run` as `im1_worker`: start-up (the migration ledger), the heartbeat, and the RP API:
/// a PUT (import's temporary table), a priority check served between sweeps, a refresh
/// outcome, an erasure, and a clean exit that removes its heartbeat row.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_worker_serves_the_api_from_run(pool: PgPool) {
    apply_roles(&pool).await;
    let app = spawn_app(pool.clone()).await;
    app.import(&[emis_line("gone", "SECRET-GONE")]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("run").env_clear();
    for (k, v) in worker_env(&pool, &app) {
        cmd.env(k, v);
    }
    let child = cmd
        .env("IM1_SCHEDULE", "off")
        .env("IM1_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("IM1_API_TOKENS", "api-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..400 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let api = |method: reqwest::Method, path: &str| {
        client.request(method, format!("{base}/v1/credentials/{path}")).bearer_auth("api-token")
    };
    let put = api(reqwest::Method::PUT, "new-user")
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"supplier": "emis", "ods_code": "A81001",
                               "token": {"access_identity_guid": "SECRET-API"}})
            .to_string(),
        )
        .send()
        .await
        .map(|r| r.status().as_u16());
    let check = api(reqwest::Method::POST, "new-user/check?wait=10s").send().await;
    let checked = match check {
        Ok(r) => {
            (r.status().as_u16(), r.text().await.ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()))
        }
        Err(_) => (0, None),
    };
    let refresh = api(reqwest::Method::POST, "gone/refresh-outcome")
        .header("content-type", "application/json")
        .body(r#"{"outcome": "failed"}"#)
        .send()
        .await
        .map(|r| r.status().as_u16());
    let erased = api(reqwest::Method::DELETE, "gone").send().await.map(|r| r.status().as_u16());
    let after = api(reqwest::Method::GET, "gone").send().await.map(|r| r.status().as_u16());
    let live = count(&pool, "SELECT count(*) FROM im1_processes").await;

    let out = stop_run(child).await;
    let (code, stdout, stderr) = outcome(&out);
    assert!(ready, "run as im1_worker never became ready:\n{stderr}");
    assert_eq!(code, 0, "{stderr}");
    for bad in ["permission denied", "could not", "internal error", "SECRET"] {
        assert!(!stdout.contains(bad) && !stderr.contains(bad), "{bad:?} in:\n{stdout}\n{stderr}");
    }
    assert_eq!(put.ok(), Some(201), "{stderr}");
    assert_eq!(checked.0, 200, "{stderr}");
    assert_eq!(checked.1.as_ref().and_then(|r| r["status"].as_str()), Some("valid"), "{checked:?}");
    assert_eq!(refresh.ok(), Some(204), "{stderr}");
    assert_eq!(erased.ok(), Some(204), "{stderr}");
    assert_eq!(after.ok(), Some(404));
    assert_eq!(live, 1, "run heartbeats as the worker");
    assert_eq!(count(&pool, "SELECT count(*) FROM im1_processes").await, 0, "a clean exit deregisters");
    assert_eq!(count(&pool, "SELECT count(*) FROM im1_credential_events WHERE kind = 'erasure'").await, 1);
}

/// Running the file again changes nothing, and so does running it from several sessions at
/// once, including the race to create the roles themselves: here the roles get names of
/// their own (the real ones exist already once any test has run), one session holds a
/// half-made role uncommitted while the file runs in others, and every run must succeed.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn roles_sql_is_idempotent_and_tolerates_concurrent_runs(pool: PgPool) {
    apply_roles(&pool).await;
    apply_roles(&pool).await;
    let (a, b) = tokio::join!(sqlx::raw_sql(ROLES_SQL).execute(&pool), sqlx::raw_sql(ROLES_SQL).execute(&pool));
    a.expect("first concurrent run");
    b.expect("second concurrent run");

    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (worker, reader) = (format!("im1_worker_t{suffix}"), format!("im1_reader_t{suffix}"));
    let renamed = ROLES_SQL.replace("im1_worker", &worker).replace("im1_reader", &reader);

    // Another session is creating the worker role right now and has not committed.
    let mut other = sqlx::PgConnection::connect(&database_url(&pool)).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("BEGIN; CREATE ROLE {worker} LOGIN"))).execute(&mut other).await.unwrap();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (pool, sql) = (pool.clone(), renamed.clone());
            tokio::spawn(async move { sqlx::raw_sql(AssertSqlSafe(sql)).execute(&pool).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs.iter().all(|r| !r.is_finished()), "the runs wait for the uncommitted role");
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.unwrap().map(|_| ()).map_err(|e| e.to_string()));
    }
    // Read on the session that is certainly idle, and kept as a Result: a failed run may
    // have left a role missing, and the cleanup below must happen all the same.
    let checked: Result<(i64, bool), _> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN ('{worker}', '{reader}')), \
                has_table_privilege('{reader}', 'im1_credential_status', 'SELECT') \
                AND NOT has_table_privilege('{reader}', 'im1_credentials', 'SELECT') \
                AND has_table_privilege('{worker}', 'im1_credentials', 'UPDATE')"
    )))
    .fetch_one(&mut other)
    .await;
    // Cleanup before asserting, whichever of the roles exist: they are cluster-wide and
    // their grants live only in this database.
    for role in [&worker, &reader] {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
             DROP OWNED BY {role}; DROP ROLE {role}; END IF; END $$"
        )))
        .execute(&mut other)
        .await
        .unwrap();
    }
    other.close().await.unwrap();
    assert!(results.iter().all(Result::is_ok), "every concurrent run succeeds: {results:?}");
    let (roles, granted) = checked.expect("both roles exist");
    assert_eq!(roles, 2);
    assert!(granted, "the concurrent runs granted what the file says");
}
