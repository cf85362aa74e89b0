//! The `paycron` binary: parses the command line, sets up logging and the runtime, reads
//! signals, and hands everything else to the library (`paycron::commands::cli`).

use std::process::ExitCode;

use paycron::commands::cli::{Cli, dispatch, is_report};
use paycron::config::{Config, LogFormat};
use paycron::ops::shutdown::Shutdown;

// Why this allocator: Cargo.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The one place signals are read: the first SIGTERM or SIGINT drains, a second one aborts.
fn signals() -> Shutdown {
    let shutdown = Shutdown::new();
    let tokens = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        for token in [&tokens.drain, &tokens.abort] {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
            tracing::info!(signal = name, "signal received");
            token.cancel();
        }
    });
    shutdown
}

fn main() -> ExitCode {
    let cli = {
        use clap::{CommandFactory, FromArgMatches};
        let matches = paycron::commands::env_help::annotate(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // The configuration is unreadable, but an operator who asked for JSON logs (in the
            // one setting that could still be read) gets this line as JSON too.
            let json = std::env::var("PAYCRON_LOG_FORMAT").is_ok_and(|v| v.trim() == "json");
            if json {
                paycron::ops::logging::init(LogFormat::Json, "error");
            }
            return fail(json, &e.to_string(), 2);
        }
    };
    let default_level = if is_report(&cli.command) {
        "warn"
    } else {
        "info"
    };
    paycron::ops::logging::init(config.log_format, default_level);
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paycron: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = config.log_format == LogFormat::Json;
    match runtime.block_on(dispatch(cli.command, config, signals)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.exit_code() == 0 => ExitCode::SUCCESS,
        Err(e) => fail(json, &e.to_string(), e.exit_code()),
    }
}

/// The one line that ends a failed run: plain text, or a JSON log line when logs are JSON (so
/// a collector sees why the process exited).
fn fail(json: bool, message: &str, code: u8) -> ExitCode {
    if json {
        tracing::error!(exit_code = code, "{message}");
    } else {
        eprintln!("paycron: {message}");
    }
    ExitCode::from(code)
}
