//! Fixtures for the benchmark, apart from the production store: set-based seeding that
//! bypasses the SQL API for speed. Nothing in billing or the commands a business runs uses it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Result;

/// Seeds `n` customers, each with one card and one monthly subscription; the first `due` are
/// due at `at`, the rest fall due over the following four weeks. A few set-based statements
/// (the benchmark's fixture; it bypasses the SQL API for speed).
///
/// # Errors
/// [`super::StoreError`].
pub async fn bulk_seed(pool: &PgPool, n: i64, due: i64, at: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin().await?;
    // The rows are consistent by construction, so a superuser's seed skips the per-row
    // triggers and foreign-key checks (a bulk load's usual set-up: at 10 million rows they are
    // most of the seeding time). Without the privilege the seed runs with them, only slower.
    sqlx::query("SAVEPOINT seed").execute(&mut *tx).await?;
    if sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .is_err()
    {
        sqlx::query("ROLLBACK TO SAVEPOINT seed")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("INSERT INTO paycron.customers (id) SELECT 'BENCH' || lpad(g::text, 9, '0') FROM generate_series(1, $1) g")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO paycron.cards (id, customer_id, card_brand, last_4, exp_month, exp_year)
         SELECT 'ccof:bench-' || g, 'BENCH' || lpad(g::text, 9, '0'), 'VISA', '1111', 12, 2035
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO paycron.subscriptions (id, customer_id, card_id, amount_minor, currency, interval_unit,
                interval_count, anchor, status, next_due_at)
         SELECT gen_random_uuid(), 'BENCH' || lpad(g::text, 9, '0'), 'ccof:bench-' || g, 1000 + g % 9000, 'USD',
                'month', 1, s.at, 'active', s.at
           FROM generate_series(1, $1) g,
                LATERAL (SELECT CASE WHEN g <= $3 THEN $2
                                     ELSE $2 + make_interval(days => 1 + (g % 27)::int) END AS at) s",
    )
    .bind(n)
    .bind(at)
    .bind(due)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Statistics as autovacuum keeps them for a table that grew gradually; without them the
    // planner sees the fresh tables as empty.
    sqlx::query("ANALYZE paycron.customers, paycron.cards, paycron.subscriptions")
        .execute(pool)
        .await?;
    Ok(())
}

/// The 50th and 99th percentiles, in milliseconds, of how long the benchmark's charges took
/// from their claim (the charge row's `created_at`, the claim transaction's start) to their
/// record (`resolved_at`): what a charge waits in the queue, at Square and for its batch.
///
/// # Errors
/// [`super::StoreError`].
pub async fn claim_to_record_ms(pool: &PgPool) -> Result<(f64, f64)> {
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
           FROM (SELECT extract(epoch FROM resolved_at - created_at)::float8 * 1000 AS d
                   FROM paycron.charges WHERE resolved_at IS NOT NULL) t",
    )
    .fetch_one(pool)
    .await?;
    Ok((p50.unwrap_or(0.0), p99.unwrap_or(0.0)))
}

/// How many of the benchmark's charges succeeded.
///
/// # Errors
/// [`super::StoreError`].
pub async fn succeeded_charges(pool: &PgPool) -> Result<u64> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paycron.charges WHERE status = 'succeeded'")
            .fetch_one(pool)
            .await?;
    Ok(n as u64)
}
