//! Logging with `tracing`: readable text on stderr by default, one JSON object per line with
//! `PAYCRON_LOG_FORMAT=json`. `RUST_LOG` filters (default `info`). Logs go to stderr so that
//! command output on stdout (ids, JSON, tables) stays clean for scripts.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls are no-ops (tests build many apps).
/// `default` is the filter when `RUST_LOG` is unset (`info` for work, `warn` for the demo,
/// whose output is its summary).
pub fn init(format: LogFormat, default: &str) {
    // Postgres NOTICEs ("relation already exists, skipping") are noise for operators.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default))
        .add_directive("sqlx::postgres::notice=warn".parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
