//! `paycron db status|stop|url` and `paycron migrate`.

use super::{CommandError, Result};
use crate::app::App;
use crate::config::Config;
use crate::store::embedded::{self, ClusterOptions, LocalCluster};

/// `paycron db ...`.
#[derive(clap::Subcommand)]
pub enum DbCmd {
    /// Is the embedded cluster running?
    Status,
    /// Stop the embedded cluster.
    Stop,
    /// Print the embedded cluster's URL, with its generated password (starting it if needed).
    Url {
        /// The database (default: paycron's own; the demo's is paycron_demo).
        #[arg(long)]
        database: Option<String>,
        /// The schema owner's URL (the superuser) instead of the runtime role's.
        #[arg(long)]
        owner: bool,
    },
}

impl DbCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, config: Config) -> Result<()> {
        match self {
            DbCmd::Status => status(&config),
            DbCmd::Stop => stop(&config),
            DbCmd::Url { database, owner } => url(config, database.as_deref(), owner).await,
        }
    }
}

fn cluster(config: &Config) -> Result<LocalCluster> {
    if config.database_url.is_some() {
        return Err(CommandError::BadInput(
            "DATABASE_URL is set: `paycron db` manages only the embedded cluster (unset DATABASE_URL to use it)".into(),
        ));
    }
    Ok(LocalCluster::new(&config.home, ClusterOptions::default())
        .map_err(crate::store::StoreError::from)?)
}

/// `db status`: whether the embedded cluster runs, and where.
///
/// # Errors
/// [`CommandError`].
pub fn status(config: &Config) -> Result<()> {
    let c = cluster(config)?;
    let running = c.is_running().map_err(crate::store::StoreError::from)?;
    crate::out!(
        "{} ({})",
        if running { "running" } else { "stopped" },
        c.describe()
    )?;
    Ok(())
}

/// `db stop`.
///
/// # Errors
/// [`CommandError`].
pub fn stop(config: &Config) -> Result<()> {
    let c = cluster(config)?;
    let stopped = c.stop().map_err(crate::store::StoreError::from)?;
    crate::out!("{}", if stopped { "stopped" } else { "not running" })?;
    Ok(())
}

/// `db url`: starts the cluster if needed and prints the runtime role's URL (or, with
/// `--owner`, the superuser's), saying on stderr which it is.
///
/// # Errors
/// [`CommandError`].
pub async fn url(config: Config, database: Option<&str>, owner: bool) -> Result<()> {
    let c = cluster(&config)?;
    let app = App::build(config).await?;
    drop(app);
    let database = database.unwrap_or(embedded::DATABASE);
    if database.is_empty()
        || !database
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        return Err(CommandError::BadInput(format!(
            "--database {database:?}: letters, digits and _ only"
        )));
    }
    if owner {
        eprintln!(
            "paycron: the owner's URL (superuser {}: migrations, administration)",
            embedded::SUPERUSER
        );
        crate::out!("{}", c.url(database))?;
    } else {
        eprintln!(
            "paycron: the runtime role's URL (login {}, granted {}: what every command uses); --owner for the owner's",
            embedded::RUNTIME_LOGIN,
            crate::store::RUNTIME_ROLE
        );
        crate::out!("{}", c.runtime_url(database))?;
    }
    Ok(())
}

/// `migrate`: applies pending migrations as the schema owner (`PAYCRON_MIGRATE_DATABASE_URL`,
/// else `DATABASE_URL`, else the embedded cluster). Every other command only checks that the
/// schema is the one it was built for.
///
/// # Errors
/// [`CommandError`].
pub async fn migrate(config: Config) -> Result<()> {
    crate::store::migrate_configured(&config).await?;
    let applied: i64 = crate::store::MIGRATOR.iter().count() as i64;
    tracing::info!(migrations = applied, "database is up to date");
    Ok(())
}
