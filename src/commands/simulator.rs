//! `paycron simulator`: the Square-compatible simulator as a standalone server, its flags
//! validated into a [`SimConfig`].

use std::net::SocketAddr;

use super::{CommandError, Result};
use crate::ops::shutdown::Shutdown;
use crate::simulator::{Faults, SimConfig, Simulator};

/// `paycron simulator` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulatorArgs {
    /// Port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// Customers to seed.
    #[arg(long, default_value_t = 100)]
    pub customers: usize,
    /// Seeded card mix: realistic or all-ok.
    #[arg(long, default_value = "realistic")]
    pub mix: String,
    /// Require exactly this access token (default: any non-empty token).
    #[arg(long)]
    pub token: Option<String>,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// ListCustomers page size.
    #[arg(long, default_value_t = 100)]
    pub customers_page: usize,
    /// Approve unknown ccof: card ids as the given customer's (benchmarks).
    #[arg(long)]
    pub accept_unknown_cards: bool,
    /// Added latency, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Latency varies uniformly by up to this much either way, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Square's rate limit: requests beyond this many a second are answered 429 (0: none).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u64,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_5xx_rate: f64,
    /// Share of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_429_rate: f64,
    /// Retry-After seconds on 429s.
    #[arg(long)]
    pub retry_after_secs: Option<u64>,
    /// Share of CreatePayment answers lost after the payment was taken.
    #[arg(long, default_value_t = 0.0)]
    pub lose_response_rate: f64,
    /// Share of CreatePayment answers sent only after --slow-ms (payment taken first).
    #[arg(long, default_value_t = 0.0)]
    pub slow_rate: f64,
    /// Delay of slow answers, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,
}

impl SimulatorArgs {
    /// The simulator's configuration, every flag checked.
    ///
    /// # Errors
    /// [`CommandError::BadInput`] naming the flag.
    pub fn config(self) -> Result<SimConfig> {
        if self.mix != "realistic" && self.mix != "all-ok" {
            return Err(CommandError::BadInput(format!(
                "--mix: {:?} is not realistic or all-ok",
                self.mix
            )));
        }
        for (flag, v) in [
            ("--error-5xx-rate", self.error_5xx_rate),
            ("--rate-429-rate", self.rate_429_rate),
            ("--lose-response-rate", self.lose_response_rate),
            ("--slow-rate", self.slow_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(CommandError::BadInput(format!(
                    "{flag}: {v} is not between 0 and 1"
                )));
            }
        }
        Ok(SimConfig {
            customers: self.customers,
            seed: self.seed,
            token: self.token,
            customers_page: self.customers_page,
            accept_unknown_cards: self.accept_unknown_cards,
            mix: self.mix,
            faults: Faults {
                latency_ms: self.latency_ms,
                jitter_ms: self.jitter_ms,
                rate_limit_per_sec: self.rate_limit,
                error_5xx_rate: self.error_5xx_rate,
                rate_429_rate: self.rate_429_rate,
                retry_after_secs: self.retry_after_secs,
                lose_response_rate: self.lose_response_rate,
                slow_rate: self.slow_rate,
                slow_ms: self.slow_ms,
                ..Faults::default()
            },
            ..SimConfig::default()
        })
    }
}

/// `simulator --port P`: serves until Ctrl-C or SIGTERM.
///
/// # Errors
/// [`CommandError`].
pub async fn run(args: SimulatorArgs, shutdown: Shutdown) -> Result<()> {
    let port = args.port;
    let config = args.config()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sim = Simulator::start(config.clone(), addr).await.map_err(|e| {
        CommandError::BadInput(format!("--port {port}: cannot listen on {addr}: {e}"))
    })?;
    tracing::info!(url = %sim.base_url(), customers = config.customers, "Square simulator listening");
    crate::out!("{}", sim.base_url())?;
    shutdown.drain.cancelled().await;
    sim.shutdown().await;
    Ok(())
}
