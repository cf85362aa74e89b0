//! Singleton tasks across replicas: a session-level advisory lock per task (no two replicas
//! run it at once) and a row per tick in `paycron.task_runs` (one run per tick).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use uuid::Uuid;

use super::Result;

/// Held while a singleton task runs; [`SingletonGuard::release`] unlocks it.
pub struct SingletonGuard {
    conn: PoolConnection<Postgres>,
    key: String,
}

impl SingletonGuard {
    /// Releases the advisory lock (dropping the guard without it closes nothing: the pooled
    /// connection would keep the lock, so always release).
    ///
    /// # Errors
    /// [`super::StoreError`].
    pub async fn release(mut self) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&self.key)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }
}

/// Takes `task`'s lock and records this `tick` for it. `None` when another replica holds the
/// lock or already ran this tick.
///
/// # Errors
/// [`super::StoreError`].
pub async fn claim_singleton(
    pool: &PgPool,
    task: &str,
    tick: DateTime<Utc>,
    owner: Uuid,
) -> Result<Option<SingletonGuard>> {
    let key = format!("paycron:task:{task}");
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&key)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let guard = SingletonGuard { conn, key };
    let mut conn = pool.acquire().await?;
    let inserted = sqlx::query("INSERT INTO paycron.task_runs (task, tick, owner) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(task)
        .bind(tick)
        .bind(owner)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if inserted == 0 {
        guard.release().await?;
        return Ok(None);
    }
    Ok(Some(guard))
}

/// How many runs of `task` were recorded (tests and status).
///
/// # Errors
/// [`super::StoreError`].
pub async fn runs(pool: &PgPool, task: &str) -> Result<Vec<(DateTime<Utc>, Uuid)>> {
    Ok(
        sqlx::query_as("SELECT tick, owner FROM paycron.task_runs WHERE task = $1 ORDER BY tick")
            .bind(task)
            .fetch_all(pool)
            .await?,
    )
}
