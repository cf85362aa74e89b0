//! Postgres: the pool, migrations, the embedded local cluster, and every SQL statement paycron
//! runs, grouped by entity.
//!
//! SQL lives here and nowhere else. Functions take an executor (`&mut PgConnection` or the
//! pool) so that callers compose them inside one transaction. Time that decides what is due is
//! always a parameter (`now`), never `now()` inside a query, so a test clock works.

/// `format!` for SQL assembled from constant column lists (never from input), marked safe for sqlx.
macro_rules! sqlf {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

pub mod cards;
pub mod charges;
mod codec;
pub mod embedded;
pub mod events;
pub mod ledger;
pub mod outbound;
pub mod subscriptions;
pub mod tasks;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::Config;
use embedded::{ClusterOptions, LocalCluster};

/// The migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What went wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded cluster could not be started.
    #[error(transparent)]
    Embedded(#[from] embedded::EmbeddedError),
    /// The database refused the input (a validation error raised by a paycron SQL function
    /// or a constraint); the message names the field.
    #[error("{0}")]
    Rejected(String),
    /// Something that should exist does not.
    #[error("{0}")]
    NotFound(String),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `DATABASE_URL` does not parse.
    #[error("configuration: DATABASE_URL is not a valid postgres:// URL ({0})")]
    BadUrl(String),
    /// A row that violates the schema was read back (a bug or a hand edit).
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            match db.code().as_deref() {
                Some("22023") | Some("23514") | Some("22P02") => {
                    return StoreError::Rejected(db.message().to_owned());
                }
                Some("P0002") => return StoreError::NotFound(db.message().to_owned()),
                _ => {}
            }
        }
        StoreError::Db(e)
    }
}

impl StoreError {
    /// True for errors caused by the input rather than the system (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::Rejected(_) | StoreError::NotFound(_) | StoreError::BadUrl(_)
        )
    }
}

/// Module result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Where the database is.
#[derive(Clone, Debug)]
pub enum DatabaseLocation {
    /// An external server from `DATABASE_URL`.
    External,
    /// The embedded cluster.
    Embedded(LocalCluster),
}

/// Resolves the database URL: `DATABASE_URL`, or the embedded cluster started on demand.
///
/// # Errors
/// [`StoreError::Embedded`] when the local cluster cannot start.
pub fn resolve_url(config: &Config) -> Result<(String, DatabaseLocation)> {
    if let Some(url) = &config.database_url {
        return Ok((url.expose_secret().to_owned(), DatabaseLocation::External));
    }
    let cluster = LocalCluster::new(&config.home, ClusterOptions::default())?;
    cluster.ensure_running()?;
    Ok((
        cluster.url(embedded::DATABASE),
        DatabaseLocation::Embedded(cluster),
    ))
}

/// Connect options from a URL, with statement logging turned down.
///
/// # Errors
/// [`StoreError::BadUrl`] (the URL itself is never echoed: it may hold a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| {
        let reason = match e {
            sqlx::Error::Configuration(_) => "unparseable",
            _ => "invalid",
        };
        StoreError::BadUrl(reason.to_owned())
    })?;
    Ok(opts
        .application_name("paycron")
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// Creates `database` on the server behind `opts` if it does not exist (race-safe).
///
/// # Errors
/// [`StoreError::Db`].
pub async fn create_database_if_missing(opts: &PgConnectOptions, database: &str) -> Result<()> {
    let admin = opts.clone().database("postgres");
    let mut conn = admin.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            // Another process created it between our check and our CREATE.
            let dup = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !dup {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

impl StoreError {
    /// True when a row could not be turned into its Rust type (a hand-edited or out-of-range
    /// value), as opposed to the database failing.
    pub fn is_unreadable_row(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Db(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))
        )
    }
}

/// A pool on `opts` with up to `max` connections, migrations applied.
///
/// # Errors
/// [`StoreError`] if the server is unreachable or a migration fails.
pub async fn open_pool(opts: PgConnectOptions, max: u32) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await?;
    MIGRATOR.run(&pool).await?;
    fill_reference_lists(&pool).await?;
    Ok(pool)
}

/// Fills `paycron.time_zones` and `paycron.currencies` from the engine's own lists, so the SQL
/// API accepts exactly what the engine can bill. Insert-only: a name a later build drops stays
/// (rows may use it) and is quarantined by the engine if it cannot read it.
///
/// # Errors
/// [`StoreError`].
pub async fn fill_reference_lists(pool: &PgPool) -> Result<()> {
    let zones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect();
    let currencies: Vec<&str> = crate::domain::money::currency_codes().collect();
    sqlx::query(
        "WITH z AS (INSERT INTO paycron.time_zones (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING)
         INSERT INTO paycron.currencies (code) SELECT unnest($2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&zones)
    .bind(&currencies)
    .execute(pool)
    .await?;
    Ok(())
}

/// Opens the configured database (starting the embedded cluster when needed) and migrates it.
///
/// # Errors
/// [`StoreError`].
pub async fn connect(config: &Config, max: u32) -> Result<(PgPool, DatabaseLocation)> {
    let cfg = config.clone();
    let (url, location) = tokio::task::spawn_blocking(move || resolve_url(&cfg))
        .await
        .map_err(|e| StoreError::Rejected(format!("start-up task failed: {e}")))??;
    let opts = connect_options(&url)?;
    if matches!(location, DatabaseLocation::Embedded(_)) {
        create_database_if_missing(&opts, embedded::DATABASE).await?;
    }
    Ok((open_pool(opts, max).await?, location))
}
