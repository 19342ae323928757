//! Import through the store: replacement, same-token no-ops, duplicates, Microtest.

use crate::helpers::*;
use im1_revalidator::store::bulk_import::BulkImport;
use im1_revalidator::store::import::ImportTx;
use im1_revalidator::token::parse_import_line;
use sqlx::PgPool;

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn new_tokens_are_unchecked_and_due_at_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let stats = app.import(&[emis_line("u1", "g1")]).await;
    assert_eq!((stats.new, stats.replaced, stats.unchanged), (1, 0, 0));
    let row = app.row("u1").await;
    assert_eq!(row.status, "unchecked");
    assert!(!row.refresh_required);
    assert_eq!(row.next_check_at, t0());
    let events = app.events("u1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "import");
    assert_eq!(events[0].evidence["change"], "new");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn same_token_again_changes_nothing_and_a_new_one_replaces(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "g1")]).await;
    let before = app.row("u1").await;
    app.advance(chrono::TimeDelta::hours(1));
    let stats = app.import(&[emis_line("u1", "g1")]).await;
    assert_eq!(stats.unchanged, 1);
    assert_eq!(app.row("u1").await, before);
    assert_eq!(app.events("u1").await.len(), 1);

    let stats = app.import(&[emis_line("u1", "g2")]).await;
    assert_eq!(stats.replaced, 1);
    let after = app.row("u1").await;
    assert_eq!(after.next_check_at, t0() + chrono::TimeDelta::hours(1));
    assert_eq!(app.events("u1").await.len(), 2);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn duplicates_within_one_import_are_named_by_line(pool: PgPool) {
    let app = spawn_app(pool).await;
    let settings = app.settings();
    let keys = settings.keys.as_ref().unwrap();
    let mut tx = ImportTx::begin(&app.pool, keys, t0()).await.unwrap();
    let cred = |u: &str, g: &str| parse_import_line(&emis_line(u, g).to_string()).unwrap();
    let first = tx.add(vec![(1, cred("a", "g1")), (2, cred("b", "g2")), (3, cred("a", "g3"))]).await.unwrap();
    let second = tx.add(vec![(4, cred("b", "g4")), (5, cred("c", "g5"))]).await.unwrap();
    let found: Vec<(u64, u64)> = first.iter().chain(&second).map(|d| (d.line, d.first_line)).collect();
    assert_eq!(found, [(3, 1), (4, 2)]);
    tx.commit().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 3);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn microtest_is_unsupported_without_a_token_and_never_claimed(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[serde_json::json!({"user_id": "m1", "supplier": "microtest", "ods_code": "M12345",
                                    "token": {"linkage_key": "dummy"}})])
        .await;
    let row = app.row("m1").await;
    assert_eq!(row.status, "unsupported");
    assert!(!row.refresh_required);
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT token_ciphertext FROM im1_credentials WHERE user_id = 'm1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, None);
    let report = app.sweep().await;
    assert_eq!(report.checks, 0);
    assert_eq!(app.sim.calls().emis.sessions, 0);
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn tokens_are_encrypted_at_rest_bound_to_their_user(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.import(&[emis_line("u1", "SECRET-GUID-1"), emis_line("u2", "SECRET-GUID-2")]).await;
    let (ciphertext, key_id): (Vec<u8>, String) =
        sqlx::query_as("SELECT token_ciphertext, key_id FROM im1_credentials WHERE user_id = 'u1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(key_id, "a");
    assert!(!String::from_utf8_lossy(&ciphertext).contains("SECRET"));
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM im1_credentials t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!dump.contains("SECRET-GUID"));
}

/// Stages `lines` (numbered from 1) in a bulk import and returns it with its duplicates.
async fn bulk<'k>(
    app: &TestApp,
    keys: &'k im1_revalidator::crypto::Keyring,
    lines: &[serde_json::Value],
) -> (BulkImport<'k>, Vec<(u64, u64)>) {
    let mut bulk = BulkImport::begin(&app.pool, keys, app.clock.now_utc()).await.unwrap();
    for (i, line) in lines.iter().enumerate() {
        bulk.stage(i as u64 + 1, parse_import_line(&line.to_string()).unwrap()).await.unwrap();
    }
    let mut duplicates = Vec::new();
    let found = bulk.duplicates(|d| duplicates.push((d.line, d.first_line))).await.unwrap();
    assert_eq!(found as usize, duplicates.len());
    (bulk, duplicates)
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn the_bulk_path_stores_what_the_row_path_stores(pool: PgPool) {
    let app = spawn_app(pool).await;
    let settings = app.settings();
    let keys = settings.keys.as_ref().unwrap();
    // Already stored: kept (same token) and replaced (new token).
    app.import(&[emis_line("kept", "g-kept"), emis_line("swapped", "g-old")]).await;
    let kept_before = app.row("kept").await;
    app.advance(chrono::TimeDelta::hours(1));

    let microtest = serde_json::json!({"user_id": "m1", "supplier": "microtest", "ods_code": "M12345", "token": {}});
    let (mut bulk, duplicates) = bulk(
        &app,
        keys,
        &[
            emis_line("new one\\N", "g-new"),
            emis_line("kept", "g-kept"),
            emis_line("swapped", "g-new-token"),
            microtest,
            emis_line("new one\\N", "g-again"),
            emis_line("kept", "g-other"),
        ],
    )
    .await;
    assert_eq!(duplicates, [(5, 1), (6, 2)], "repeats are named by line, first occurrence kept");
    bulk.write().await.unwrap();
    let stats = bulk.commit().await.unwrap();
    assert_eq!((stats.new, stats.replaced, stats.unchanged), (2, 1, 1));

    // A new credential: unchecked, due now, one event; its user id (a backslash, as COPY escapes it) intact.
    let new = app.row("new one\\N").await;
    assert_eq!((new.status.as_str(), new.refresh_required), ("unchecked", false));
    assert_eq!(new.next_check_at, t0() + chrono::TimeDelta::hours(1));
    let events = app.events("new one\\N").await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind.as_str(), &events[0].evidence["change"]), ("import", &serde_json::json!("new")));
    // The first line's token is the one stored, sealed to its user.
    let (ciphertext,): (Vec<u8>,) = sqlx::query_as("SELECT token_ciphertext FROM im1_credentials WHERE user_id = $1")
        .bind("new one\\N")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let plain = keys.decrypt("new one\\N", &ciphertext).unwrap();
    assert!(secrecy::ExposeSecret::expose_secret(&plain).contains("g-new"));
    assert!(keys.decrypt("kept", &ciphertext).is_err(), "bound to its user id");

    // The same token again changes nothing; a new one replaces the old through the row path.
    assert_eq!(app.row("kept").await, kept_before);
    assert_eq!(app.events("kept").await.len(), 1);
    let swapped = app.events("swapped").await;
    assert_eq!(swapped.len(), 2);
    assert_eq!(swapped[1].evidence["change"], "replaced");
    assert_eq!(app.row("m1").await.status, "unsupported");
}

#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_rolled_back_bulk_import_leaves_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let settings = app.settings();
    let keys = settings.keys.as_ref().unwrap();
    let (mut bulk, _) = bulk(&app, keys, &[emis_line("u1", "g1"), emis_line("u2", "g2")]).await;
    bulk.write().await.unwrap();
    bulk.rollback().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM im1_credentials").fetch_one(&app.pool).await.unwrap();
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM im1_credential_events").fetch_one(&app.pool).await.unwrap();
    assert_eq!((count, events), (0, 0));
}

/// A user id written by another transaction while the import's insert runs: the insert
/// waits on it, fails at its savepoint when it commits, and the line is replayed through the
/// row path as a replacement. Nothing is lost and the import still commits.
#[sqlx::test(migrator = "im1_revalidator::store::MIGRATOR")]
async fn a_user_written_during_the_insert_is_replayed_as_a_replacement(pool: PgPool) {
    let app = spawn_app(pool).await;
    let settings = app.settings();
    let keys = settings.keys.as_ref().unwrap();
    let (mut bulk, _) = bulk(&app, keys, &[emis_line("u1", "g1"), emis_line("racer", "g-import")]).await;

    // Another writer (an API PUT, say) holds an uncommitted row for "racer".
    let mut other = ImportTx::begin(&app.pool, keys, app.clock.now_utc()).await.unwrap();
    other.add(vec![(1, parse_import_line(&emis_line("racer", "g-api").to_string()).unwrap())]).await.unwrap();

    let pool = app.pool.clone();
    let release = async move {
        // Commit once the import's insert is waiting for that row (a lock wait on another
        // backend), never by the clock; bounded, so a write that never waits cannot hang
        // the test (the assertions below then fail instead).
        for _ in 0..100_000 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        other.commit().await.unwrap();
    };
    let (written, ()) = tokio::join!(bulk.write(), release);
    written.unwrap();
    let stats = bulk.commit().await.unwrap();
    assert_eq!((stats.new, stats.replaced), (1, 1));
    assert_eq!(app.row("u1").await.status, "unchecked");
    let racer = app.events("racer").await;
    assert_eq!(racer.len(), 2, "the other writer's event and the import's");
    assert_eq!(racer[1].evidence["change"], "replaced");
    let (ciphertext,): (Vec<u8>,) =
        sqlx::query_as("SELECT token_ciphertext FROM im1_credentials WHERE user_id = 'racer'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let plain = keys.decrypt("racer", &ciphertext).unwrap();
    assert!(secrecy::ExposeSecret::expose_secret(&plain).contains("g-import"), "the import wrote last");
}
