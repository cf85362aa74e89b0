//! Test harness: a Postgres server shared by the run (`DATABASE_URL`'s when set, else a
//! throw-away embedded cluster under the target directory), a fresh database per test, an
//! in-process simulator, and the paycron binary wired to both.
//!
//! [`Harness::start`] gives a test all three at once — `{ db, sim, app }` — with `h.card(..)`
//! (a card at the simulator and in the database), `h.subscribe(..)`, typed reads through the
//! store (`h.subscription(id)`), `h.cli([..])` (the binary, on `tokio::process`) and
//! `h.assert_exactly_once()` (the demo's audit), so tests read as arrange, act, assert.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::process::Command;

use paycron::app::App;
use paycron::config::Config;
use paycron::gateway::PaymentGateway;
use paycron::gateway::square::SquareClient;
use paycron::simulator::{SimConfig, Simulator};
use paycron::store::embedded::{ClusterOptions, LocalCluster};
use paycron::store::{connect_options, open_pool};
use secrecy::SecretString;
use sqlx::PgPool;

static SERVER: OnceLock<String> = OnceLock::new();

/// The base URL of the test server (any database name).
fn server_url() -> String {
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return url;
            }
            let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-pg");
            let cluster = LocalCluster::new(&home, ClusterOptions { ephemeral: true })
                .expect("test cluster home");
            cluster.ensure_running().expect("test cluster starts");
            let url = cluster.url("postgres");
            drop_leftovers(&url);
            url
        })
        .clone()
}

/// Drops the databases earlier runs left behind (a run that was killed, or one whose test
/// panicked before its database was dropped). A database another run is using right now is
/// left alone: without FORCE, dropping it fails.
fn drop_leftovers(url: &str) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                return;
            };
            let old: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
            for db in old {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{db}\""
                )))
                .execute(&mut conn)
                .await;
            }
        });
    })
    .join()
    .ok();
}

fn with_database(url: &str, db: &str) -> String {
    let mut u = reqwest::Url::parse(url).expect("database url parses");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A fresh, migrated database, dropped when the test ends.
pub struct TestDb {
    /// Its URL, for child processes.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
    name: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The test's own runtime may be shutting down: drop the database from a thread of its
        // own, ending whatever sessions are left (child processes included). Not waited for, so
        // the suite does not slow down; what the end of the run cuts short, the next run's
        // start drops.
        if std::env::var_os("PAYCRON_TEST_KEEP_DATABASES").is_some() {
            return;
        }
        let (base, name) = (server_url(), self.name.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        });
    }
}

static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// A migrated database every test database is copied from (`CREATE DATABASE … TEMPLATE`):
/// copying files is cheaper than migrating each one. Rebuilt when this build's migrations
/// differ from the ones it holds.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            use sqlx::Connection;
            let base = server_url();
            let latest = paycron::store::MIGRATOR
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0);
            // The grants are applied by `migrate` outside any migration: a change to them
            // makes a new template too.
            let grants = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                paycron::store::ROLE_GRANTS.hash(&mut h);
                // And an edited migration (its checksum) makes a new one as well.
                for m in paycron::store::MIGRATOR.iter() {
                    m.checksum.hash(&mut h);
                }
                h.finish() % 1_000_000
            };
            let name = format!(
                "paycron_test_template_{latest}_{}_{grants}",
                paycron::store::MIGRATOR.iter().count()
            );
            let mut admin = sqlx::PgConnection::connect(&base)
                .await
                .expect("test server");
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)",
            )
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("look up the template");
            // Templates of other builds' schemas are of no more use here.
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'paycron\\_test\\_template\\_%' AND datname <> $1",
            )
            .bind(&name)
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
            let doomed: Vec<&String> = if exists {
                stale.iter().collect()
            } else {
                stale.iter().chain([&name]).collect()
            };
            for old in doomed {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE \"{old}\" IS_TEMPLATE false"
                )))
                .execute(&mut admin)
                .await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
            if !exists {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut admin)
                    .await
                    .expect("create the template");
                let pool = open_pool(
                    connect_options(&with_database(&base, &name)).expect("options"),
                    2,
                )
                .await
                .expect("migrate the template");
                pool.close().await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE \"{name}\" IS_TEMPLATE true"
                )))
                .execute(&mut admin)
                .await
                .expect("mark the template");
            }
            name
        })
        .await
}

/// Creates a fresh, migrated database (a copy of the template).
pub async fn fresh_db() -> TestDb {
    let base = server_url();
    let template = template().await;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("test server");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        )))
        .execute(&mut admin)
        .await
        .expect("create database");
    }
    let url = with_database(&base, &name);
    let pool = paycron::store::open_unmigrated(connect_options(&url).expect("options"), 20)
        .await
        .expect("connect");
    TestDb { url, pool, name }
}

/// Starts an in-process simulator.
pub async fn sim(config: SimConfig) -> Simulator {
    Simulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("simulator starts")
}

/// An in-process simulator answering every request after `latency_ms`.
pub async fn slow_sim(latency_ms: u64) -> Simulator {
    sim(SimConfig {
        faults: paycron::simulator::Faults {
            latency_ms,
            ..Default::default()
        },
        ..SimConfig::default()
    })
    .await
}

/// A configuration pointed at `sim_url`, with short deadlines suited to tests.
pub fn config(sim_url: &str) -> Config {
    let mut c = Config::defaults();
    c.square.base_url = Some(sim_url.to_owned());
    c.square.access_token = Some(SecretString::from("test-token-not-secret".to_owned()));
    c.square.rate_limit_per_sec = 100_000;
    c.square.retry_deadline = Duration::from_secs(3);
    c.square.request_timeout = Duration::from_secs(2);
    c.billing.lease = Duration::from_secs(5);
    c
}

/// An app on `db` talking to `sim_url`.
pub fn app(db: &TestDb, sim_url: &str) -> App {
    App::from_pool(config(sim_url), db.pool.clone())
}

/// The Square client for `config`.
pub fn client(config: &Config) -> Arc<dyn PaymentGateway> {
    Arc::new(SquareClient::new(&config.square).expect("client"))
}

/// The paycron binary with a clean environment pointed at `db` (and `sim_url`).
pub fn paycron(db_url: Option<&str>, sim_url: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paycron"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SQUARE_") || k.starts_with("PAYCRON_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("PAYCRON_LOG_FORMAT", "json");
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    if let Some(url) = sim_url {
        cmd.env("SQUARE_BASE_URL", url)
            .env("SQUARE_ACCESS_TOKEN", "test-token-not-secret");
    }
    cmd
}

/// Output of a finished command: (exit code, stdout, stderr).
///
/// Logs are JSON in tests (the binary is started with `PAYCRON_LOG_FORMAT=json`), so the final
/// error is a JSON line too; its message is also given as text, as a person would read it.
pub async fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().await.expect("paycron runs");
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("exit_code").is_some())
        .and_then(|v| v["message"].as_str().map(str::to_owned));
    if let Some(message) = last {
        stderr.push_str(&format!("paycron: {message}\n"));
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// Seeds `db` with a customer and card through the SQL API.
pub async fn seed_card(db: &TestDb, customer: &str, card: &str) {
    sqlx::query("SELECT paycron.upsert_customer_card($1, $2, 'VISA', '1111', 12, 2031)")
        .bind(customer)
        .bind(card)
        .execute(&db.pool)
        .await
        .expect("seed card");
}

/// `n` customers, each with a card Square approves and a daily subscription due an hour ago;
/// returns the subscriptions' ids.
pub async fn seed_due(db: &TestDb, s: &Simulator, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let customer = format!("DC{i:04}");
        let card = format!("ccof:sim-ok-d{i:04}");
        s.with(|st| st.add_card(&customer, &card, "VISA", true));
        seed_card(db, &customer, &card).await;
        ids.push(
            sqlx::query_scalar("SELECT paycron.create_subscription($1, 500, 'USD', 'day', 1, NULL, now() - interval '1 hour', p_now => now() - interval '1 hour')")
                .bind(&customer)
                .fetch_one(&db.pool)
                .await
                .expect("create subscription"),
        );
    }
    ids
}

/// Counts rows of a paycron table.
pub async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM paycron.{table}"
    )))
    .fetch_one(&db.pool)
    .await
    .expect("count")
}

/// One number a query returns (a count, usually).
pub async fn count_where(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A transaction acting as `role` (the runtime or the app role), to drive what it may do.
pub async fn as_role(db: &TestDb, role: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// The exactly-once audit (`ledger::audit`, the demo's too) against the simulator's own record
/// of the payments it took; panics with every problem found.
pub async fn assert_exactly_once(db: &TestDb, s: &Simulator) -> paycron::ledger::audit::Audit {
    let taken: Vec<paycron::domain::answer::ProviderPayment> =
        s.with(|st| st.completed().iter().map(Into::into).collect());
    let audit = paycron::ledger::audit::exactly_once(&db.pool, &taken)
        .await
        .expect("audit reads the database");
    assert!(
        audit.is_exact(),
        "exactly once broken: {:?}",
        audit.problems
    );
    audit
}

/// What a finished command did.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the log, as JSON lines).
    pub stderr: String,
}

/// A database, a simulator and an app wired to both: what most tests start from.
pub struct Harness {
    /// The test's own database.
    pub db: TestDb,
    /// The simulator (Square).
    pub sim: Simulator,
    /// An app on both, as `App::build` would make it.
    pub app: App,
}

impl Harness {
    /// A fresh database and a default simulator.
    pub async fn start() -> Self {
        Self::with(SimConfig::default()).await
    }

    /// A fresh database and a simulator configured by `config`.
    pub async fn with(config: SimConfig) -> Self {
        let sim = sim(config).await;
        let db = fresh_db().await;
        let app = app(&db, &sim.base_url());
        Harness { db, sim, app }
    }

    /// A card on file for `customer`, known to Square (approving or declining as its id
    /// says, see `simulator::behaviour_of`) and to paycron at once.
    pub async fn card(&self, customer: &str, card: &str) {
        self.sim
            .with(|st| st.add_card(customer, card, "VISA", true));
        seed_card(&self.db, customer, card).await;
    }

    /// A subscription through the SQL API: `amount_minor` USD every `count` `unit`s from
    /// `anchor`, created at `anchor`.
    pub async fn subscribe(
        &self,
        customer: &str,
        amount_minor: i64,
        (count, unit): (i32, &str),
        anchor: &str,
    ) -> paycron::domain::SubscriptionId {
        let id: uuid::Uuid = sqlx::query_scalar(
            "SELECT paycron.create_subscription($1, $2, 'USD', $3, $4, NULL, $5::timestamptz, p_now => $5::timestamptz)",
        )
        .bind(customer)
        .bind(amount_minor)
        .bind(unit)
        .bind(count)
        .bind(anchor)
        .fetch_one(&self.db.pool)
        .await
        .expect("create subscription");
        id.into()
    }

    /// A monthly subscription of `amount_minor` USD on a card Square approves, billed once:
    /// returns its id and the succeeded charge's.
    pub async fn paid_charge(
        &self,
        customer: &str,
        amount_minor: i64,
    ) -> (paycron::domain::SubscriptionId, uuid::Uuid) {
        self.card(
            customer,
            &format!("ccof:sim-ok-{}", customer.to_lowercase()),
        )
        .await;
        let sub = self
            .subscribe(customer, amount_minor, (1, "month"), "2027-01-01T00:00:00Z")
            .await;
        self.engine()
            .await
            .bill_due("2027-01-01T01:00:00Z".parse().expect("instant"))
            .await
            .expect("billed");
        let charge = sqlx::query_scalar(
            "SELECT id FROM paycron.charges WHERE subscription_id = $1 AND status = 'succeeded'",
        )
        .bind(sub.0)
        .fetch_one(&self.db.pool)
        .await
        .expect("a succeeded charge");
        (sub, charge)
    }

    /// The subscription as the store reads it.
    pub async fn subscription(
        &self,
        id: impl Into<paycron::domain::SubscriptionId>,
    ) -> paycron::store::subscriptions::SubscriptionRow {
        let mut conn = self.db.pool.acquire().await.expect("connection");
        paycron::store::subscriptions::get(&mut conn, id.into())
            .await
            .expect("subscription")
    }

    /// The engine of a worker on this app.
    pub async fn engine(&self) -> paycron::billing::Engine {
        self.app
            .engine(client(&self.app.config))
            .await
            .expect("engine")
    }

    /// Runs the binary with `args` on this database and simulator.
    pub async fn cli<I, S>(&self, args: I) -> Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let (code, stdout, stderr) =
            run(paycron(Some(&self.db.url), Some(&self.sim.base_url())).args(args)).await;
        Out {
            code,
            stdout,
            stderr,
        }
    }

    /// [`assert_exactly_once`] on this database and simulator.
    pub async fn assert_exactly_once(&self) -> paycron::ledger::audit::Audit {
        assert_exactly_once(&self.db, &self.sim).await
    }
}

/// A throw-away `PAYCRON_HOME` for commands that start their own embedded cluster. Its data
/// directory may live outside the home (`/var/tmp`, when the server's user cannot reach the
/// home): that goes too when the test ends. Tests stop their cluster before.
pub struct EmbeddedHome(tempfile::TempDir);

impl EmbeddedHome {
    /// A new, empty home under the target directory.
    pub fn new(prefix: &str) -> Self {
        EmbeddedHome(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("a home under the target directory"),
        )
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for EmbeddedHome {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_to_string(self.0.path().join("pg/location")) {
            let _ = std::fs::remove_dir_all(dir.trim());
        }
    }
}
