//! `paycron run`: ticks, graceful drain, singletons across replicas, readiness through a
//! database restart, metrics the dashboard relies on, no secret in any log line.
//!
//! The daemon's behaviour (drain, singletons per tick) is tested in-process, with the shutdown
//! injected; processes are spawned only where the binary itself is the point (signals, the
//! embedded cluster's restart, what reaches the log, schedule files refused at start-up).

use std::io::Write;
use std::net::TcpListener;
use std::process::Stdio;

use std::time::Duration;
use tokio::process::Child;

use paycron::simulator::{Faults, SimConfig};

use crate::helpers::{
    EmbeddedHome, Harness, TestDb, count_where, fresh_db, paycron, run, seed_card, seed_due, sim,
    slow_sim,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn schedule(jobs: &[(&str, &str, &str)]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    for (name, task, cron) in jobs {
        writeln!(
            f,
            "[[job]]\nname = \"{name}\"\ntask = \"{task}\"\ncron = \"{cron}\"\n"
        )
        .unwrap();
    }
    f
}

fn daemon(db_url: Option<&str>, sim_url: &str, sched: &std::path::Path, port: u16) -> Child {
    paycron(db_url, Some(sim_url))
        .env("PAYCRON_SCHEDULES", sched)
        .env("PAYCRON_OPS_ADDR", format!("127.0.0.1:{port}"))
        .env("PAYCRON_DRAIN_TIMEOUT_SECONDS", "15")
        .env("PAYCRON_CONCURRENCY", "8")
        .env("PAYCRON_BATCH_SIZE", "20")
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

async fn wait_for(port: u16, path: &str, status: u16) {
    for _ in 0..200 {
        if get(port, path).await.is_some_and(|(s, _)| s == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never answered {status}");
}

/// Waits until at least one charge succeeded: billing is under way.
async fn wait_until_billing(db: &TestDb) {
    for _ in 0..200 {
        if count_where(
            db,
            "SELECT count(*) FROM paycron.charges WHERE status = 'succeeded'",
        )
        .await
            > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm(child: &Child) {
    let pid = child.id().expect("the child is running").to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
}

/// A daemon running in this process on `h`'s database and simulator, ticking `jobs`, with its
/// ops server on `port`; stopped through `shutdown`.
fn in_process(
    h: &Harness,
    sched: &std::path::Path,
    port: u16,
    shutdown: &paycron::ops::shutdown::Shutdown,
) -> tokio::task::JoinHandle<Result<(), paycron::scheduler::daemon::DaemonError>> {
    let jobs = paycron::scheduler::load(sched).unwrap();
    let mut app = crate::helpers::app(&h.db, &h.sim.base_url());
    app.config.ops_addr = format!("127.0.0.1:{port}").parse().unwrap();
    app.config.billing.concurrency = 8;
    app.config.billing.batch_size = 20;
    let gateway = crate::helpers::client(&app.config);
    tokio::spawn(paycron::scheduler::daemon::run(
        app,
        gateway,
        jobs,
        Duration::from_secs(15),
        shutdown.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_mid_billing_finishes_what_is_in_flight_and_leaves_nothing_pending() {
    let h = Harness::with(SimConfig {
        faults: Faults {
            latency_ms: 150,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    seed_due(&h.db, &h.sim, 120).await;
    let sched = schedule(&[("bill", "bill-due", "* * * * * *")]);
    let port = free_port();
    let shutdown = paycron::ops::shutdown::Shutdown::new();
    let daemon = in_process(&h, sched.path(), port, &shutdown);
    wait_for(port, "/readyz", 200).await;
    wait_until_billing(&h.db).await;

    shutdown.drain.cancel();
    let ended = daemon.await.unwrap();

    assert!(ended.is_ok(), "{ended:?}");
    let pending = count_where(
        &h.db,
        "SELECT count(*) FROM paycron.charges WHERE status = 'pending'",
    );
    assert_eq!(pending.await, 0, "no charge left pending");
    let done = count_where(
        &h.db,
        "SELECT count(*) FROM paycron.charges WHERE status = 'succeeded'",
    )
    .await;
    assert!(done > 0 && done < 120, "stopped mid-billing: {done}");
    // A later run bills the rest, each period exactly once.
    let out = h.cli(["run-once", "--task", "bill-due"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let audit = h.assert_exactly_once().await;
    assert_eq!((audit.payments, audit.periods), (120, 120));
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_run_each_singleton_once_per_tick() {
    let h = Harness::with(SimConfig {
        customers: 30,
        faults: Faults {
            latency_ms: 20,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    seed_due(&h.db, &h.sim, 40).await;
    let sched = schedule(&[
        ("sync", "sync-cards", "* * * * * *"),
        ("bill", "bill-due", "*/2 * * * * *"),
    ]);
    let (p1, p2) = (free_port(), free_port());
    let shutdown = paycron::ops::shutdown::Shutdown::new();
    let a = in_process(&h, sched.path(), p1, &shutdown);
    let b = in_process(&h, sched.path(), p2, &shutdown);
    wait_for(p1, "/readyz", 200).await;
    wait_for(p2, "/readyz", 200).await;
    // Let a few ticks of sync-cards happen (waiting on what happened, not on a fixed time, so
    // a loaded machine only makes this slower).
    for _ in 0..300 {
        let ticks = count_where(
            &h.db,
            "SELECT count(*) FROM paycron.task_runs WHERE task = 'sync-cards'",
        )
        .await;
        if ticks >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every metric the dashboard queries is one /metrics exposes (in-process daemons share one
    // recorder, so this is the process's whole set: it catches a name nothing registers).
    let metrics = get(p1, "/metrics").await.unwrap().1;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/paycron.json"
    ))
    .unwrap();
    let mut names: Vec<String> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("paycron_"))
        .map(|w| {
            w.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            metrics.contains(&format!("\n{name}")) || metrics.contains(&format!("{name}_bucket")),
            "{name} not in /metrics:\n{metrics}"
        );
    }

    shutdown.drain.cancel();
    assert!(a.await.unwrap().is_ok());
    assert!(b.await.unwrap().is_ok());

    let ticks = count_where(
        &h.db,
        "SELECT count(*) FROM paycron.task_runs WHERE task = 'sync-cards'",
    )
    .await;
    assert!(ticks >= 3, "{ticks}");
    // Each sync lists Square's 30 customers in one ListCustomers page: one call per run.
    let syncs = h.sim.with(|st| st.customer_lists) as i64;
    assert_eq!(syncs, ticks, "each tick's sync ran on exactly one daemon");
    // Both daemons billed; no period twice.
    h.assert_exactly_once().await;
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_through_a_restart() {
    let home = EmbeddedHome::new("paycron-ready");
    let s = sim(SimConfig::default()).await;
    let sched = schedule(&[("bill", "bill-due", "* * * * * *")]);
    let port = free_port();
    let mut child = paycron(None, Some(&s.base_url()))
        .env("PAYCRON_HOME", home.path())
        .env("PAYCRON_SCHEDULES", sched.path())
        .env("PAYCRON_OPS_ADDR", format!("127.0.0.1:{port}"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(port, "/readyz", 200).await;
    let (code, out, _) = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["db", "stop"]))
    .await;
    assert_eq!((code, out.trim()), (0, "stopped"));
    wait_for(port, "/readyz", 503).await;
    assert_eq!(
        get(port, "/healthz").await.unwrap().0,
        200,
        "alive while the database is down"
    );
    let (code, _, err) = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["db", "url"]))
    .await;
    assert_eq!(code, 0, "{err}");
    wait_for(port, "/readyz", 200).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon kept running"
    );
    // And it still bills: a subscription created after the restart is charged on a tick.
    s.with(|st| st.add_card("R1", "ccof:sim-ok-r1", "VISA", true));
    let mut csv = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    writeln!(csv, "customer_id,card_id,card_brand,last_4,exp_month,exp_year\nR1,ccof:sim-ok-r1,VISA,1111,12,2031").unwrap();
    let home_env = |c: &mut tokio::process::Command| {
        c.env("PAYCRON_HOME", home.path());
    };
    let mut import = paycron(None, None);
    home_env(&mut import);
    assert_eq!(
        run(import.args(["cards", "import"]).arg(csv.path()))
            .await
            .0,
        0
    );
    let mut create = paycron(None, None);
    home_env(&mut create);
    assert_eq!(
        run(create.args([
            "subscription",
            "create",
            "--customer",
            "R1",
            "--amount",
            "700",
            "--currency",
            "USD",
            "--every",
            "1month"
        ]))
        .await
        .0,
        0
    );
    let mut billed = false;
    for _ in 0..100 {
        let mut export = paycron(None, None);
        home_env(&mut export);
        let (_, out, _) = run(export.args(["ledger", "export", "--format", "jsonl"])).await;
        if out.contains("\"succeeded\"") {
            billed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(billed, "billed after the database came back");
    sigterm(&child).await;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["db", "stop"]))
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedule_files_are_refused_with_file_and_line() {
    let db = fresh_db().await;
    for (text, expect) in [
        (
            "[[job]]\nname = \"a\"\ntask = \"dance\"\ncron = \"* * * * * *\"\n",
            ":3: unknown task \"dance\"",
        ),
        (
            "[[job]]\nname = \"a\"\ntask = \"recover\"\ncron = \"every minute\"\n",
            ":4: cron \"every minute\"",
        ),
        (
            "[[job]]\nname = \"a\"\ntask = \"recover\"\ncron = \"* * * * * *\"\n[[job]]\nname = \"a\"\ntask = \"bill-due\"\ncron = \"* * * * * *\"\n",
            ":6: duplicate job name \"a\"",
        ),
        (
            "[[job]]\nname = \"a\"\ntask = \"recover\"\ncron = \"* * * * * *\"\nsingleton = true\n",
            ":5: unknown field `singleton`",
        ),
    ] {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let (code, _, err) = run(paycron(Some(&db.url), Some("http://127.0.0.1:9"))
            .env("PAYCRON_SCHEDULES", f.path())
            .arg("run"))
        .await;
        assert_eq!(code, 2, "{text}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.contains(&f.path().display().to_string()) && last.contains(expect),
            "{text}: {last}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_square_token_never_reaches_a_log_line() {
    const TOKEN: &str = "test-only-secret-token-9f8e7d6c5b4a";
    let s = sim(SimConfig {
        token: Some("a-different-token".into()),
        customers: 2,
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    seed_card(&db, "T1", "ccof:sim-ok-t1").await;
    sqlx::query("SELECT paycron.create_subscription('T1', 500, 'USD', 'day', 1, NULL, now() - interval '1 hour', p_now => now() - interval '1 hour')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut outputs = String::new();
    for args in [
        vec!["sync-cards"],
        vec!["run-once"],
        vec!["subscription", "list"],
    ] {
        let (code, out, err) = run(paycron(Some(&db.url), Some(&s.base_url()))
            .env("SQUARE_ACCESS_TOKEN", TOKEN)
            .env("RUST_LOG", "trace")
            .args(&args))
        .await;
        assert_ne!(code, -1);
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    assert!(
        outputs.contains("rejected"),
        "the rejection was logged: {outputs}"
    );
    assert!(!outputs.contains(TOKEN), "the token leaked");
    assert!(
        !outputs.contains("secret-token"),
        "part of the token leaked"
    );
    s.shutdown().await;
}

#[test]
fn the_kubernetes_schedules_match_the_default_ones() {
    let a = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schedules/default.toml"
    ))
    .unwrap();
    let b = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/k8s/schedules/default.toml"
    ))
    .unwrap();
    assert_eq!(
        a, b,
        "deploy/k8s/schedules/default.toml is a copy of schedules/default.toml"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_drains_on_sigterm_too() {
    let s = slow_sim(150).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 100).await;
    let child = paycron(Some(&db.url), Some(&s.base_url()))
        .env("PAYCRON_CONCURRENCY", "8")
        .env("PAYCRON_BATCH_SIZE", "100")
        .args(["run-once", "--task", "bill-due"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_billing(&db).await;
    sigterm(&child).await;
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        count_where(
            &db,
            "SELECT count(*) FROM paycron.charges WHERE status = 'pending'"
        )
        .await,
        0
    );
    let done = count_where(
        &db,
        "SELECT count(*) FROM paycron.charges WHERE status = 'succeeded'",
    )
    .await;
    assert!(done > 0 && done < 100, "{done}");
    assert_eq!(
        s.with(|st| st.completed().len()) as i64,
        done,
        "every payment taken is recorded"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_is_logged_and_runs_again_at_its_next_tick() {
    use tokio::io::AsyncBufReadExt;
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 1).await;
    // A row sqlx cannot decode (an infinite end date written by hand, past the constraint a
    // superuser drops) makes the claim panic.
    sqlx::query("ALTER TABLE paycron.subscriptions DISABLE TRIGGER USER")
        .execute(&db.pool)
        .await
        .ok();
    sqlx::query("ALTER TABLE paycron.subscriptions DROP CONSTRAINT subscriptions_finite_instants")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE paycron.subscriptions SET ends_at = 'infinity'")
        .execute(&db.pool)
        .await
        .unwrap();
    let sched = schedule(&[("bill", "bill-due", "* * * * * *")]);
    let port = free_port();
    let mut child = daemon(Some(&db.url), &s.base_url(), sched.path(), port);
    let stderr = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut panics = 0;
        let mut skipped = 0;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("task panicked") && line.contains("bill-due") {
                panics += 1;
            }
            if line.contains("previous run still going") {
                skipped += 1;
            }
            if panics >= 3 {
                break;
            }
        }
        (panics, skipped)
    });
    let mut waited = 0;
    while !reader.is_finished() && waited < 300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let _ = child.kill().await;
    let (panics, skipped) = reader.await.unwrap();
    assert!(
        panics >= 3,
        "the task ran again after each panic: {panics} panics logged, {skipped} ticks skipped"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process_and_drains_on_an_injected_shutdown() {
    let s = crate::helpers::sim(paycron::simulator::SimConfig::default()).await;
    let db = crate::helpers::fresh_db().await;
    crate::helpers::seed_due(&db, &s, 5).await;
    let sched = schedule(&[("bill", "bill-due", "* * * * * *")]);
    let jobs = paycron::scheduler::load(sched.path()).unwrap();
    let mut app = crate::helpers::app(&db, &s.base_url());
    app.config.ops_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = crate::helpers::client(&app.config);
    let shutdown = paycron::ops::shutdown::Shutdown::new();
    let daemon = tokio::spawn(paycron::scheduler::daemon::run(
        app,
        gateway,
        jobs,
        std::time::Duration::from_secs(10),
        shutdown.clone(),
    ));
    let mut charged = 0;
    for _ in 0..100 {
        charged = s.with(|st| st.completed().len());
        if charged == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(charged, 5, "billed by the in-process daemon");
    shutdown.drain.cancel();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), daemon)
        .await
        .expect("the daemon returns after a drain")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    s.shutdown().await;
}

/// `paycron run` started anywhere (no `schedules/` there, no PAYCRON_SCHEDULES) ticks the
/// built-in default schedule: the shipped file's jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_outside_the_repository_on_the_built_in_schedule() {
    let built_in = paycron::scheduler::built_in().unwrap();
    let shipped = paycron::scheduler::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schedules/default.toml"
    )))
    .unwrap();
    let names = |jobs: &[paycron::scheduler::JobSpec]| -> Vec<String> {
        jobs.iter().map(|j| j.name.clone()).collect()
    };
    assert_eq!(names(&built_in), names(&shipped));
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = paycron(Some(&db.url), Some(&s.base_url()))
        .current_dir(elsewhere.path())
        .env("PAYCRON_OPS_ADDR", format!("127.0.0.1:{port}"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(port, "/readyz", 200).await;
    sigterm(&child).await;
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    // It says which schedules it runs.
    assert!(
        log.contains("schedules in use") && log.contains("the built-in default"),
        "{log}"
    );
    s.shutdown().await;
}

/// An idle daemon says nothing per tick at INFO: runs that found nothing to do are DEBUG, and a
/// run that did something is one `task run` line with its counts as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_is_quiet_and_a_busy_tick_logs_its_counts() {
    use tokio::io::AsyncBufReadExt;
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    let sched = schedule(&[("bill", "bill-due", "* * * * * *")]);
    let port = free_port();
    let mut child = daemon(Some(&db.url), &s.base_url(), sched.path(), port);
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            got.push(l);
        }
        got
    });
    wait_for(port, "/readyz", 200).await;
    // Three idle ticks, counted by the metric rather than by the log.
    for _ in 0..100 {
        let m = get(port, "/metrics").await.unwrap().1;
        let ok_runs = m
            .lines()
            .find(|l| {
                l.starts_with("paycron_task_runs_total")
                    && l.contains("bill-due")
                    && l.contains("\"ok\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if ok_runs >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then something to do.
    seed_due(&db, &s, 2).await;
    for _ in 0..100 {
        if s.with(|st| st.completed().len()) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child).await;
    let _ = child.wait().await;
    let log = reader.await.unwrap();
    let runs: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "task run")
        .collect();
    // Only busy ticks are at INFO (one, or two if the seeding straddled a tick), each with its
    // counts; the three idle ones before are not.
    assert!(!runs.is_empty() && runs.len() <= 2, "{log:#?}");
    for r in &runs {
        assert!(
            r["attempted"].as_u64().unwrap() > 0,
            "an idle run at INFO: {r}"
        );
        assert!(r["duration_ms"].is_u64(), "{r}");
    }
    let succeeded: u64 = runs.iter().map(|r| r["succeeded"].as_u64().unwrap()).sum();
    assert_eq!(succeeded, 2);
    // Each charge's line names whom support would search for.
    let charges: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "charge")
        .collect();
    assert_eq!(charges.len(), 2, "{log:#?}");
    for c in &charges {
        assert!(
            c["customer_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("DC")),
            "{c}"
        );
        assert!(
            c["subscription_id"].is_string() && c["charge_id"].is_string(),
            "{c}"
        );
        assert!(c["external_ref"].is_string(), "{c}");
        // And the run it belongs to, whose summary line carries the same id.
        let run = c["run_id"].as_str().unwrap();
        assert_eq!(run.len(), 36, "{c}");
        assert!(runs.iter().any(|r| r["run_id"] == run), "{c} in {runs:?}");
    }
    s.shutdown().await;
}

/// Every metric the shipped alert rules use is one paycron exposes.
#[test]
fn the_alert_rules_use_only_metrics_paycron_exposes() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yaml"
    ))
    .unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("paycron_"))
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(
            paycron::ops::metrics::ALL.contains(&name),
            "{name} is not a metric paycron exposes"
        );
    }
    assert!(rules.contains("groups:") && rules.contains("- alert: PaycronBillingHalted"));
}

/// `paycron healthcheck` (a container's HEALTHCHECK): exit 0 while the daemon's /healthz answers,
/// 1 once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_the_local_daemon() {
    let h = Harness::start().await;
    let sched = schedule(&[("bill", "bill-due", "* * * * * *")]);
    let port = free_port();
    let shutdown = paycron::ops::shutdown::Shutdown::new();
    let daemon = in_process(&h, sched.path(), port, &shutdown);
    wait_for(port, "/healthz", 200).await;
    let check = async || {
        run(paycron(None, None)
            .env("PAYCRON_OPS_ADDR", format!("0.0.0.0:{port}"))
            .arg("healthcheck"))
        .await
    };
    let (code, out, err) = check().await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("healthy"), "{out}");
    shutdown.drain.cancel();
    daemon.await.unwrap().unwrap();
    let (code, _, err) = check().await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unhealthy"), "{err}");
}

/// `paycron run` with `PAYCRON_PUBLIC_URL` serves the enrollment pages beside the receiver, and
/// its `enrollments` task finds a sale whose callback never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_enrollment_pages_and_its_task_finds_lost_sales() {
    let h = Harness::start().await;
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let sched = schedule(&[("enrollments", "enrollments", "* * * * * *")]);
    let app_id = paycron::simulator::state::APPLICATION_ID;
    let env = |c: &mut tokio::process::Command| {
        c.env("PAYCRON_PUBLIC_URL", &public)
            .env("SQUARE_APPLICATION_ID", app_id)
            .env("PAYCRON_BUSINESS_NAME", "Daemon Gym");
    };
    let mut daemon = paycron(Some(&h.db.url), Some(&h.sim.base_url()));
    env(&mut daemon);
    let child = daemon
        .env("PAYCRON_SCHEDULES", sched.path())
        .env("PAYCRON_OPS_ADDR", format!("127.0.0.1:{port}"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(port, "/readyz", 200).await;
    let customer = h.sim.with(|st| {
        st.create_customer(r#"{"given_name":"Dee","idempotency_key":"dee"}"#)
            .json()["customer"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let mut enroll = paycron(Some(&h.db.url), Some(&h.sim.base_url()));
    env(&mut enroll);
    let (code, out, err) = run(enroll.args([
        "enroll",
        "--customer",
        &customer,
        "--amount",
        "4900",
        "--currency",
        "USD",
        "--every",
        "1year",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let link = out.lines().next().unwrap().to_owned();
    assert!(link.starts_with(&public), "{link}");
    let page = reqwest::get(&link).await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("USD 49.00 every year") && page.contains("Daemon Gym"),
        "{page}"
    );
    // The sale is made at the counter and POS never comes back: the task finds it.
    let sub: uuid::Uuid = sqlx::query_scalar("SELECT subscription_id FROM paycron.enrollments")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    h.sim
        .with(|st| st.pos_sale(&customer, 4900, "USD", true))
        .unwrap();
    let mut state = String::new();
    for _ in 0..100 {
        state = sqlx::query_scalar("SELECT status FROM paycron.enrollments")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
        if state == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state, "completed",
        "the enrollments task found the sale and the card"
    );
    let sub_row = h.subscription(paycron::domain::SubscriptionId(sub)).await;
    assert_eq!(sub_row.status.as_str(), "active");
    sigterm(&child).await;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.assert_exactly_once().await;
    h.sim.shutdown().await;
}

/// The Prometheus Operator's PrometheusRule carries exactly the shipped alert rules.
#[test]
fn the_prometheus_rule_resource_is_the_alert_rules_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yaml")).unwrap();
    let resource =
        std::fs::read_to_string(format!("{root}/deploy/k8s/monitoring/prometheusrule.yaml"))
            .unwrap();
    let groups: Vec<String> = rules
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip_while(|l| *l != "groups:")
        .skip(1)
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("  {l}")
            }
        })
        .collect();
    let spec: Vec<String> = resource
        .lines()
        .skip_while(|l| *l != "  groups:")
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert!(groups.len() > 20);
    assert_eq!(
        spec, groups,
        "deploy/k8s/monitoring/prometheusrule.yaml drifted from alerts.yaml"
    );
}

/// Every manifest runs this version's image, and the migrate Job's name carries the version
/// (so an upgrade makes a new Job instead of failing on the old one's immutable template).
#[test]
fn manifests_run_this_version_and_the_migrate_job_is_named_by_it() {
    let root = env!("CARGO_MANIFEST_DIR");
    let version = env!("CARGO_PKG_VERSION");
    for file in ["deployment.yaml", "cronjob.yaml", "migrate-job.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/deploy/k8s/{file}")).unwrap();
        for image in text
            .lines()
            .filter(|l| l.trim_start().starts_with("image:"))
        {
            assert!(
                image.trim_end().ends_with(&format!(":{version}")),
                "{file}: {image}"
            );
        }
    }
    let job = std::fs::read_to_string(format!("{root}/deploy/k8s/migrate-job.yaml")).unwrap();
    assert!(
        job.contains(&format!(
            "name: paycron-migrate-{}",
            version.replace('.', "-")
        )),
        "{job}"
    );
    let docker = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).unwrap();
    assert!(docker.contains(&format!("ARG VERSION={version}")));
}
