//! The command line: every command, its flags and their help, and the dispatch to what each
//! command does. The binary only parses, sets up logging and the runtime, and reads signals
//! (handed in as `signals`, so the library never waits on OS signals itself).
// clap turns each doc comment into help text; the fields that only hold a subcommand carry
// none on purpose, so the usual rule that every public item is documented is off here.
#![allow(missing_docs)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::commands::{self, CommandError, Format, db, manage, run};
use crate::config::Config;
use crate::ops::shutdown::Shutdown;
use crate::simulator::SimConfig;
use crate::store::subscriptions::Action;

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
    /// Outbound webhooks: endpoints and their deliveries.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCmd,
    },
    /// Embedded Postgres + built-in Square simulator: months of billing in seconds.
    Demo {
        /// Customers the simulator seeds.
        #[arg(long, default_value_t = 300)]
        customers: usize,
        /// Months of billing to step through.
        #[arg(long, default_value_t = 6)]
        months: u32,
    },
    /// Throughput benchmark against the simulator.
    Bench(crate::commands::bench::BenchArgs),
    /// The Square-compatible simulator as a standalone server.
    Simulator {
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// Customers to seed.
        #[arg(long, default_value_t = 100)]
        customers: usize,
        /// Seeded card mix: realistic or all-ok.
        #[arg(long, default_value = "realistic")]
        mix: String,
        /// Require exactly this access token (default: any non-empty token).
        #[arg(long)]
        token: Option<String>,
        /// RNG seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// ListCustomers page size.
        #[arg(long, default_value_t = 100)]
        customers_page: usize,
        /// Approve unknown ccof: card ids as the given customer's (benchmarks).
        #[arg(long)]
        accept_unknown_cards: bool,
        /// Added latency, milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Share of requests answered 500.
        #[arg(long, default_value_t = 0.0)]
        error_5xx_rate: f64,
        /// Share of requests answered 429.
        #[arg(long, default_value_t = 0.0)]
        rate_429_rate: f64,
        /// Retry-After seconds on 429s.
        #[arg(long)]
        retry_after_secs: Option<u64>,
        /// Share of CreatePayment answers lost after the payment was taken.
        #[arg(long, default_value_t = 0.0)]
        lose_response_rate: f64,
        /// Share of CreatePayment answers sent only after --slow-ms (payment taken first).
        #[arg(long, default_value_t = 0.0)]
        slow_rate: f64,
        /// Delay of slow answers, milliseconds.
        #[arg(long, default_value_t = 0)]
        slow_ms: u64,
    },
    /// The embedded local cluster.
    Db {
        #[command(subcommand)]
        command: DbCmd,
    },
    #[command(flatten)]
    App(AppCommand),
}

/// The commands that work on the database through the app (all but the cluster, migration,
/// daemon, demo, bench, simulator and webhook tooling).
#[derive(Subcommand)]
pub enum AppCommand {
    /// Pull customers and their cards from Square into Postgres.
    SyncCards,
    /// Cards on file.
    Cards {
        #[command(subcommand)]
        command: CardsCmd,
    },
    /// Customers.
    Customers {
        #[command(subcommand)]
        command: CustomersCmd,
    },
    /// Subscriptions.
    Subscription {
        #[command(subcommand)]
        command: SubscriptionCmd,
    },
    /// Do all due work as of now (or --now), then exit.
    RunOnce {
        /// Which task.
        #[arg(long, value_enum, default_value = "all")]
        task: run::Task,
        /// The clock to bill at (RFC 3339); refused in the future against Square production.
        #[arg(long)]
        now: Option<String>,
    },
    /// Square's payments vs the ledger; non-zero exit on any difference.
    Reconcile {
        /// Window start, RFC 3339 (default: 30 days before --until).
        #[arg(long)]
        since: Option<String>,
        /// Window end, RFC 3339 (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Record payments Square took for charges still pending here.
        #[arg(long)]
        repair: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Charges whose answer did not match them: list them, and record a decision.
    Charges {
        #[command(subcommand)]
        command: ChargesCmd,
    },
    /// The append-only ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCmd,
    },
    /// The events feed.
    Events {
        #[command(subcommand)]
        command: EventsCmd,
    },
}

#[derive(Subcommand)]
pub enum CardsCmd {
    /// Import ids a business already stored: customer_id,card_id,card_brand,last_4,exp_month,exp_year.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// List stored cards.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum CustomersCmd {
    /// List stored customers.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum SubscriptionCmd {
    /// Create a subscription; prints its id.
    Create(Box<manage::CreateArgs>),
    /// List subscriptions.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show one subscription.
    Show {
        /// Subscription id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Move a subscription to another of the customer's cards (an unpaid one is billed again).
    ChangeCard {
        /// Subscription id.
        id: String,
        /// The new card id.
        #[arg(long)]
        card: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Pause billing (periods that begin while paused are skipped).
    Pause {
        /// Subscription id.
        id: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Resume billing from the first period that begins at or after now.
    Resume {
        /// Subscription id.
        id: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Cancel now, or at the end of the paid period.
    Cancel {
        /// Subscription id.
        id: String,
        /// Let the current paid period run out.
        #[arg(long)]
        at_period_end: bool,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Bill a quarantined subscription again, once its row is fixed.
    Release {
        /// Subscription id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum WebhooksCmd {
    /// Check a Paycron-Signature header against a body (what receivers do).
    Verify {
        /// File holding the endpoint's secret, `-` for standard input.
        #[arg(long)]
        secret_file: PathBuf,
        /// The Paycron-Signature header value.
        #[arg(long)]
        signature: String,
        /// File holding the raw request body.
        #[arg(long)]
        body_file: PathBuf,
    },
    #[command(flatten)]
    App(WebhooksAppCmd),
}

/// The webhook commands that need the database.
#[derive(Subcommand)]
pub enum WebhooksAppCmd {
    /// Add an endpoint; prints its id and signing secret.
    Add {
        /// Where events are POSTed.
        #[arg(long)]
        url: String,
        /// File holding the signing secret, `-` for standard input (default: generated). Never
        /// on the command line, where other local users can read it.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// List endpoints.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Recent deliveries and their attempts.
    Deliveries {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum LedgerCmd {
    /// Export every charge attempt and its outcome.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum ChargesCmd {
    /// Charges in review (Square's answer did not match them), oldest first.
    Review {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Record an operator's decision on a charge in review.
    Resolve {
        /// The charge id.
        id: String,
        /// paid: Square took the money for it; unpaid: it took none (billed again at once).
        #[arg(long = "as", value_enum)]
        decision: commands::review::Decision,
        /// Why (kept with the charge and in the `charge_resolved` event).
        #[arg(long)]
        note: String,
        /// The Square payment that paid it (default: the one Square answered with).
        #[arg(long)]
        payment_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum EventsCmd {
    /// Print events after an id; --follow waits for new ones.
    Tail {
        /// Start after this feed position (each line carries its `position`).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
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
/// Runs `command`; `signals` is called by the commands that watch a shutdown (the daemon,
/// run-once, the simulator, events tail) and only by them.
///
/// # Errors
/// [`commands::CommandError`], whose exit code follows the contract.
pub async fn dispatch(
    command: Command,
    config: Config,
    signals: fn() -> Shutdown,
) -> commands::Result<()> {
    // Only the commands that watch it take signals over; the rest keep the default (a SIGTERM
    // ends them).
    match command {
        Command::Db { command } => match command {
            DbCmd::Status => db::status(&config),
            DbCmd::Stop => db::stop(&config),
            DbCmd::Url { database, owner } => db::url(config, database.as_deref(), owner).await,
        },
        Command::Migrate => db::migrate(config).await,
        Command::Demo { customers, months } => {
            crate::commands::demo::run(config, customers, months).await
        }
        Command::Bench(args) => crate::commands::bench::run(config, args).await,
        Command::Run => run::daemon(config, signals()).await,
        Command::Webhooks {
            command:
                WebhooksCmd::Verify {
                    secret_file,
                    signature,
                    body_file,
                },
        } => run::webhooks_verify(&secret_file, &signature, &body_file),
        Command::Simulator {
            port,
            customers,
            mix,
            token,
            seed,
            customers_page,
            accept_unknown_cards,
            latency_ms,
            error_5xx_rate,
            rate_429_rate,
            retry_after_secs,
            lose_response_rate,
            slow_rate,
            slow_ms,
        } => {
            if mix != "realistic" && mix != "all-ok" {
                return Err(CommandError::BadInput(format!(
                    "--mix: {mix:?} is not realistic or all-ok"
                )));
            }
            if !(0.0..=1.0).contains(&slow_rate) {
                return Err(CommandError::BadInput(format!(
                    "--slow-rate: {slow_rate} is not between 0 and 1"
                )));
            }
            let mut faults = run::faults(
                latency_ms,
                error_5xx_rate,
                rate_429_rate,
                retry_after_secs,
                lose_response_rate,
            )?;
            faults.slow_rate = slow_rate;
            faults.slow_ms = slow_ms;
            run::simulator(
                port,
                SimConfig {
                    customers,
                    seed,
                    token,
                    customers_page,
                    accept_unknown_cards,
                    mix,
                    faults,
                    ..SimConfig::default()
                },
                signals(),
            )
            .await
        }
        Command::Webhooks {
            command: WebhooksCmd::App(command),
        } => {
            let app = App::build(config).await?;
            match command {
                WebhooksAppCmd::Add { url, secret_file } => {
                    run::webhooks_add(&app, &url, secret_file.as_deref()).await
                }
                WebhooksAppCmd::List { format } => run::webhooks_list(&app, format).await,
                WebhooksAppCmd::Deliveries { format } => {
                    run::webhooks_deliveries(&app, format).await
                }
            }
        }
        Command::App(command) => {
            let app = App::build(config).await?;
            match command {
                AppCommand::SyncCards => run::sync_cards(&app).await,
                AppCommand::Cards { command } => match command {
                    CardsCmd::Import { file } => manage::import_cards(&app, &file)
                        .await
                        .map(|n| println!("imported {n} cards")),
                    CardsCmd::List { format } => manage::list_cards(&app, format).await,
                },
                AppCommand::Customers {
                    command: CustomersCmd::List { format },
                } => manage::list_customers(&app, format).await,
                AppCommand::Subscription { command } => match command {
                    SubscriptionCmd::Create(args) => {
                        manage::create_subscription(&app, &args).await.map(|_| ())
                    }
                    SubscriptionCmd::List { format } => {
                        manage::list_subscriptions(&app, format).await
                    }
                    SubscriptionCmd::Show { id, format } => {
                        manage::show_subscription(&app, &id, format).await
                    }
                    SubscriptionCmd::Release { id } => manage::release(&app, &id).await,
                    SubscriptionCmd::ChangeCard { id, card, now } => {
                        manage::change_card(&app, &id, &card, now.as_deref()).await
                    }
                    SubscriptionCmd::Pause { id, now } => {
                        manage::act(&app, &id, Action::Pause, now.as_deref()).await
                    }
                    SubscriptionCmd::Resume { id, now } => {
                        manage::act(&app, &id, Action::Resume, now.as_deref()).await
                    }
                    SubscriptionCmd::Cancel {
                        id,
                        at_period_end,
                        now,
                    } => {
                        let action = if at_period_end {
                            Action::CancelAtPeriodEnd
                        } else {
                            Action::CancelNow
                        };
                        manage::act(&app, &id, action, now.as_deref()).await
                    }
                },
                AppCommand::RunOnce { task, now } => {
                    run::run_once(&app, task, now.as_deref(), signals()).await
                }
                AppCommand::Reconcile {
                    since,
                    until,
                    repair,
                    format,
                } => run::reconcile(&app, since.as_deref(), until.as_deref(), repair, format).await,
                AppCommand::Ledger {
                    command: LedgerCmd::Export { format },
                } => run::ledger_export(&app, format).await,
                AppCommand::Charges {
                    command: ChargesCmd::Review { format },
                } => commands::review::list(&app, format).await,
                AppCommand::Charges {
                    command:
                        ChargesCmd::Resolve {
                            id,
                            decision,
                            note,
                            payment_id,
                        },
                } => {
                    commands::review::resolve(&app, &id, decision, &note, payment_id.as_deref())
                        .await
                }
                AppCommand::Events {
                    command:
                        EventsCmd::Tail {
                            after,
                            follow,
                            format,
                        },
                } => run::events_tail(&app, after, follow, format, signals()).await,
            }
        }
    }
}

/// Whether `command` prints a report of its own (the demo, the benchmark): logs default to
/// warnings then.
pub fn is_report(command: &Command) -> bool {
    matches!(command, Command::Demo { .. } | Command::Bench(_))
}
