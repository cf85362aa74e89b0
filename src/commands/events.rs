//! `paycron events tail`: the events feed, in feed order, optionally following it.

use super::{CommandError, Result};
use crate::app::App;
use crate::ops::shutdown::Shutdown;
use crate::store::{StoreError, events};

/// `paycron events ...`.
#[derive(clap::Subcommand)]
pub enum EventsCmd {
    /// Print events after an id; --follow waits for new ones.
    Tail {
        /// Start after this feed position (each line carries its `position`).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
        /// Output format: a line per event, for people or as JSON (a feed has no end to close
        /// a JSON array with).
        #[arg(long, value_enum, default_value = "text")]
        format: TailFormat,
    },
}

/// How `events tail` prints: a line per event either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    /// Aligned text.
    Text,
    /// One JSON object per line.
    Jsonl,
}

impl EventsCmd {
    /// Runs the command; `shutdown` ends a `--follow`.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App, shutdown: Shutdown) -> Result<()> {
        match self {
            EventsCmd::Tail {
                after,
                follow,
                format,
            } => tail(app, after, follow, format, shutdown).await,
        }
    }
}

/// `events tail [--after ID] [--follow]`.
///
/// # Errors
/// [`CommandError`].
async fn tail(
    app: &App,
    after: i64,
    follow: bool,
    format: TailFormat,
    shutdown: Shutdown,
) -> Result<()> {
    let mut last = after;
    let mut listener = if follow {
        let mut l = sqlx::postgres::PgListener::connect_with(&app.pool)
            .await
            .map_err(StoreError::from)?;
        l.listen("paycron_events").await.map_err(StoreError::from)?;
        Some(l)
    } else {
        None
    };
    loop {
        let rows = events::after(&app.pool, last, 1000).await?;
        for f in &rows {
            let r = &f.event;
            match format {
                TailFormat::Text => crate::out!(
                    "{:>8}  {}  {:<28} {}  {}",
                    f.position,
                    r.created_at.to_rfc3339(),
                    r.kind,
                    r.subscription_id.map(|s| s.to_string()).unwrap_or_default(),
                    r.payload
                )?,
                TailFormat::Jsonl => crate::out!(
                    "{}",
                    serde_json::to_string(f).map_err(|e| CommandError::Io(e.to_string()))?
                )?,
            }
            last = f.position;
        }
        if rows.len() == 1000 {
            continue;
        }
        match listener.as_mut() {
            None => return Ok(()),
            Some(l) => {
                // A notification says an event committed; an event held back behind a
                // transaction still in progress gets its position later, so look again
                // every second as well.
                tokio::select! {
                    n = l.recv() => { n.map_err(StoreError::from)?; }
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = shutdown.drain.cancelled() => return Ok(()),
                }
            }
        }
    }
}
