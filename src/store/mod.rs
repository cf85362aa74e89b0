//! Postgres: the pool, migrations, the embedded local cluster, and every SQL statement paycron
//! runs, grouped by entity.
//!
//! SQL lives here and nowhere else. A function that may join a caller's transaction takes
//! `&mut PgConnection` — a pooled connection, a transaction (`&mut *tx`) and a savepoint all
//! give one — rather than a generic `impl PgExecutor`: one concrete type keeps the signatures
//! readable, costs no monomorphised copies, and lets a function run several statements on the
//! same executor, which `impl PgExecutor` (consumed by its first use) does not. Reads that never
//! join a transaction take the pool. Time that decides what is due is
//! always a parameter (`now`), never `now()` inside a query, so a test clock works.
//!
//! Why the statements are not `query!`/`query_as!` (checked at compile time): the hot ones
//! are assembled from one column list per table (`COLUMNS`, through `sqlf!`) so that a row
//! type and every statement that returns it cannot drift apart, and the macros take only
//! literals; writing each list out again in every statement would trade one check for many
//! copies. What the macros would catch is caught instead by the integration tests, which run
//! every statement against a real, migrated Postgres, and by the typed decoding in `codec`.

/// `format!` for SQL assembled from constant column lists (never from input), marked safe for sqlx.
macro_rules! sqlf {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

/// `columns` (a comma-separated list) with each name qualified by `alias`, for statements that
/// join another table with columns of the same names.
pub(crate) fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(',')
        .map(|col| format!("{alias}.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub mod card_sync;
pub mod cards;
pub mod charges;
mod codec;
pub mod disputes;
pub mod embedded;
pub mod enrollments;
pub mod events;
pub mod fixtures;
pub mod ledger;
pub mod outbound;
pub mod refunds;
pub mod square_webhooks;
pub mod status;
pub mod subscriptions;
pub mod tasks;

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
    /// The server could not be reached or refused the login (exit 1).
    #[error("cannot connect to Postgres at {target}: {cause}")]
    Unreachable {
        /// host:port/database or the socket (never the password).
        target: String,
        /// Why, as the driver said.
        cause: String,
    },
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
    /// The database's schema is older than this paycron.
    #[error(
        "the database schema is at migration {database}, this paycron needs {binary}: run `paycron migrate` with the schema owner's URL (PAYCRON_MIGRATE_DATABASE_URL), e.g. the k8s migrate Job"
    )]
    SchemaBehind {
        /// The database's latest applied migration.
        database: i64,
        /// This binary's latest migration.
        binary: i64,
    },
    /// The database's schema is newer than this paycron.
    #[error(
        "the database schema is at migration {database}, newer than this paycron ({binary}): upgrade paycron"
    )]
    SchemaAhead {
        /// The database's latest applied migration.
        database: i64,
        /// This binary's latest migration.
        binary: i64,
    },
    /// Writing the output failed (a full disk; exit 1, not bad input).
    #[error("{0}")]
    Output(String),
    /// The reader of the output went away (`| head`): the command ends quietly, exit 0.
    #[error("output closed by the reader")]
    OutputClosed,
    /// A background task of the start-up failed (a bug; exit 1, not bad input).
    #[error("start-up task failed: {0}")]
    Task(String),
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
            StoreError::Rejected(_)
                | StoreError::NotFound(_)
                | StoreError::BadUrl(_)
                | StoreError::SchemaBehind { .. }
                | StoreError::SchemaAhead { .. }
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

/// Begins one of billing's batch transactions (a claim, a record). Their statements join
/// a batch (arrays of ids, the rows a claim locks, the rows a statement just wrote) to the
/// tables, one primary-key probe per element. The planner, which cannot see how few the
/// elements are, would otherwise scan the whole table for every batch: at the default
/// `random_page_cost` (4, a spinning disk's) it prices the probes above a scan of a table of up
/// to some hundred thousand rows, and given the choice it hashes or merges a scan of it. The
/// working set of billing is cached, so the transaction prices random reads as such and joins
/// by nested loops only (`SET LOCAL`: nothing outlives it, and it holds behind a
/// transaction-pooling proxy). Sent with the `BEGIN`, in one round trip.
///
/// # Errors
/// [`StoreError::Db`].
pub async fn begin_batch(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    begin_with(
        pool,
        "BEGIN; SET LOCAL random_page_cost = 1.1; SET LOCAL enable_hashjoin = off; \
         SET LOCAL enable_mergejoin = off",
    )
    .await
}

/// Begins a transaction that is safe to abandon while it begins: what the worker, the
/// webhook receiver and sync-cards begin, where a `select!`, a `try_join` or a client hanging
/// up can drop the caller at any await.
///
/// sqlx 0.9 queues no ROLLBACK for a BEGIN whose answer has not arrived yet when its future is
/// dropped, so the connection would go back to the pool inside an open transaction: every
/// later statement on it would run uncommitted, holding its locks. The BEGIN therefore runs
/// in a task of its own, which finishes it whatever happens to the caller; a transaction
/// nobody takes is dropped there, which rolls it back before the connection is pooled again.
///
/// # Errors
/// [`StoreError::Db`].
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    begin_with(pool, "BEGIN").await
}

/// [`begin`] with `statement` as the BEGIN (e.g. `BEGIN; SET LOCAL ...`).
///
/// # Errors
/// [`StoreError::Db`].
pub async fn begin_with(
    pool: &PgPool,
    statement: &'static str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|_| StoreError::Db(sqlx::Error::WorkerCrashed))?
        .map_err(StoreError::from)
}

/// A pool on `opts` with up to `max` connections, migrations applied (the schema owner's
/// connection: tests, the demo, the benchmark, `paycron migrate`).
///
/// # Errors
/// [`StoreError`] if the server is unreachable or a migration fails.
pub async fn open_pool(opts: PgConnectOptions, max: u32) -> Result<PgPool> {
    let pool = open_unmigrated(opts, max).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// A pool on `opts` with up to `max` connections, nothing changed.
///
/// # Errors
/// [`StoreError`] if the server is unreachable.
pub async fn open_unmigrated(opts: PgConnectOptions, max: u32) -> Result<PgPool> {
    // One direct connection first, bounded: a wrong host, port, password or database is named
    // in seconds, with the driver's reason, instead of a pool timing out after half a minute.
    let target = match opts.get_socket() {
        Some(dir) => format!(
            "{} (socket) /{}",
            dir.display(),
            opts.get_database().unwrap_or("")
        ),
        None => format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        ),
    };
    use sqlx::Connection as _;
    match tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect_with(&opts),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => {
            return Err(StoreError::Unreachable {
                target,
                cause: e.to_string(),
            });
        }
        Err(_) => {
            return Err(StoreError::Unreachable {
                target,
                cause: "no answer within 10 s".into(),
            });
        }
    }
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await?)
}

/// The runtime role every command but `migrate` connects as (through a login role granted it):
/// exactly the DML paycron needs, no DDL, no TRUNCATE, no trigger changes, and no UPDATE or
/// DELETE on the ledger, its postings, the events or the feed.
pub const RUNTIME_ROLE: &str = "paycron_runtime";

/// The runtime role and its grants, applied by every `migrate` (roles are cluster-wide, so they
/// are not a migration of one database). One statement list, one implicit transaction; the lock
/// keeps concurrent starts from updating the same catalog rows at once ("tuple concurrently
/// updated").
pub const ROLE_GRANTS: &str = "SELECT pg_advisory_xact_lock(hashtext('paycron:roles'));
         DO $$
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'paycron_runtime') THEN
             CREATE ROLE paycron_runtime NOLOGIN;
           END IF;
         EXCEPTION
           WHEN duplicate_object OR unique_violation THEN NULL;
           WHEN insufficient_privilege THEN
             RAISE WARNING 'cannot create role paycron_runtime (no CREATEROLE): create it, then run paycron migrate again';
         END $$;
         DO $$
         BEGIN
           IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'paycron_runtime') THEN
             GRANT USAGE ON SCHEMA paycron TO paycron_runtime;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA paycron TO paycron_runtime;
             REVOKE UPDATE, DELETE ON paycron.ledger_entries, paycron.ledger_postings, paycron.events,
                                      paycron.event_feed FROM paycron_runtime;
             REVOKE DELETE ON paycron.refunds, paycron.disputes, paycron.enrollments FROM paycron_runtime;
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA paycron TO paycron_runtime;
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA paycron TO paycron_runtime;
             GRANT SELECT ON public._sqlx_migrations TO paycron_runtime;
           END IF;
         END $$;";

/// Applies pending migrations, fills the reference lists and grants the runtime role what it
/// needs (as the schema owner).
///
/// # Errors
/// [`StoreError`].
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    fill_reference_lists(pool).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ROLE_GRANTS))
        .execute(pool)
        .await?;
    Ok(())
}

/// Checks that the database's schema is the one this binary was built for.
///
/// # Errors
/// [`StoreError::SchemaBehind`] / [`StoreError::SchemaAhead`], or [`StoreError::Db`].
pub async fn check_schema(pool: &PgPool) -> Result<()> {
    let binary = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let database: Option<i64> =
        match sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
        {
            Ok(v) => v,
            // No migration table at all: nothing was ever migrated.
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42P01") => None,
            Err(e) => return Err(e.into()),
        };
    let database = database.unwrap_or(0);
    match database.cmp(&binary) {
        std::cmp::Ordering::Less => Err(StoreError::SchemaBehind { database, binary }),
        std::cmp::Ordering::Greater => Err(StoreError::SchemaAhead { database, binary }),
        std::cmp::Ordering::Equal => Ok(()),
    }
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

/// Opens the configured database as the runtime role and checks its schema. The embedded
/// cluster is migrated on the way (its superuser owns the schema, and a login role granted the
/// runtime role is kept for everything else); an external database is migrated only by
/// `paycron migrate` ([`migrate_configured`]).
///
/// # Errors
/// [`StoreError`], [`StoreError::SchemaBehind`] / [`StoreError::SchemaAhead`] included.
pub async fn connect(config: &Config, max: u32) -> Result<(PgPool, DatabaseLocation)> {
    let cfg = config.clone();
    let (url, location) = tokio::task::spawn_blocking(move || resolve_url(&cfg))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let opts = connect_options(&url)?;
    let pool = match &location {
        DatabaseLocation::Embedded(cluster) => {
            create_database_if_missing(&opts, embedded::DATABASE).await?;
            let owner = open_pool(opts, 2).await?;
            let runtime_url = ensure_runtime_login(&owner, cluster).await?;
            owner.close().await;
            open_unmigrated(connect_options(&runtime_url)?, max).await?
        }
        DatabaseLocation::External => open_unmigrated(opts, max).await?,
    };
    check_schema(&pool).await?;
    Ok((pool, location))
}

/// `paycron migrate`: migrates with the owner's URL (`PAYCRON_MIGRATE_DATABASE_URL`, else
/// `DATABASE_URL`, else the embedded cluster's superuser).
///
/// # Errors
/// [`StoreError`].
pub async fn migrate_configured(config: &Config) -> Result<()> {
    match (&config.migrate_database_url, &config.database_url) {
        (Some(url), _) | (None, Some(url)) => {
            let pool = open_pool(connect_options(url.expose_secret())?, 2).await?;
            pool.close().await;
            Ok(())
        }
        (None, None) => connect(config, 2).await.map(|_| ()),
    }
}

/// The embedded cluster's login role for the runtime (`paycron`, granted `paycron_runtime`,
/// with its own generated password), created or brought in line; returns its URL.
async fn ensure_runtime_login(owner: &PgPool, cluster: &LocalCluster) -> Result<String> {
    let password = cluster.runtime_password()?;
    let role = embedded::RUNTIME_LOGIN;
    // The password is bound, never spliced; DDL takes no parameters, so a DO block with a
    // format() does the quoting server-side.
    let mut tx = owner.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('paycron:roles'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('paycron.runtime_password', $1, true)")
        .bind(&password)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$
         DECLARE v_pw text := current_setting('paycron.runtime_password');
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
             EXECUTE format('CREATE ROLE {role} LOGIN PASSWORD %L IN ROLE {RUNTIME_ROLE}', v_pw);
           ELSE
             EXECUTE format('ALTER ROLE {role} LOGIN PASSWORD %L', v_pw);
             EXECUTE 'GRANT {RUNTIME_ROLE} TO {role}';
           END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(cluster.runtime_url(embedded::DATABASE))
}
