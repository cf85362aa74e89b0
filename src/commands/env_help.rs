//! The environment each command reads, for its `--help` (and the manual page): grouped by what
//! the command does, every name one of [`crate::config::Config::settings`] (a test holds the
//! two together). Meanings and defaults are in the README's configuration table.

/// Read by every command that opens the database.
const COMMON: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "PAYCRON_HOME",
    "PAYCRON_LOG_FORMAT",
    "PAYCRON_PROGRESS_SECONDS",
];
/// Read by every command that talks to Square.
const SQUARE: &[&str] = &[
    "SQUARE_ACCESS_TOKEN",
    "SQUARE_ACCESS_TOKEN_FILE",
    "SQUARE_ENVIRONMENT",
    "SQUARE_LOCATION_ID",
    "SQUARE_BASE_URL",
    "SQUARE_VERSION",
    "SQUARE_CONNECT_TIMEOUT_MS",
    "SQUARE_REQUEST_TIMEOUT_MS",
    "SQUARE_RETRY_DEADLINE_MS",
    "SQUARE_RATE_LIMIT_PER_SEC",
];
/// How billing charges and retries.
const BILLING: &[&str] = &[
    "PAYCRON_BATCH_SIZE",
    "PAYCRON_CONCURRENCY",
    "PAYCRON_LEASE_SECONDS",
    "PAYCRON_STALE_LOOKUP_HOURS",
    "PAYCRON_DUNNING_RETRY_DAYS",
    "PAYCRON_DUNNING_FINAL_STATE",
    "PAYCRON_DUNNING_FALLBACK_CARD",
    "PAYCRON_MAX_CATCH_UP_PERIODS",
    "PAYCRON_HALT_PROBE_SECONDS",
    "PAYCRON_CARD_EXPIRY_LEAD_DAYS",
    "PAYCRON_DISPUTE_LOST_CANCELS",
];
/// Outbound webhook deliveries.
const DELIVERY: &[&str] = &[
    "PAYCRON_WEBHOOK_BACKOFF_SECONDS",
    "PAYCRON_WEBHOOK_MAX_AGE_HOURS",
    "PAYCRON_WEBHOOK_ALLOW_PRIVATE",
];
/// Enrollment at the counter.
const ENROLL: &[&str] = &[
    "SQUARE_APPLICATION_ID",
    "PAYCRON_PUBLIC_URL",
    "PAYCRON_BUSINESS_NAME",
    "PAYCRON_ENROLLMENT_EXPIRY_MINUTES",
    "PAYCRON_ENROLLMENT_CARD_WAIT_MINUTES",
];
/// The daemon's servers and schedules.
const DAEMON: &[&str] = &[
    "PAYCRON_OPS_ADDR",
    "PAYCRON_WEBHOOK_ADDR",
    "PAYCRON_WEBHOOK_PATH",
    "SQUARE_WEBHOOK_SIGNATURE_KEY",
    "SQUARE_WEBHOOK_SIGNATURE_KEY_FILE",
    "SQUARE_WEBHOOK_NOTIFICATION_URL",
    "PAYCRON_SCHEDULES",
    "PAYCRON_DRAIN_TIMEOUT_SECONDS",
    "PAYCRON_HEALTH_STALE_INTERVALS",
];

/// The groups a command reads, by its name.
pub fn groups(command: &str) -> Vec<&'static [&'static str]> {
    match command {
        "run" => vec![COMMON, SQUARE, BILLING, DELIVERY, ENROLL, DAEMON],
        "run-once" => vec![COMMON, SQUARE, BILLING, DELIVERY, ENROLL],
        "migrate" => vec![
            COMMON,
            &[
                "PAYCRON_MIGRATE_DATABASE_URL",
                "PAYCRON_MIGRATE_DATABASE_URL_FILE",
            ],
        ],
        "enroll" => vec![COMMON, SQUARE, ENROLL],
        "sync-cards" | "reconcile" | "refund" | "cards" | "customers" | "charges" => {
            vec![COMMON, SQUARE, BILLING]
        }
        "webhooks" => vec![COMMON, DELIVERY],
        "healthcheck" => vec![&["PAYCRON_OPS_ADDR"]],
        "demo" | "bench" | "db" => vec![&["PAYCRON_HOME", "PAYCRON_LOG_FORMAT"]],
        "simulator" | "completions" | "man" => vec![],
        _ => vec![COMMON],
    }
}

/// The `--help` section for `command`.
pub fn section(command: &str) -> String {
    let names: Vec<&str> = groups(command).into_iter().flatten().copied().collect();
    if names.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "Environment (also keys of the PAYCRON_CONFIG file; defaults in the README):\n",
    );
    for chunk in names.chunks(3) {
        out.push_str("  ");
        out.push_str(&chunk.join("  "));
        out.push('\n');
    }
    out
}

/// Adds each command's environment to its help.
pub fn annotate(cmd: clap::Command) -> clap::Command {
    cmd.after_long_help("Environment: each command's --help lists what it reads; the README's configuration table has every setting.")
        .mut_subcommands(|sub| {
            let text = section(sub.get_name());
            if text.is_empty() { sub } else { sub.after_help(text) }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_listed_is_a_setting_and_every_setting_is_listed() {
        let settings = crate::config::Config::settings();
        let mut listed: Vec<&str> = [COMMON, SQUARE, BILLING, DELIVERY, ENROLL, DAEMON]
            .into_iter()
            .flatten()
            .copied()
            .chain([
                "PAYCRON_MIGRATE_DATABASE_URL",
                "PAYCRON_MIGRATE_DATABASE_URL_FILE",
            ])
            .collect();
        listed.sort();
        for name in &listed {
            assert!(
                settings.iter().any(|s| s == name),
                "{name} is not a setting"
            );
        }
        for s in &settings {
            assert!(listed.contains(&s.as_str()), "{s} is in no command's help");
        }
    }
}
