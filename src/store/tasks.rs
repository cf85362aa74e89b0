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

/// Takes `task`'s lock alone (a command run by hand, outside the daemon's ticks); `None` when
/// another process holds it.
///
/// # Errors
/// [`super::StoreError`].
pub async fn lock_task(pool: &PgPool, task: &str) -> Result<Option<SingletonGuard>> {
    let key = format!("paycron:task:{task}");
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(locked.then_some(SingletonGuard {
        conn: Some(conn),
        key,
    }))
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
    let Some(guard) = lock_task(pool, task).await? else {
        return Ok(None);
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

/// The last run of one task, across replicas.
#[derive(Clone, Debug, serde::Serialize, sqlx::FromRow)]
pub struct TaskResult {
    /// The task (`bill-due`, `reconcile`, ...).
    pub task: String,
    /// The job that ran it.
    pub job: String,
    /// The replica (worker id).
    pub owner: Uuid,
    /// When the run began.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// Its counts (the run's log line fields).
    pub summary: serde_json::Value,
    /// Runs recorded.
    pub runs: i64,
    /// Of which failed.
    pub failures: i64,
    /// The last success.
    pub last_ok_at: Option<DateTime<Utc>>,
}

/// One finished run of `task`: replaces the task's last result.
///
/// # Errors
/// [`super::StoreError`].
pub async fn record_result(pool: &PgPool, r: &TaskResult) -> Result<()> {
    sqlx::query(
        "INSERT INTO paycron.task_results (task, job, owner, started_at, finished_at, ok, error, summary,
                runs, failures, last_ok_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, CASE WHEN $6 THEN 0 ELSE 1 END, CASE WHEN $6 THEN $5 END)
         ON CONFLICT (task) DO UPDATE SET job = EXCLUDED.job, owner = EXCLUDED.owner,
                started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, ok = EXCLUDED.ok,
                error = EXCLUDED.error, summary = EXCLUDED.summary, runs = task_results.runs + 1,
                failures = task_results.failures + EXCLUDED.failures,
                last_ok_at = coalesce(EXCLUDED.last_ok_at, task_results.last_ok_at)",
    )
    .bind(&r.task)
    .bind(&r.job)
    .bind(r.owner)
    .bind(r.started_at)
    .bind(r.finished_at)
    .bind(r.ok)
    .bind(&r.error)
    .bind(&r.summary)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every task's last run, by task.
///
/// # Errors
/// [`super::StoreError`].
pub async fn results(pool: &PgPool) -> Result<Vec<TaskResult>> {
    Ok(sqlx::query_as(
        "SELECT task, job, owner, started_at, finished_at, ok, error, summary, runs, failures, last_ok_at
           FROM paycron.task_results ORDER BY task",
    )
    .fetch_all(pool)
    .await?)
}
