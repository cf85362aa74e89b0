//! The `paycron` binary: parses the command line, sets up logging and the runtime, reads
//! signals, and hands everything else to the library (`paycron::commands::cli`).

use std::process::ExitCode;

use clap::Parser;
use paycron::commands::cli::{Cli, dispatch, is_report};
use paycron::config::Config;
use paycron::ops::shutdown::Shutdown;

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
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paycron: {e}");
            return ExitCode::from(2);
        }
    };
    let default_level = if is_report(&cli.command) {
        "warn"
    } else {
        "info"
    };
    paycron::ops::logging::init(config.log_format, default_level);
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
    match runtime.block_on(dispatch(cli.command, config, signals)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.exit_code() == 0 => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paycron: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
