//! `paycron webhooks ...`: the business's outbound endpoints, their deliveries, and the check a
//! receiver makes (`verify`, which needs no database).

use std::path::PathBuf;

use std::time::Instant;

use chrono::Utc;

use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;
use crate::config::Config;
use crate::store::outbound::Managed;

/// `paycron webhooks ...`.
#[derive(clap::Subcommand)]
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
    // The commands that need the database (no doc: clap would take it as help text).
    #[allow(missing_docs)]
    #[command(flatten)]
    App(WebhooksAppCmd),
}

/// The webhook commands that need the database.
#[derive(clap::Subcommand)]
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
        /// How deliveries are signed: paycron (Paycron-Signature, Stripe's scheme) or standard
        /// (Standard Webhooks; the secret is whsec_ and base64).
        #[arg(long, value_enum, default_value = "paycron")]
        format: crate::outbound::SignatureFormat,
        /// Only these event types, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
    },
    /// Stop delivering to an endpoint (its history stays); pending deliveries fail.
    Remove {
        /// Endpoint id.
        id: String,
    },
    /// Pause deliveries to an endpoint; `enable` picks up where it stopped.
    Disable {
        /// Endpoint id.
        id: String,
    },
    /// Resume deliveries to an endpoint.
    Enable {
        /// Endpoint id.
        id: String,
    },
    /// Send a `webhook_ping` event to one endpoint, now.
    Test {
        /// Endpoint id.
        id: String,
    },
    /// Deliver an event again to every endpoint that had it.
    Resend {
        /// Event id (`id` in the payload, `Paycron-Event-Id`).
        event_id: i64,
    },
    /// Give an endpoint a new secret (printed); the old one also signs until the overlap ends.
    RotateSecret {
        /// Endpoint id.
        id: String,
        /// Hours both secrets sign.
        #[arg(long, default_value_t = 24)]
        overlap_hours: u32,
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

impl WebhooksCmd {
    /// Runs the command (only `verify` works without the database).
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, config: Config) -> Result<()> {
        match self {
            WebhooksCmd::Verify {
                secret_file,
                signature,
                body_file,
            } => verify(&secret_file, &signature, &body_file),
            WebhooksCmd::App(command) => {
                let app = App::build(config).await?;
                match command {
                    WebhooksAppCmd::Add {
                        url,
                        secret_file,
                        format,
                        events,
                    } => add(&app, &url, secret_file.as_deref(), format, events).await,
                    WebhooksAppCmd::List { format } => list(&app, format).await,
                    WebhooksAppCmd::Deliveries { format } => deliveries(&app, format).await,
                    WebhooksAppCmd::Remove { id } => remove(&app, &id).await,
                    WebhooksAppCmd::Disable { id } => set_enabled(&app, &id, false).await,
                    WebhooksAppCmd::Enable { id } => set_enabled(&app, &id, true).await,
                    WebhooksAppCmd::Test { id } => ping(&app, &id).await,
                    WebhooksAppCmd::Resend { event_id } => resend(&app, event_id).await,
                    WebhooksAppCmd::RotateSecret { id, overlap_hours } => {
                        rotate_secret(&app, &id, overlap_hours).await
                    }
                }
            }
        }
    }
}

/// A secret from a file (`-`: standard input), without its trailing newline.
fn read_secret_file(flag: &str, path: &std::path::Path) -> Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CommandError::BadInput(format!("{flag} -: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CommandError::BadInput(format!("{flag} {}: {e}", path.display())))?
    };
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(CommandError::BadInput(format!("{flag}: the file is empty")));
    }
    Ok(secret)
}

/// Sends due deliveries once (`run-once --task deliver-webhooks`), with a summary line.
///
/// # Errors
/// [`CommandError`].
pub async fn deliver_due(app: &App) -> Result<()> {
    let started = Instant::now();
    let http = crate::outbound::client(&app.config.webhook_delivery)
        .map_err(|e| CommandError::Failed(format!("webhook client: {e}")))?;
    let s =
        crate::outbound::deliver_due(&app.pool, &http, &app.config.webhook_delivery, Utc::now())
            .await?;
    tracing::info!(
        task = "deliver-webhooks",
        fanned_out = s.fanned_out,
        delivered = s.delivered,
        retrying = s.retrying,
        failed = s.failed,
        duration_ms = started.elapsed().as_millis() as u64,
        "run summary"
    );
    Ok(())
}

/// `webhooks add --url URL [--secret-file F] [--format paycron|standard]`: prints the endpoint
/// id and its signing secret.
///
/// # Errors
/// [`CommandError`].
pub async fn add(
    app: &App,
    url: &str,
    secret_file: Option<&std::path::Path>,
    format: crate::outbound::SignatureFormat,
    events: Option<Vec<String>>,
) -> Result<()> {
    let events: Option<Vec<String>> = events.map(|v| {
        v.into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    });
    if let Some(bad) = events.iter().flatten().find(|t| {
        !t.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
    }) {
        return Err(CommandError::BadInput(format!(
            "--events: {bad:?} is not an event type (lower_case_with_underscores, e.g. payment_succeeded)"
        )));
    }
    let events = events.filter(|v| !v.is_empty());
    let secret = match secret_file {
        Some(path) => {
            let s = read_secret_file("--secret-file", path)?;
            if s.len() < 16 {
                return Err(CommandError::BadInput(
                    "--secret-file: the secret needs at least 16 characters".into(),
                ));
            }
            s
        }
        None => crate::outbound::new_secret(format),
    };
    if format == crate::outbound::SignatureFormat::Standard
        && crate::outbound::sign_standard(&secret, "probe", 0, b"").is_none()
    {
        return Err(CommandError::BadInput(
            "--secret-file: a standard endpoint's secret is whsec_ followed by base64 (at least 24 bytes)".into(),
        ));
    }
    if let Some(why) = crate::outbound::refuse_destination(url, &app.config.webhook_delivery) {
        return Err(CommandError::BadInput(format!("--url {url:?}: {why}")));
    }
    let id = crate::store::outbound::add_endpoint(
        &app.pool,
        url,
        &secret,
        format.as_str(),
        events.as_deref(),
    )
    .await?;
    crate::out!("{id} {secret}")?;
    Ok(())
}

fn endpoint_id(id: &str) -> Result<uuid::Uuid> {
    id.trim().parse().map_err(|_| {
        CommandError::BadInput(format!(
            "ID: {id:?} is not an endpoint id (see `webhooks list`)"
        ))
    })
}

fn unknown(id: &str) -> CommandError {
    CommandError::BadInput(format!("no endpoint {id} (see `webhooks list`)"))
}

/// `webhooks remove ID`.
async fn remove(app: &App, id: &str) -> Result<()> {
    match crate::store::outbound::remove(&app.pool, endpoint_id(id)?, Utc::now()).await? {
        Managed::Changed => crate::out!("{id} removed"),
        Managed::Unknown => Err(unknown(id)),
    }
}

/// `webhooks disable|enable ID`.
async fn set_enabled(app: &App, id: &str, enabled: bool) -> Result<()> {
    match crate::store::outbound::set_enabled(&app.pool, endpoint_id(id)?, enabled).await? {
        Managed::Changed => crate::out!("{id} {}", if enabled { "enabled" } else { "disabled" }),
        Managed::Unknown => Err(unknown(id)),
    }
}

/// `webhooks test ID`.
async fn ping(app: &App, id: &str) -> Result<()> {
    match crate::store::outbound::ping(&app.pool, endpoint_id(id)?, Utc::now()).await? {
        Some(event) => {
            crate::out!("{id} ping event {event} queued; `webhooks deliveries` shows how it went")
        }
        None => Err(unknown(id)),
    }
}

/// `webhooks resend EVENT_ID`.
async fn resend(app: &App, event_id: i64) -> Result<()> {
    let n = crate::store::outbound::resend(&app.pool, event_id, Utc::now()).await?;
    if n == 0 {
        return Err(CommandError::BadInput(format!(
            "EVENT_ID: event {event_id} was never delivered to an endpoint still in use"
        )));
    }
    crate::out!("event {event_id} queued again for {n} endpoint(s)")
}

/// `webhooks rotate-secret ID [--overlap-hours H]`: prints the new secret.
async fn rotate_secret(app: &App, id: &str, overlap_hours: u32) -> Result<()> {
    let eid = endpoint_id(id)?;
    let format = match crate::store::outbound::format_of(&app.pool, eid)
        .await?
        .as_deref()
    {
        Some("standard") => crate::outbound::SignatureFormat::Standard,
        Some(_) => crate::outbound::SignatureFormat::Paycron,
        None => return Err(unknown(id)),
    };
    let secret = crate::outbound::new_secret(format);
    let until = Utc::now() + chrono::Duration::hours(i64::from(overlap_hours));
    match crate::store::outbound::rotate_secret(&app.pool, eid, &secret, until).await? {
        Managed::Changed => crate::out!(
            "{id} {secret} (the old secret also signs until {})",
            until.to_rfc3339()
        ),
        Managed::Unknown => Err(unknown(id)),
    }
}

/// `webhooks list`.
///
/// # Errors
/// [`CommandError`].
pub async fn list(app: &App, format: Format) -> Result<()> {
    let rows = crate::store::outbound::endpoints(&app.pool).await?;
    print_rows(&rows, format, |rows| {
        table(
            &[
                "ENDPOINT",
                "URL",
                "FORMAT",
                "EVENTS",
                "ENABLED",
                "AFTER EVENT",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.url.clone(),
                        r.signature_format.clone(),
                        r.event_types
                            .as_ref()
                            .map(|t| t.join(","))
                            .unwrap_or_else(|| "all".into()),
                        r.enabled.to_string(),
                        r.last_position.to_string(),
                    ]
                })
                .collect(),
        )
    })
}

/// `webhooks deliveries`.
///
/// # Errors
/// [`CommandError`].
pub async fn deliveries(app: &App, format: Format) -> Result<()> {
    let rows = crate::store::outbound::deliveries(&app.pool, 500).await?;
    print_rows(&rows, format, |rows| {
        table(
            &[
                "DELIVERY", "ENDPOINT", "EVENT", "TYPE", "STATUS", "ATTEMPTS", "LAST", "NEXT",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.endpoint_id.to_string(),
                        r.event_id.to_string(),
                        r.event_type.clone(),
                        r.status.clone(),
                        r.attempts.to_string(),
                        r.last_status
                            .map(|s| s.to_string())
                            .or_else(|| r.last_error.clone())
                            .unwrap_or_default(),
                        r.next_attempt_at.to_rfc3339(),
                    ]
                })
                .collect(),
        )
    })
}

/// `webhooks verify --secret S --signature HEADER --body-file F`: what a receiver checks.
///
/// # Errors
/// [`CommandError::Failed`] (exit 1) when the signature does not verify.
fn verify(secret_file: &std::path::Path, header: &str, body_file: &std::path::Path) -> Result<()> {
    let secret = read_secret_file("--secret-file", secret_file)?;
    let body = std::fs::read(body_file)
        .map_err(|e| CommandError::BadInput(format!("{}: {e}", body_file.display())))?;
    crate::outbound::verify(
        &secret,
        header,
        &body,
        crate::outbound::DEFAULT_TOLERANCE,
        Utc::now(),
    )
    .map_err(|e| CommandError::Failed(e.to_string()))?;
    crate::out!("valid")?;
    Ok(())
}
