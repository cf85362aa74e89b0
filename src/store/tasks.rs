//! Singleton tasks across replicas: a session-level advisory lock per task (no two replicas
//! run it at once) and a row per tick in `paycron.task_runs` (one run per tick).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use uuid::Uuid;

use super::Result;

/// Held while a singleton task runs; [`SingletonGuard::release`] unlocks it.
///
/// The lock is session-level, so it must never go back to the pool still held: a guard
/// dropped without `release` (an error or a panic between taking and releasing), or whose
/// unlock fails, closes its connection instead, which ends the session and with it the lock.
pub struct SingletonGuard {
    conn: Option<PoolConnection<Postgres>>,
    key: String,
}

impl SingletonGuard {
    /// Releases the advisory lock and returns the connection to the pool.
    ///
    /// # Errors
    /// [`super::StoreError`] (the connection is closed then, so the lock is released anyway).
    pub async fn release(mut self) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&self.key)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                drop(conn.detach());
                Err(e.into())
            }
        }
    }
}

impl Drop for SingletonGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Not released: close the session rather than pool a connection holding the lock.
            drop(conn.detach());
        }
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
    let guard = SingletonGuard {
        conn: Some(conn),
        key,
    };
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
