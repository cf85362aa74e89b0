//! The command line: the commands, each one's flags owned by its module in `commands/`, and
//! the dispatch to them. The binary only parses, sets up logging and the runtime, and reads
//! signals (handed in as `signals`, so the library never waits on OS signals itself).
// clap turns each doc comment into help text; the fields that only hold a subcommand carry
// none on purpose, so the usual rule that every public item is documented is off here.
#![allow(missing_docs)]

use clap::{Parser, Subcommand};

use super::{
    Result, bench, cards, db, demo, disputes, enroll, events, healthcheck, ledger, refunds, review,
    run, simulator, status, subscription, webhooks,
};
use crate::app::App;
use crate::config::Config;
use crate::ops::shutdown::Shutdown;

/// Recurring billing for cards on file with Square.
#[derive(Parser)]
#[command(name = "paycron", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    /// The command.
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply database migrations as the schema owner (the only command that changes the schema).
    Migrate,
    /// The daemon: ticks schedules/*.toml, serves /healthz /readyz /metrics, drains on SIGTERM.
    Run,
    /// Exit 0 when the local daemon's /healthz answers 200 (a container's HEALTHCHECK).
    Healthcheck,
    /// Outbound webhooks: endpoints and their deliveries.
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCmd,
    },
    /// Embedded Postgres + built-in Square simulator: months of billing in seconds.
    Demo(demo::DemoArgs),
    /// Throughput benchmark against the simulator.
    Bench(bench::BenchArgs),
    /// The Square-compatible simulator as a standalone server.
    Simulator(simulator::SimulatorArgs),
    /// The embedded local cluster.
    Db {
        #[command(subcommand)]
        command: db::DbCmd,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `paycron man > /usr/local/share/man/man1/paycron.1`.
    Man,
    #[command(flatten)]
    App(AppCommand),
}

/// The commands that work on the database through the app.
#[derive(Subcommand)]
pub enum AppCommand {
    /// How are we doing: subscriptions by status, what is due, charges waiting, last runs,
    /// webhook backlog, refunds and disputes open.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: super::Format,
    },
    /// Pull customers and their cards from Square into Postgres.
    SyncCards,
    /// Cards on file.
    Cards {
        #[command(subcommand)]
        command: cards::CardsCmd,
    },
    /// Customers.
    Customers {
        #[command(subcommand)]
        command: cards::CustomersCmd,
    },
    /// Subscriptions.
    Subscription {
        #[command(subcommand)]
        command: subscription::SubscriptionCmd,
    },
    /// Sign a customer up at the counter: prints a link that takes the first payment in Square
    /// Point of Sale; the card saved there pays every later period.
    Enroll(Box<enroll::EnrollArgs>),
    /// Enrollments at the counter and where they stand.
    Enrollments {
        #[command(subcommand)]
        command: enroll::EnrollmentsCmd,
    },
    /// Do all due work as of now (or --now), then exit.
    RunOnce(run::RunOnceArgs),
    /// Square's payments vs the ledger; non-zero exit on any difference.
    Reconcile(ledger::ReconcileArgs),
    /// Give money back for a charge, exactly once (over-refund: exit 2, nothing sent).
    Refund(refunds::RefundArgs),
    /// Refunds and where they stand.
    Refunds {
        #[command(subcommand)]
        command: refunds::RefundsCmd,
    },
    /// Disputes (chargebacks) Square reported.
    Disputes {
        #[command(subcommand)]
        command: disputes::DisputesCmd,
    },
    /// Charges whose answer did not match them: list them, and record a decision.
    Charges {
        #[command(subcommand)]
        command: review::ChargesCmd,
    },
    /// The append-only ledger.
    Ledger {
        #[command(subcommand)]
        command: ledger::LedgerCmd,
    },
    /// The events feed.
    Events {
        #[command(subcommand)]
        command: events::EventsCmd,
    },
}

/// Runs `command`; `signals` is called by the commands that watch a shutdown (the daemon,
/// run-once, the simulator, events tail) and only by them: the rest keep the default, so a
/// SIGTERM ends them.
///
/// # Errors
/// [`super::CommandError`], whose exit code follows the contract.
pub async fn dispatch(command: Command, config: Config, signals: fn() -> Shutdown) -> Result<()> {
    match command {
        Command::Migrate => db::migrate(config).await,
        Command::Run => run::daemon(config, signals()).await,
        Command::Healthcheck => healthcheck::healthcheck(&config).await,
        Command::Webhooks { command } => command.execute(config).await,
        Command::Demo(args) => demo::run(config, args).await,
        Command::Bench(args) => bench::run(config, args).await,
        Command::Simulator(args) => simulator::run(args, signals()).await,
        Command::Db { command } => command.execute(config).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "paycron", &mut out);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
                .map_err(super::output_error)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(super::env_help::annotate(Cli::command()))
                .render(&mut out)
                .map_err(super::output_error)?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
                .map_err(super::output_error)
        }
        Command::App(command) => {
            let app = App::build(config).await?;
            match command {
                AppCommand::Status { format } => status::status(&app, format).await,
                AppCommand::SyncCards => run::sync_cards(&app).await,
                AppCommand::Cards { command } => command.execute(&app).await,
                AppCommand::Customers { command } => command.execute(&app).await,
                AppCommand::Subscription { command } => command.execute(&app).await,
                AppCommand::Enroll(args) => enroll::enroll(&app, *args).await,
                AppCommand::Enrollments { command } => command.execute(&app).await,
                AppCommand::RunOnce(args) => run::run_once(&app, args, signals()).await,
                AppCommand::Reconcile(args) => ledger::reconcile(&app, args).await,
                AppCommand::Refund(args) => refunds::refund(&app, args).await,
                AppCommand::Refunds { command } => command.execute(&app).await,
                AppCommand::Disputes { command } => command.execute(&app).await,
                AppCommand::Charges { command } => command.execute(&app).await,
                AppCommand::Ledger { command } => command.execute(&app).await,
                AppCommand::Events { command } => command.execute(&app, signals()).await,
            }
        }
    }
}

/// Whether `command` prints a report of its own (the demo, the benchmark): logs default to
/// warnings then.
pub fn is_report(command: &Command) -> bool {
    matches!(command, Command::Demo(_) | Command::Bench(_))
}
