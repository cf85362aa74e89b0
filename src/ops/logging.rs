//! Logging with `tracing`: readable text on stderr by default, one JSON object per line with
//! `PAYCRON_LOG_FORMAT=json`. `RUST_LOG` filters (default `info`, third-party libraries at
//! `warn`). Logs go to stderr so that
//! command output on stdout (ids, JSON, tables) stays clean for scripts.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Libraries whose INFO and DEBUG lines are about themselves (a query's timing, a connection,
/// a scheduler's job bookkeeping), not about billing: warnings only, unless `RUST_LOG` asks.
pub const QUIET_LIBRARIES: [&str; 8] = [
    "sqlx",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "tower_http",
    "tokio_cron_scheduler",
];

/// The filter when `RUST_LOG` is unset: `level` for paycron, warnings for the libraries.
pub fn default_filter(level: &str) -> String {
    let mut f = level.to_owned();
    for lib in QUIET_LIBRARIES {
        f.push_str(&format!(",{lib}=warn"));
    }
    f
}

/// Installs the global subscriber once; later calls are no-ops (tests build many apps).
/// `default` is the filter when `RUST_LOG` is unset (`info` for work, `warn` for the demo,
/// whose output is its summary).
pub fn init(format: LogFormat, default: &str) {
    // Postgres NOTICEs ("relation already exists, skipping") are noise for operators.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(default)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_quiets_libraries_and_parses() {
        let f = default_filter("info");
        assert!(f.starts_with("info,") && f.contains("sqlx=warn") && f.contains("hyper=warn"));
        assert!(EnvFilter::try_new(&f).is_ok(), "{f}");
    }
}
