//! Import through the store: replacement, same-token no-ops, duplicates, Microtest.

use crate::helpers::*;
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
