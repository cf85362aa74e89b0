//! Typed configuration: defaults, an optional TOML file of `KEY = "value"` lines (`PAYCRON_CONFIG`;
//! `#` comments, also after a value), then the environment, which wins. A `PAYCRON_*` or
//! `SQUARE_*` key that no setting reads is refused in the file and warned about in the
//! environment (a typo would otherwise be ignored). Every field documents its default; [`Config::from_env`] validates
//! everything at start-up and names the offending key. Secrets are `SecretString`s: their
//! `Debug` output is redacted, so they cannot leak through a log line or an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::domain::subscription::{DunningPolicy, FinalState};

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("configuration: {key}={value:?} is invalid: {reason}")]
    Invalid {
        /// The environment variable or file key.
        key: &'static str,
        /// The value as given (never a secret).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A value that is required for this command.
    #[error("configuration: {key} is not set: {reason}")]
    Missing {
        /// The key.
        key: &'static str,
        /// Why it is needed.
        reason: &'static str,
    },
    /// A key no setting reads (a typo, most likely).
    #[error("configuration: {key} {origin} is not a setting paycron knows: {hint}")]
    Unknown {
        /// The key as given.
        key: String,
        /// Where it was found.
        origin: &'static str,
        /// The closest known key, or where the list is.
        hint: String,
    },
    /// A file that could not be read.
    #[error("configuration: cannot read {key} file {path}: {source}")]
    File {
        /// The key naming the file.
        key: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Module result.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// Which Square environment to talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SquareEnvironment {
    /// `https://connect.squareupsandbox.com` (the default).
    Sandbox,
    /// `https://connect.squareup.com`: real money.
    Production,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines for people (default).
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

/// Square connection settings.
#[derive(Clone, Debug)]
pub struct SquareConfig {
    /// `SQUARE_ACCESS_TOKEN` or the contents of `SQUARE_ACCESS_TOKEN_FILE`. No default.
    pub access_token: Option<SecretString>,
    /// `SQUARE_LOCATION_ID`: the location payments are taken at. Default: the seller's main one.
    pub location_id: Option<String>,
    /// `SQUARE_ENVIRONMENT`: `sandbox` (default) or `production`.
    pub environment: SquareEnvironment,
    /// `SQUARE_BASE_URL`: overrides the environment's URL (e.g. the simulator). Default unset.
    pub base_url: Option<String>,
    /// `SQUARE_VERSION`: the pinned `Square-Version` header. Default `2025-08-20`.
    pub version: String,
    /// `SQUARE_CONNECT_TIMEOUT_MS`: TCP/TLS connect timeout. Default 5000.
    pub connect_timeout: Duration,
    /// `SQUARE_REQUEST_TIMEOUT_MS`: one HTTP exchange. Default 15000.
    pub request_timeout: Duration,
    /// `SQUARE_RETRY_DEADLINE_MS`: all retries of one call together. Default 30000.
    pub retry_deadline: Duration,
    /// `SQUARE_RATE_LIMIT_PER_SEC`: CreatePayment calls per second, all workers of this
    /// process together. Default 100.
    pub rate_limit_per_sec: u32,
    /// `SQUARE_WEBHOOK_SIGNATURE_KEY` or `_FILE`. No default.
    pub webhook_signature_key: Option<SecretString>,
    /// `SQUARE_WEBHOOK_NOTIFICATION_URL`: the URL Square signs. No default.
    pub webhook_notification_url: Option<String>,
}

impl SquareConfig {
    /// The base URL requests go to.
    pub fn base_url(&self) -> String {
        match (&self.base_url, self.environment) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, SquareEnvironment::Sandbox) => "https://connect.squareupsandbox.com".to_owned(),
            (None, SquareEnvironment::Production) => "https://connect.squareup.com".to_owned(),
        }
    }

    /// True when the real production API (real money) is the target.
    pub fn is_production(&self) -> bool {
        self.environment == SquareEnvironment::Production && self.base_url.is_none()
    }
}

/// Billing engine settings.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// `PAYCRON_BATCH_SIZE`: subscriptions claimed per transaction. Default 200.
    pub batch_size: u32,
    /// `PAYCRON_CONCURRENCY`: charges in flight at once. Default 32.
    pub concurrency: usize,
    /// `PAYCRON_LEASE_SECONDS`: how long a claimed charge stays ours without a live owner
    /// connection. Default 60.
    pub lease: Duration,
    /// `PAYCRON_STALE_LOOKUP_HOURS`: a pending charge older than this is looked up with
    /// ListPayments before anything is re-sent (Square keeps keys for an unpublished time).
    /// Default 24.
    pub stale_lookup_after: Duration,
    /// `PAYCRON_CARD_EXPIRY_LEAD_DAYS`: a `card_expiring` event goes out this many days before
    /// a subscribed card expires, so the business can ask for a new one. Default 14.
    pub card_expiry_lead_days: i32,
    /// `PAYCRON_DUNNING_RETRY_DAYS`, `PAYCRON_DUNNING_FINAL_STATE`, `PAYCRON_DUNNING_FALLBACK_CARD`:
    /// default `1,3,5,7`, `unpaid`, `true`.
    pub dunning: DunningPolicy,
    /// `PAYCRON_MAX_CATCH_UP_PERIODS`: when more periods than this are due at once for one
    /// subscription (downtime, a revived unpaid subscription), only the most recent this many
    /// are billed; the older ones are skipped for good. Default 3, at least 1.
    pub max_catch_up_periods: u32,
    /// `PAYCRON_HALT_PROBE_SECONDS`: after billing halted on configuration errors, the first
    /// probe waits this long; each failed probe doubles it, up to 30 minutes. Default 30.
    pub halt_probe_after: Duration,
    /// Cancel a subscription whose payment was lost to a dispute
    /// (`PAYCRON_DISPUTE_LOST_CANCELS`, default false).
    pub dispute_lost_cancels: bool,
}

/// Outbound webhook delivery settings.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// First retry delay; doubles each attempt, capped at six hours
    /// (`PAYCRON_WEBHOOK_BACKOFF_SECONDS`, default 30).
    pub backoff: Duration,
    /// Give up on a delivery older than this (`PAYCRON_WEBHOOK_MAX_AGE_HOURS`, default 72).
    pub max_age: Duration,
    /// Per-request timeout (10 s).
    pub timeout: Duration,
    /// Allow loopback, private and link-local destinations (`PAYCRON_WEBHOOK_ALLOW_PRIVATE`,
    /// default false: for development only).
    pub allow_private: bool,
    /// Refuse `http://` endpoints (true against Square production).
    pub require_https: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            backoff: Duration::from_secs(30),
            max_age: Duration::from_secs(72 * 3600),
            timeout: Duration::from_secs(10),
            allow_private: false,
            require_https: false,
        }
    }
}

/// All of paycron's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// What start-up should warn about (unknown `PAYCRON_*`/`SQUARE_*` variables), logged once
    /// the logger runs.
    pub warnings: Vec<String>,
    /// `DATABASE_URL`. Default unset: the embedded local cluster under `PAYCRON_HOME`.
    pub database_url: Option<SecretString>,
    /// `PAYCRON_MIGRATE_DATABASE_URL` (or `_FILE`): the schema owner's URL, used by
    /// `paycron migrate` only. Default: `DATABASE_URL`.
    pub migrate_database_url: Option<SecretString>,
    /// `PAYCRON_HOME`: the embedded cluster's home. Default `.paycron`.
    pub home: PathBuf,
    /// `PAYCRON_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `PAYCRON_OPS_ADDR`: the ops HTTP server. Default `0.0.0.0:9090`.
    pub ops_addr: SocketAddr,
    /// `PAYCRON_SCHEDULES`: schedule file or directory. Unset: `schedules/` when it exists,
    /// else the built-in default schedule (the one shipped as `schedules/default.toml`).
    pub schedules: Option<PathBuf>,
    /// `PAYCRON_DRAIN_TIMEOUT_SECONDS`: how long shutdown waits for in-flight charges; keep it
    /// below the pod's termination grace period. Default 20.
    pub drain_timeout: Duration,
    /// Outbound webhooks: `PAYCRON_WEBHOOK_BACKOFF_SECONDS` (first retry delay, doubling;
    /// default 30) and `PAYCRON_WEBHOOK_MAX_AGE_HOURS` (give up after; default 72).
    pub webhook_delivery: DeliveryConfig,
    /// `PAYCRON_WEBHOOK_PATH`: where the ops server receives Square's webhooks. Default
    /// `/webhooks/square`.
    pub webhook_path: String,
    /// `PAYCRON_WEBHOOK_ADDR`: serve the public Square webhook receiver on this address alone
    /// (health, readiness and metrics stay on `PAYCRON_OPS_ADDR`). Default: on the ops address.
    pub webhook_addr: Option<SocketAddr>,
    /// `PAYCRON_HEALTH_STALE_INTERVALS`: `/healthz` fails when bill-due has not completed a pass
    /// for this many of its schedule's intervals (size it above your longest pass). Default 60.
    pub health_stale_intervals: u32,
    /// `PAYCRON_PROGRESS_SECONDS`: how often a long command without a terminal logs its
    /// progress ("n of N, rate, ETA"). Default 10.
    pub progress_every: Duration,
    /// Square.
    pub square: SquareConfig,
    /// Billing.
    pub billing: BillingConfig,
    /// Enrollment at the counter.
    pub enrollment: EnrollmentConfig,
}

/// Enrollment at the counter (Square Point of Sale's mobile-web API).
#[derive(Clone, Debug)]
pub struct EnrollmentConfig {
    /// `SQUARE_APPLICATION_ID`: the application whose Point of Sale API web callback is
    /// registered (`sq0idp-…`; POS has no sandbox). No default: `paycron enroll` needs it.
    pub application_id: Option<String>,
    /// `PAYCRON_PUBLIC_URL`: where the daemon's enrollment pages are reached from the counter's
    /// devices (https in production); the POS callback is `<it>/enroll/callback`. No default.
    pub public_url: Option<String>,
    /// `PAYCRON_BUSINESS_NAME`: the name the enrollment page shows. Default `Subscriptions`.
    pub business_name: String,
    /// `PAYCRON_ENROLLMENT_EXPIRY_MINUTES`: how long a link may start the sale. Default 1440
    /// (24 h).
    pub expires_in: Duration,
    /// `PAYCRON_ENROLLMENT_CARD_WAIT_MINUTES`: how long after the sale the saved card may take
    /// before `enrollment_card_missing`. Default 15.
    pub card_wait: Duration,
}

impl EnrollmentConfig {
    /// The callback URL registered with Square (`<PAYCRON_PUBLIC_URL>/enroll/callback`).
    pub fn callback_url(&self) -> Option<String> {
        self.public_url
            .as_deref()
            .map(|u| format!("{}/enroll/callback", u.trim_end_matches('/')))
    }

    /// A link's URL.
    pub fn link(&self, token: &str) -> Option<String> {
        self.public_url
            .as_deref()
            .map(|u| format!("{}/enroll/{token}", u.trim_end_matches('/')))
    }
}

/// Where values come from: the environment first, then the optional file.
#[derive(Default)]
struct Source {
    file: HashMap<String, String>,
    use_env: bool,
    // Every key asked for: read back to know which keys exist.
    asked: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

/// Variables of paycron's prefixes that are not settings and are allowed anyway.
const NOT_SETTINGS: [&str; 3] = [
    "PAYCRON_CONFIG",
    "PAYCRON_TEST_KEEP_DATABASES",
    "PAYCRON_MODEL_CASES",
];

/// The closest known key to `key` (for "did you mean"), when close enough to be a typo.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    known
        .map(|k| (distance(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

impl Source {
    fn load() -> Result<Self> {
        let mut file = HashMap::new();
        if let Ok(path) = std::env::var("PAYCRON_CONFIG") {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                key: "PAYCRON_CONFIG",
                path: path.clone(),
                source,
            })?;
            // TOML (a real parser): `KEY = "value"`, numbers and booleans as themselves,
            // `#` comments anywhere a comment may be.
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Invalid {
                        key: "PAYCRON_CONFIG",
                        value: path.clone(),
                        reason: format!("not TOML: {}", e.message().trim()),
                    })?;
            for (k, v) in table {
                let value = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(ConfigError::Invalid {
                            key: "PAYCRON_CONFIG",
                            value: format!("{path}: {k}"),
                            reason: format!(
                                "expected a string, number or boolean, not {}",
                                other.type_str()
                            ),
                        });
                    }
                };
                file.insert(k.trim().to_ascii_uppercase(), value);
            }
        }
        Ok(Source {
            file,
            use_env: true,
            ..Source::default()
        })
    }

    /// Keys no setting reads: a file key is refused (the file is paycron's alone); a
    /// `PAYCRON_*`/`SQUARE_*` variable is returned as a warning (the environment is shared, and
    /// a misspelling would otherwise be ignored without a word).
    fn unknown_keys(&self) -> Result<Vec<String>> {
        let known = self.asked.borrow();
        let hint = |key: &str| match closest(key, known.iter()) {
            Some(k) => format!("did you mean {k}?"),
            None => "see the README's configuration table".into(),
        };
        let mut file_keys: Vec<&String> = self.file.keys().collect();
        file_keys.sort();
        if let Some(key) = file_keys.into_iter().find(|k| !known.contains(*k)) {
            return Err(ConfigError::Unknown {
                hint: hint(key),
                origin: "in the PAYCRON_CONFIG file",
                key: key.clone(),
            });
        }
        let mut warnings = Vec::new();
        if self.use_env {
            let mut env: Vec<String> = std::env::vars()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("PAYCRON_") || k.starts_with("SQUARE_"))
                .filter(|k| !known.contains(k) && !NOT_SETTINGS.contains(&k.as_str()))
                .collect();
            env.sort();
            for key in env {
                warnings.push(format!(
                    "{key} in the environment is not a setting paycron knows (ignored): {}",
                    hint(&key)
                ));
            }
        }
        Ok(warnings)
    }

    fn get(&self, key: &str) -> Option<String> {
        self.asked.borrow_mut().insert(key.to_owned());
        self.use_env
            .then(|| std::env::var(key).ok())
            .flatten()
            .or_else(|| self.file.get(key).cloned())
            .filter(|v| !v.trim().is_empty())
    }

    fn secret(&self, key: &'static str, file_key: &'static str) -> Result<Option<SecretString>> {
        if let Some(v) = self.get(key) {
            return Ok(Some(SecretString::from(v.trim().to_owned())));
        }
        if let Some(path) = self.get(file_key) {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                key: file_key,
                path,
                source,
            })?;
            let t = text.trim().to_owned();
            return Ok((!t.is_empty()).then(|| SecretString::from(t)));
        }
        Ok(None)
    }

    fn parse<T: std::str::FromStr>(
        &self,
        key: &'static str,
        default: T,
        reason: &str,
    ) -> Result<T> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                key,
                value: v,
                reason: reason.to_owned(),
            }),
        }
    }

    fn positive(&self, key: &'static str, default: u64, max: u64) -> Result<u64> {
        let v: u64 = self.parse(
            key,
            default,
            &format!("expected an integer from 1 to {max}"),
        )?;
        if v == 0 || v > max {
            return Err(ConfigError::Invalid {
                key,
                value: v.to_string(),
                reason: format!("expected an integer from 1 to {max}"),
            });
        }
        Ok(v)
    }
}

impl Config {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key.
    pub fn from_env() -> Result<Self> {
        let src = Source::load()?;
        let config = Self::from_source(&src)?;
        // Every key, asked for by an empty pass (some are read only when others are absent).
        let all = Source::default();
        let _ = Self::from_source(&all);
        src.asked.borrow_mut().extend(all.asked.take());
        let warnings = src.unknown_keys()?;
        Ok(Config { warnings, ..config })
    }

    /// Every setting's key (the variables and file keys paycron reads), sorted.
    pub fn settings() -> Vec<String> {
        let all = Source::default();
        let _ = Self::from_source(&all);
        all.asked.take().into_iter().collect()
    }

    /// The defaults alone, ignoring the environment and any file (tests and embedding
    /// programs set fields directly).
    pub fn defaults() -> Self {
        // Defaults are valid by construction: from_source cannot fail on an empty source.
        Self::from_source(&Source::default())
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    fn from_source(src: &Source) -> Result<Self> {
        let log_format = match src.get("PAYCRON_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "PAYCRON_LOG_FORMAT",
                    value: other.to_owned(),
                    reason: "expected text or json".into(),
                });
            }
        };
        let ops_addr = src.parse(
            "PAYCRON_OPS_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 9090)),
            "expected HOST:PORT, e.g. 0.0.0.0:9090",
        )?;
        let square = square_config(src)?;
        Ok(Config {
            warnings: Vec::new(),
            database_url: src.secret("DATABASE_URL", "DATABASE_URL_FILE")?,
            migrate_database_url: src.secret(
                "PAYCRON_MIGRATE_DATABASE_URL",
                "PAYCRON_MIGRATE_DATABASE_URL_FILE",
            )?,
            home: PathBuf::from(src.get("PAYCRON_HOME").unwrap_or_else(|| ".paycron".into())),
            log_format,
            ops_addr,
            schedules: src.get("PAYCRON_SCHEDULES").map(PathBuf::from),
            drain_timeout: Duration::from_secs(src.positive(
                "PAYCRON_DRAIN_TIMEOUT_SECONDS",
                20,
                3_600,
            )?),
            webhook_delivery: delivery_config(src, square.environment)?,
            webhook_addr: match src.get("PAYCRON_WEBHOOK_ADDR") {
                None => None,
                Some(v) => Some(v.trim().parse().map_err(|_| ConfigError::Invalid {
                    key: "PAYCRON_WEBHOOK_ADDR",
                    value: v.clone(),
                    reason: "expected host:port, e.g. 0.0.0.0:8443".into(),
                })?),
            },
            health_stale_intervals: src.positive("PAYCRON_HEALTH_STALE_INTERVALS", 60, 100_000)?
                as u32,
            progress_every: Duration::from_secs(src.positive(
                "PAYCRON_PROGRESS_SECONDS",
                10,
                3_600,
            )?),
            webhook_path: match src.get("PAYCRON_WEBHOOK_PATH") {
                None => "/webhooks/square".into(),
                Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => p,
                Some(p) => {
                    return Err(ConfigError::Invalid {
                        key: "PAYCRON_WEBHOOK_PATH",
                        value: p,
                        reason: "expected an absolute path such as /webhooks/square".into(),
                    });
                }
            },
            square,
            billing: billing_config(src)?,
            enrollment: enrollment_config(src)?,
        })
    }
}

/// The enrollment settings: the public URL must be an absolute http(s) URL without a query,
/// and https when Square is in production (the counter's browser carries the link's token).
fn enrollment_config(src: &Source) -> Result<EnrollmentConfig> {
    let production = src.get("SQUARE_ENVIRONMENT").as_deref().map(str::trim) == Some("production");
    let public_url = src.get("PAYCRON_PUBLIC_URL").map(|u| u.trim().to_owned());
    if let Some(url) = &public_url {
        let bad = |reason: &str| ConfigError::Invalid {
            key: "PAYCRON_PUBLIC_URL",
            value: url.clone(),
            reason: reason.to_owned(),
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| bad("expected an absolute URL, e.g. https://billing.example.com"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad("expected an http:// or https:// URL with a host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("expected no query or fragment"));
        }
        if production && parsed.scheme() != "https" {
            return Err(bad(
                "SQUARE_ENVIRONMENT is production: the enrollment link carries a secret, use https://",
            ));
        }
    }
    let application_id = src
        .get("SQUARE_APPLICATION_ID")
        .map(|v| v.trim().to_owned());
    if let Some(id) = &application_id
        && (id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(ConfigError::Invalid {
            key: "SQUARE_APPLICATION_ID",
            value: id.clone(),
            reason: "expected a Square application id such as sq0idp-…".into(),
        });
    }
    let minutes = |key, default, max| {
        src.positive(key, default, max)
            .map(|m| Duration::from_secs(60 * m))
    };
    Ok(EnrollmentConfig {
        application_id,
        public_url,
        business_name: src
            .get("PAYCRON_BUSINESS_NAME")
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Subscriptions".into()),
        expires_in: minutes("PAYCRON_ENROLLMENT_EXPIRY_MINUTES", 1_440, 43_200)?,
        card_wait: minutes("PAYCRON_ENROLLMENT_CARD_WAIT_MINUTES", 15, 10_080)?,
    })
}

/// `SQUARE_*`: the environment, the base URL (https, or http on loopback only), and the
/// webhook receiver's key and URL (both or neither).
fn square_config(src: &Source) -> Result<SquareConfig> {
    let environment = match src.get("SQUARE_ENVIRONMENT").as_deref().map(str::trim) {
        None | Some("sandbox") => SquareEnvironment::Sandbox,
        Some("production") => SquareEnvironment::Production,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "SQUARE_ENVIRONMENT",
                value: other.to_owned(),
                reason: "expected sandbox or production".into(),
            });
        }
    };
    let base_url = src.get("SQUARE_BASE_URL");
    if let Some(url) = &base_url
        && reqwest::Url::parse(url)
            .map(|u| !matches!(u.scheme(), "http" | "https"))
            .unwrap_or(true)
    {
        return Err(ConfigError::Invalid {
            key: "SQUARE_BASE_URL",
            value: url.clone(),
            reason: "expected an http:// or https:// URL".into(),
        });
    }
    if let Some(url) = &base_url
        && let Ok(u) = reqwest::Url::parse(url)
        && u.scheme() == "http"
        && !u.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    {
        return Err(ConfigError::Invalid {
                key: "SQUARE_BASE_URL",
                value: url.clone(),
                reason: "http:// would send the access token in clear: use https:// (http:// is accepted for a loopback address only, e.g. the simulator)".into(),
            });
    }
    let ms = |key, default, max| src.positive(key, default, max).map(Duration::from_millis);
    // The Square webhook receiver needs both halves: with one alone every webhook would be
    // refused (or answered 503) and card changes lost without a word.
    let has_key = src.get("SQUARE_WEBHOOK_SIGNATURE_KEY").is_some()
        || src.get("SQUARE_WEBHOOK_SIGNATURE_KEY_FILE").is_some();
    let has_url = src.get("SQUARE_WEBHOOK_NOTIFICATION_URL").is_some();
    if has_key && !has_url {
        return Err(ConfigError::Missing {
            key: "SQUARE_WEBHOOK_NOTIFICATION_URL",
            reason: "SQUARE_WEBHOOK_SIGNATURE_KEY is set, and Square signs the notification URL with it: the receiver needs both (or neither)",
        });
    }
    if has_url && !has_key {
        return Err(ConfigError::Missing {
            key: "SQUARE_WEBHOOK_SIGNATURE_KEY",
            reason: "SQUARE_WEBHOOK_NOTIFICATION_URL is set, and no webhook can be verified without the key: the receiver needs both (or neither)",
        });
    }
    Ok(SquareConfig {
        access_token: src.secret("SQUARE_ACCESS_TOKEN", "SQUARE_ACCESS_TOKEN_FILE")?,
        location_id: src.get("SQUARE_LOCATION_ID"),
        environment,
        base_url,
        version: src
            .get("SQUARE_VERSION")
            .unwrap_or_else(|| "2025-08-20".into()),
        connect_timeout: ms("SQUARE_CONNECT_TIMEOUT_MS", 5_000, 600_000)?,
        request_timeout: ms("SQUARE_REQUEST_TIMEOUT_MS", 15_000, 600_000)?,
        retry_deadline: ms("SQUARE_RETRY_DEADLINE_MS", 30_000, 3_600_000)?,
        rate_limit_per_sec: src.positive("SQUARE_RATE_LIMIT_PER_SEC", 100, 1_000_000)? as u32,
        webhook_signature_key: src.secret(
            "SQUARE_WEBHOOK_SIGNATURE_KEY",
            "SQUARE_WEBHOOK_SIGNATURE_KEY_FILE",
        )?,
        webhook_notification_url: src.get("SQUARE_WEBHOOK_NOTIFICATION_URL"),
    })
}

/// `PAYCRON_WEBHOOK_*`: outbound deliveries (https required against Square production).
fn delivery_config(src: &Source, environment: SquareEnvironment) -> Result<DeliveryConfig> {
    Ok(DeliveryConfig {
        backoff: Duration::from_secs(src.positive(
            "PAYCRON_WEBHOOK_BACKOFF_SECONDS",
            30,
            86_400,
        )?),
        max_age: Duration::from_secs(
            3_600 * src.positive("PAYCRON_WEBHOOK_MAX_AGE_HOURS", 72, 24 * 30)?,
        ),
        timeout: Duration::from_secs(10),
        allow_private: src.parse(
            "PAYCRON_WEBHOOK_ALLOW_PRIVATE",
            false,
            "expected true or false",
        )?,
        require_https: environment == SquareEnvironment::Production,
    })
}

/// The engine's settings and the dunning policy.
fn billing_config(src: &Source) -> Result<BillingConfig> {
    let retry_days = match src.get("PAYCRON_DUNNING_RETRY_DAYS") {
        None => vec![1, 3, 5, 7],
        Some(v) => {
            let parsed: std::result::Result<Vec<u32>, _> = v
                .split(',')
                .map(|d| d.trim())
                .filter(|d| !d.is_empty())
                .map(str::parse)
                .collect();
            match parsed {
                Ok(days)
                    if days.windows(2).all(|w| w[0] < w[1]) && days.iter().all(|d| *d <= 365) =>
                {
                    days
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "PAYCRON_DUNNING_RETRY_DAYS",
                        value: v,
                        reason: "expected increasing day offsets up to 365, e.g. 1,3,5,7".into(),
                    });
                }
            }
        }
    };
    let final_state: FinalState = src.parse(
        "PAYCRON_DUNNING_FINAL_STATE",
        FinalState::Unpaid,
        "expected unpaid or canceled",
    )?;
    let fallback_card = src.parse(
        "PAYCRON_DUNNING_FALLBACK_CARD",
        true,
        "expected true or false",
    )?;
    Ok(BillingConfig {
        batch_size: src.positive("PAYCRON_BATCH_SIZE", 200, 10_000)? as u32,
        concurrency: src.positive("PAYCRON_CONCURRENCY", 32, 4_096)? as usize,
        lease: Duration::from_secs(src.positive("PAYCRON_LEASE_SECONDS", 60, 86_400)?),
        stale_lookup_after: Duration::from_secs(
            3_600 * src.positive("PAYCRON_STALE_LOOKUP_HOURS", 24, 24 * 365)?,
        ),
        card_expiry_lead_days: src.positive("PAYCRON_CARD_EXPIRY_LEAD_DAYS", 14, 365)? as i32,
        dunning: DunningPolicy {
            retry_days,
            final_state,
            fallback_card,
        },
        max_catch_up_periods: src.positive("PAYCRON_MAX_CATCH_UP_PERIODS", 3, 10_000)? as u32,
        halt_probe_after: Duration::from_secs(src.positive(
            "PAYCRON_HALT_PROBE_SECONDS",
            30,
            3_600,
        )?),
        dispute_lost_cancels: src.parse(
            "PAYCRON_DISPUTE_LOST_CANCELS",
            false,
            "expected true or false",
        )?,
    })
}
