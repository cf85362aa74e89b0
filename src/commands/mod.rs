//! What each CLI command does and prints. `main.rs` parses arguments and calls these; they
//! return a [`CommandError`] whose [`CommandError::exit_code`] follows the contract: 0 done,
//! 1 work failed, 2 bad usage or configuration — each with one clear line.

pub mod bench;
pub mod cards;
pub mod cli;
pub mod db;
pub mod demo;
pub mod disputes;
pub mod enroll;
pub mod env_help;
pub mod events;
pub mod healthcheck;
pub mod ledger;
pub mod refunds;
pub mod review;
pub mod run;
pub mod simulator;
pub mod status;
pub mod subscription;
pub mod webhooks;

use crate::billing::BillingError;
use crate::config::ConfigError;
use crate::gateway::GatewayError;
use crate::store::StoreError;

/// A command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad input: names what and where (exit 2).
    #[error("{0}")]
    BadInput(String),
    /// Configuration (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Database (exit 2 for rejected input, else 1).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Square (exit 2 for a rejected or missing token, else 1).
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Billing (exit 2 for a rejected token, else 1).
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// The daemon (exit 2 when its address cannot be bound, else 1).
    #[error(transparent)]
    Daemon(#[from] crate::scheduler::daemon::DaemonError),
    /// Work that ran but did not all succeed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// I/O (exit 1).
    #[error("{0}")]
    Io(String),
    /// Whoever read the output stopped reading (`paycron ... | head`): not a failure, exit 0
    /// with nothing more said.
    #[error("output closed by the reader")]
    OutputClosed,
}

/// An error writing the output: a reader that went away ends the command quietly; anything
/// else is an I/O failure.
pub fn output_error(e: std::io::Error) -> CommandError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CommandError::OutputClosed
    } else {
        CommandError::Io(format!("cannot write the output: {e}"))
    }
}

/// `println!` for commands: a closed pipe ends the command quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::commands::output_error)
    }};
}

impl CommandError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::OutputClosed | CommandError::Store(StoreError::OutputClosed) => 0,
            CommandError::BadInput(_) | CommandError::Config(_) => 2,
            CommandError::Store(e) if e.is_bad_input() => 2,
            CommandError::Gateway(GatewayError::Unauthorized { .. } | GatewayError::Config(_)) => 2,
            CommandError::Billing(BillingError::Unauthorized { .. } | BillingError::Halted(_)) => 2,
            CommandError::Billing(BillingError::Gateway(GatewayError::Unauthorized { .. })) => 2,
            CommandError::Daemon(crate::scheduler::daemon::DaemonError::Bind { .. }) => 2,
            _ => 1,
        }
    }
}

/// Module result.
pub type Result<T> = std::result::Result<T, CommandError>;

/// How data is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Text,
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// Prints rows as JSON (array), JSON lines, or via `text` for people.
pub fn print_rows<T: serde::Serialize>(
    rows: &[T],
    format: Format,
    text: impl FnOnce(&[T]) -> String,
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => serde_json::to_string_pretty(rows)
            .map_err(|e| CommandError::Io(e.to_string()))
            .and_then(|s| writeln!(out, "{s}").map_err(output_error)),
        Format::Jsonl => rows.iter().try_for_each(|r| {
            let s = serde_json::to_string(r).map_err(|e| CommandError::Io(e.to_string()))?;
            writeln!(out, "{s}").map_err(output_error)
        }),
        Format::Text => write!(out, "{}", text(rows)).map_err(output_error),
    }
}

/// Renders a simple aligned table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
            + "\n"
    };
    let mut s = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        s.push_str(&line(r));
    }
    s
}
