//! Prometheus metrics: the names every part of paycron records under, and the recorder the
//! daemon installs. Without an installed recorder (CLI commands) recording is a no-op.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter: charge outcomes, labels `outcome` (succeeded|declined|failed|pending) and `code`.
pub const CHARGES: &str = "paycron_charges_total";
/// Histogram: seconds from send to answer, per charge.
pub const CHARGE_SECONDS: &str = "paycron_charge_duration_seconds";
/// Gauge: CreatePayment calls in flight.
pub const IN_FLIGHT: &str = "paycron_charges_in_flight";
/// Counter: retries of Square calls, label `call`.
pub const RETRIES: &str = "paycron_square_retries_total";
/// Gauge: subscriptions due now (after each bill-due run).
pub const DUE: &str = "paycron_due_subscriptions";
/// Gauge: age in seconds of the oldest due subscription.
pub const OLDEST_DUE: &str = "paycron_oldest_due_age_seconds";
/// Counter: task runs, labels `task` and `result` (ok|error|skipped|panic).
pub const TASK_RUNS: &str = "paycron_task_runs_total";
/// Histogram: task run duration in seconds, label `task`.
pub const TASK_SECONDS: &str = "paycron_task_duration_seconds";
/// Gauge: Unix time of the last successful run, label `task`.
pub const TASK_LAST_SUCCESS: &str = "paycron_task_last_success_timestamp_seconds";

/// Counter: subscriptions set aside for the rest of a billing run, label `reason`
/// (no_progress|claimed_too_often): a row the engine could not move forward.
pub const BILLING_STALLED: &str = "paycron_billing_stalled_total";
/// Gauge: 1 while billing is halted because Square refused the configuration (location,
/// currency, API version, request shape), else 0.
pub const BILLING_HALTED: &str = "paycron_billing_halted";
/// Counter: subscriptions quarantined because the engine could not read or move them.
pub const QUARANTINED: &str = "paycron_subscriptions_quarantined_total";
/// Counter: refunds settled, label `outcome` (completed|rejected|failed).
pub const REFUNDS: &str = "paycron_refunds_total";
/// Counter: dispute money movements recorded, label `kind` (dispute_hold|dispute_won|dispute_lost).
pub const DISPUTES: &str = "paycron_dispute_movements_total";

/// Counter: outbound webhook delivery attempts, label `result` (delivered|retrying|failed).
pub const WEBHOOK_DELIVERIES: &str = "paycron_webhook_deliveries_total";
/// Gauge: outbound deliveries waiting to be sent.
pub const WEBHOOK_BACKLOG: &str = "paycron_webhook_backlog";
/// Gauge: age of the oldest outbound delivery waiting, seconds (0 when none).
pub const WEBHOOK_OLDEST_PENDING: &str = "paycron_webhook_oldest_pending_age_seconds";
/// Counter: Square webhook notifications received, label `result`
/// (accepted|duplicate|refused|error).
pub const SQUARE_WEBHOOKS: &str = "paycron_square_webhooks_total";
/// Gauge: differences the last reconcile found (0 when Square and the ledger agree).
pub const RECONCILE_FINDINGS: &str = "paycron_reconcile_findings";
/// Histogram: time a CreatePayment waited for its turn under `SQUARE_RATE_LIMIT_PER_SEC`
/// (apart from the charge's latency, which starts when the request leaves).
pub const RATE_LIMIT_WAIT: &str = "paycron_rate_limit_wait_seconds";
/// Counter: enrollments at the counter reaching a stage, label `stage` (paid|completed).
pub const ENROLLMENTS: &str = "paycron_enrollments_total";
/// Counter: what sync-cards filed, label `kind` (customers|cards|cards_changed|cards_refused).
pub const SYNCED: &str = "paycron_sync_cards_total";
/// Gauge: the database pool's connections, label `state` (open|idle).
pub const POOL: &str = "paycron_db_pool_connections";
/// Gauge: CPU time this process used, seconds (user + system).
pub const PROCESS_CPU: &str = "paycron_process_cpu_seconds_total";
/// Gauge: this process's resident memory, bytes.
pub const PROCESS_RSS: &str = "paycron_process_resident_memory_bytes";
/// Gauge: 1, labelled with the running `version`.
pub const BUILD_INFO: &str = "paycron_build_info";

/// Every metric name paycron exposes (the dashboard test checks against this list).
pub const ALL: &[&str] = &[
    CHARGES,
    CHARGE_SECONDS,
    IN_FLIGHT,
    RETRIES,
    DUE,
    OLDEST_DUE,
    TASK_RUNS,
    TASK_SECONDS,
    TASK_LAST_SUCCESS,
    BILLING_STALLED,
    BILLING_HALTED,
    QUARANTINED,
    REFUNDS,
    DISPUTES,
    WEBHOOK_DELIVERIES,
    WEBHOOK_BACKLOG,
    WEBHOOK_OLDEST_PENDING,
    SQUARE_WEBHOOKS,
    RECONCILE_FINDINGS,
    ENROLLMENTS,
    RATE_LIMIT_WAIT,
    SYNCED,
    POOL,
    PROCESS_CPU,
    PROCESS_RSS,
    BUILD_INFO,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        300.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            // Describe every metric so /metrics lists them from the start.
            metrics::describe_counter!(CHARGES, "Charge outcomes by outcome and decline code");
            metrics::describe_histogram!(
                CHARGE_SECONDS,
                metrics::Unit::Seconds,
                "CreatePayment time per charge"
            );
            metrics::describe_gauge!(IN_FLIGHT, "CreatePayment calls in flight");
            metrics::describe_counter!(RETRIES, "Retries of Square calls");
            metrics::describe_gauge!(DUE, "Subscriptions due now");
            metrics::describe_gauge!(
                OLDEST_DUE,
                metrics::Unit::Seconds,
                "Age of the oldest due subscription"
            );
            metrics::describe_counter!(TASK_RUNS, "Task runs by task and result");
            metrics::describe_histogram!(TASK_SECONDS, metrics::Unit::Seconds, "Task run duration");
            metrics::describe_gauge!(
                TASK_LAST_SUCCESS,
                "Unix time of the last successful run per task"
            );
            metrics::describe_counter!(
                BILLING_STALLED,
                "Subscriptions set aside for the rest of a billing run (no progress)"
            );
            metrics::describe_gauge!(
                BILLING_HALTED,
                "1 while billing is halted: Square refused the configuration"
            );
            for m in [IN_FLIGHT, DUE, OLDEST_DUE, BILLING_HALTED] {
                metrics::gauge!(m).set(0.0);
            }
            metrics::counter!(CHARGES, "outcome" => "succeeded", "code" => "").absolute(0);
            metrics::counter!(RETRIES, "call" => "CreatePayment").absolute(0);
            metrics::counter!(BILLING_STALLED, "reason" => "no_progress").absolute(0);
            metrics::describe_counter!(
                QUARANTINED,
                "Subscriptions quarantined: the engine could not read or move them"
            );
            metrics::counter!(QUARANTINED).absolute(0);
            metrics::describe_counter!(REFUNDS, "Refunds settled, by outcome");
            metrics::describe_counter!(DISPUTES, "Dispute money movements booked, by kind");
            metrics::describe_counter!(
                WEBHOOK_DELIVERIES,
                "Outbound webhook delivery attempts, by result"
            );
            metrics::describe_gauge!(WEBHOOK_BACKLOG, "Outbound deliveries waiting to be sent");
            metrics::describe_gauge!(
                WEBHOOK_OLDEST_PENDING,
                metrics::Unit::Seconds,
                "Age of the oldest outbound delivery waiting"
            );
            metrics::describe_counter!(SQUARE_WEBHOOKS, "Square webhook notifications, by result");
            metrics::describe_gauge!(RECONCILE_FINDINGS, "Differences the last reconcile found");
            metrics::describe_histogram!(
                RATE_LIMIT_WAIT,
                metrics::Unit::Seconds,
                "Time a CreatePayment waited for its rate-limit turn"
            );
            metrics::describe_counter!(
                ENROLLMENTS,
                "Enrollments at the counter reaching a stage (paid, completed)"
            );
            metrics::describe_gauge!(BUILD_INFO, "1, labelled with the running version");
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            for m in [WEBHOOK_BACKLOG, WEBHOOK_OLDEST_PENDING, RECONCILE_FINDINGS] {
                metrics::gauge!(m).set(0.0);
            }
            // Series that exist from the start, so a dashboard shows 0 rather than "no data"
            // and a rate() has a starting point.
            for outcome in ["completed", "rejected", "failed"] {
                metrics::counter!(REFUNDS, "outcome" => outcome).absolute(0);
            }
            for kind in ["dispute_hold", "dispute_won", "dispute_lost"] {
                metrics::counter!(DISPUTES, "kind" => kind).absolute(0);
            }
            for result in ["delivered", "retrying", "failed"] {
                metrics::counter!(WEBHOOK_DELIVERIES, "result" => result).absolute(0);
            }
            for result in ["accepted", "duplicate", "refused", "error"] {
                metrics::counter!(SQUARE_WEBHOOKS, "result" => result).absolute(0);
            }
            for stage in ["paid", "completed"] {
                metrics::counter!(ENROLLMENTS, "stage" => stage).absolute(0);
            }
            metrics::describe_counter!(SYNCED, "What sync-cards filed, by kind");
            for kind in ["customers", "cards", "cards_changed", "cards_refused"] {
                metrics::counter!(SYNCED, "kind" => kind).absolute(0);
            }
            metrics::describe_gauge!(POOL, "Database pool connections, by state");
            metrics::describe_gauge!(PROCESS_CPU, metrics::Unit::Seconds, "CPU time used");
            metrics::describe_gauge!(PROCESS_RSS, metrics::Unit::Bytes, "Resident memory");
            sample_process();
            handle
        })
        .clone()
}

/// One enrollment reached `stage` (`paid`: first period paid at the counter; `completed`: its
/// card is on file).
pub fn count_enrollment(stage: &'static str) {
    metrics::counter!(ENROLLMENTS, "stage" => stage).increment(1);
}

/// Samples this process's CPU time and resident memory (Linux `/proc/self`; elsewhere nothing).
pub fn sample_process() {
    if let Some(cpu) = super::process::cpu_seconds("self") {
        metrics::gauge!(PROCESS_CPU).set(cpu);
    }
    if let Some(rss) = super::process::memory_bytes("self", "VmRSS") {
        metrics::gauge!(PROCESS_RSS).set(rss);
    }
}

/// What sync-cards filed in one run.
pub fn count_synced(customers: u64, cards: u64, changed: u64, refused: u64) {
    for (kind, n) in [
        ("customers", customers),
        ("cards", cards),
        ("cards_changed", changed),
        ("cards_refused", refused),
    ] {
        metrics::counter!(SYNCED, "kind" => kind).increment(n);
    }
}
