//! The embedded default database: a local PostgreSQL cluster run from the server binaries
//! installed on this machine, used whenever `DATABASE_URL` is unset.
//!
//! Invariants:
//! - The cluster lives under `$PAYCRON_HOME/pg`, listens on a Unix socket only
//!   (`listen_addresses = ''`), and is started on demand and left running for the next command
//!   (`paycron db stop` stops it).
//! - Any number of paycron processes may start at the same instant: initdb, start-up and the
//!   creation of the database happen under an exclusive file lock on `$PAYCRON_HOME/pg/lock`.
//! - `initdb` refuses to run as root, so when paycron runs as root the server runs as the
//!   unprivileged `postgres` user (setuid in the child process). That user must be able to
//!   traverse every parent of the data directory; when it cannot (a checkout inside root's
//!   private home), the data goes to a new `/var/tmp/paycron-<hash>-<random>` and
//!   `$PAYCRON_HOME/pg/location` records where. A new home never adopts a directory an
//!   earlier home at the same path left behind: that cluster's password went with the old home.
//! - The cluster is private to the user who runs paycron: its socket directory is 0700 and
//!   owned by the server's user, there is no TCP listener, the superuser has a generated
//!   password (SCRAM; kept 0600 in `$PAYCRON_HOME/pg/password`), and the server is started
//!   with a scrubbed environment (so it never holds `SQUARE_*`, `PAYCRON_*` or `DATABASE_URL`).
//!   A directory outside the home (the `/var/tmp` and `/tmp` fallbacks) is created exclusively
//!   and used only when it is a real directory (not a symlink), owned by the expected user and
//!   closed to everyone else. A cluster made by an older paycron with `trust` auth is given a
//!   password and switched to SCRAM the first time it is started.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The database the embedded cluster serves paycron from.
pub const DATABASE: &str = "paycron";
/// The superuser created by initdb (owns the schema, runs the migrations).
pub const SUPERUSER: &str = "postgres";
/// The login role every command but `migrate` uses, granted the runtime role.
pub const RUNTIME_LOGIN: &str = "paycron";
const PORT: u16 = 5432;
// sun_path is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 100;

/// What went wrong with the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries anywhere we look.
    #[error(
        "no PostgreSQL server binaries found (looked on PATH, in `pg_config --bindir` and under /usr/lib/postgresql/*/bin): install PostgreSQL (e.g. apt-get install postgresql), or set DATABASE_URL"
    )]
    NoBinaries,
    /// Running as root, but there is no unprivileged user to run the server as.
    #[error(
        "running as root and no unprivileged `postgres` user exists to run the embedded cluster: create one (useradd postgres) or set DATABASE_URL"
    )]
    NoServerUser,
    /// A filesystem step failed.
    #[error("embedded database: {what} {path}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The path involved.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A PostgreSQL tool failed.
    #[error("embedded database: {tool} failed ({status}); see {log}")]
    Tool {
        /// initdb or pg_ctl.
        tool: &'static str,
        /// Exit status.
        status: String,
        /// Where its output went.
        log: String,
    },
}

/// Module result.
pub type Result<T> = std::result::Result<T, EmbeddedError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + 'a {
    move |source| EmbeddedError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Server tuning for the cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterOptions {
    /// Turn off fsync and friends: for throw-away test clusters only.
    pub ephemeral: bool,
}

/// A local cluster under one home directory.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    options: ClusterOptions,
}

/// Creates `dir` exclusively (mode 0700), or accepts an existing one only when it is a real
/// directory (not a symlink), owned by `owner` (or this process's user) and closed to everyone
/// else: a predictable path in a shared directory is never followed into someone else's hands.
fn private_dir(dir: &Path, owner: Option<u32>) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("cannot create", dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io("cannot inspect", dir))?;
    let me = fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    let ok_owner = meta.uid() == me || Some(meta.uid()) == owner;
    if !meta.file_type().is_dir() || !ok_owner || meta.permissions().mode() & 0o022 != 0 {
        return Err(EmbeddedError::Io {
            what: "refusing to use",
            path: dir.display().to_string(),
            source: std::io::Error::other(
                "not a private directory of this user (a symlink, another owner, or writable by others): remove it",
            ),
        });
    }
    Ok(())
}

/// Creates a new directory `<prefix>-<random>` (mode 0700) that did not exist before.
fn fresh_dir(prefix: &str) -> Result<PathBuf> {
    loop {
        let dir = PathBuf::from(format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("cannot create", &dir)(e)),
        }
    }
}

/// Writes `text` to `path` only if no file is there yet, whole (written aside, then linked in
/// place). `Err` carries what is already recorded.
fn record_once(root: &Path, path: &Path, text: &str) -> std::result::Result<(), Result<String>> {
    let aside = root.join(format!(".record.{}", std::process::id()));
    let _ = fs::remove_file(&aside);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = written {
        let _ = fs::remove_file(&aside);
        return Err(Err(io("cannot write", &aside)(e)));
    }
    let linked = fs::hard_link(&aside, path);
    let _ = fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(fs::read_to_string(path).map_err(io("cannot read", path)))
        }
        Err(e) => Err(Err(io("cannot write", path)(e))),
    }
}

/// A pg_hba.conf line that trusts without a password.
fn trust_rule(line: &str) -> bool {
    !line.trim_start().starts_with('#') && line.split_whitespace().any(|w| w == "trust")
}

/// The unprivileged user's uid and gid, from /etc/passwd.
fn server_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == SUPERUSER)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// True when a process with `uid`/`gid` can traverse every ancestor of `path`.
fn traversable_by(path: &Path, uid: u32, gid: u32) -> bool {
    path.ancestors().skip(1).all(|dir| match fs::metadata(dir) {
        Ok(m) => {
            let mode = m.permissions().mode();
            if m.uid() == uid {
                mode & 0o100 != 0
            } else if m.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            }
        }
        Err(_) => false,
    })
}

fn short_hash(path: &Path) -> String {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// # Errors
/// [`EmbeddedError::NoBinaries`].
pub fn find_bindir() -> Result<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_all(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| has_all(p))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, p)| p)
        .ok_or(EmbeddedError::NoBinaries)
}

impl LocalCluster {
    /// Describes the cluster under `home` (nothing is created yet).
    ///
    /// # Errors
    /// [`EmbeddedError::NoServerUser`] when running as root with no `postgres` user;
    /// [`EmbeddedError::Io`] when the home cannot be created.
    pub fn new(home: &Path, options: ClusterOptions) -> Result<Self> {
        fs::create_dir_all(home).map_err(io("cannot create", home))?;
        let home = fs::canonicalize(home).map_err(io("cannot resolve", home))?;
        let root = home.join("pg");
        fs::create_dir_all(&root).map_err(io("cannot create", &root))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(io("cannot set permissions on", &root))?;
        let run_as = if is_root() {
            Some(server_user().ok_or(EmbeddedError::NoServerUser)?)
        } else {
            None
        };
        let location_file = root.join("location");
        let mut base = root.clone();
        if let Ok(recorded) = fs::read_to_string(&location_file) {
            base = PathBuf::from(recorded.trim());
        } else if let Some((uid, gid)) = run_as
            && !traversable_by(&root.join("data"), uid, gid)
        {
            let fresh = fresh_dir(&format!("/var/tmp/paycron-{}", short_hash(&root)))?;
            // Two processes starting in a new home at once: the first to record its directory
            // wins, the other uses that one and removes its own (still empty).
            match record_once(&root, &location_file, &fresh.display().to_string()) {
                Ok(()) => base = fresh,
                Err(recorded) => {
                    let _ = fs::remove_dir(&fresh);
                    base = PathBuf::from(recorded?.trim());
                }
            }
            private_dir(&base, Some(uid))?;
        }
        let mut socket_dir = base.join("run");
        if socket_dir.as_os_str().len() + 16 > MAX_SOCKET_PATH {
            socket_dir = PathBuf::from(format!("/tmp/paycron-{}", short_hash(&root)));
        }
        Ok(LocalCluster {
            data: base.join("data"),
            root,
            socket_dir,
            run_as,
            options,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The connection URL for `database` over the Unix socket, with the superuser's password
    /// once the cluster has one.
    pub fn url(&self, database: &str) -> String {
        let auth = match fs::read_to_string(self.password_file()) {
            Ok(pw) => format!("{SUPERUSER}:{}", pw.trim()),
            Err(_) => SUPERUSER.to_owned(),
        };
        format!(
            "postgres://{auth}@localhost:{PORT}/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// The runtime login role's URL for `database`.
    pub fn runtime_url(&self, database: &str) -> String {
        let auth = match fs::read_to_string(self.root.join("runtime-password")) {
            Ok(pw) => format!("{RUNTIME_LOGIN}:{}", pw.trim()),
            Err(_) => RUNTIME_LOGIN.to_owned(),
        };
        format!(
            "postgres://{auth}@localhost:{PORT}/{database}?host={}",
            self.socket_dir.display()
        )
    }

    /// The runtime login role's password, generated (0600) on first use. Safe when several
    /// processes ask at once: the file appears whole (written aside, then linked in place).
    ///
    /// # Errors
    /// [`EmbeddedError::Io`].
    pub fn runtime_password(&self) -> Result<String> {
        self.secret("runtime-password").map(|(pw, _)| pw)
    }

    /// The secret kept 0600 in `name` under the home, generated on first use; `true` when it was
    /// generated just now.
    fn secret(&self, name: &str) -> Result<(String, bool)> {
        let path = self.root.join(name);
        if let Ok(pw) = fs::read_to_string(&path)
            && !pw.trim().is_empty()
        {
            return Ok((pw.trim().to_owned(), false));
        }
        let pw = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        match record_once(&self.root, &path, &pw) {
            Ok(()) => Ok((pw, true)),
            Err(recorded) => Ok((recorded?.trim().to_owned(), false)),
        }
    }

    fn password_file(&self) -> PathBuf {
        self.root.join("password")
    }

    /// The superuser's password, generated (and kept 0600) on first use; `true` when it was
    /// generated just now.
    fn password(&self) -> Result<(String, bool)> {
        self.secret("password")
    }

    fn command(&self, bindir: &Path, tool: &str) -> Command {
        let mut cmd = Command::new(bindir.join(tool));
        // A scrubbed environment: the server inherits it, and paycron's own holds secrets.
        cmd.stdin(Stdio::null())
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid)
                .gid(gid)
                .env("HOME", &self.root)
                .current_dir("/");
        }
        cmd
    }

    fn give_to_server_user(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io("cannot chown", path))?;
        }
        Ok(())
    }

    /// True when the server answers on its socket (checked by the pid file and pg_ctl).
    ///
    /// # Errors
    /// [`EmbeddedError::NoBinaries`].
    pub fn is_running(&self) -> Result<bool> {
        if !self.data.join("PG_VERSION").exists() {
            return Ok(false);
        }
        let bindir = find_bindir()?;
        let status = self
            .command(&bindir, "pg_ctl")
            .args(["status", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("cannot run pg_ctl in", &bindir))?;
        Ok(status.success())
    }

    /// Initialises and starts the cluster if needed, under the home's lock. Safe to call from
    /// many processes at once.
    ///
    /// # Errors
    /// [`EmbeddedError`] for missing binaries, filesystem problems or a failing initdb/pg_ctl.
    pub fn ensure_running(&self) -> Result<()> {
        let bindir = find_bindir()?;
        let lock_path = self.root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("cannot open", &lock_path))?;
        lock.lock().map_err(io("cannot lock", &lock_path))?;
        let result = self.start_locked(&bindir);
        let _ = lock.unlock();
        result
    }

    /// Long on purpose: the cluster's start-up in order (initdb, configuration, start, wait), under one lock.
    fn start_locked(&self, bindir: &Path) -> Result<()> {
        let base = self.data.parent().unwrap_or(&self.root).to_path_buf();
        for dir in [&base, &self.socket_dir] {
            if dir.starts_with(&self.root) {
                fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
            } else {
                private_dir(dir, self.run_as.map(|(uid, _)| uid))?;
            }
            self.give_to_server_user(dir)?;
        }
        for dir in [&base, &self.socket_dir] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io("cannot set permissions on", dir))?;
        }
        let (password, generated) = self.password()?;
        let log = base.join("postgres.log");
        if generated && self.data.join("PG_VERSION").exists() && !self.uses_trust()? {
            // A cluster whose password file is gone: a new one would not open it (and is not
            // kept, so that the next start says the same).
            let _ = fs::remove_file(self.password_file());
            return Err(EmbeddedError::Io {
                what: "the superuser's password is lost for",
                path: self.data.display().to_string(),
                source: std::io::Error::other(
                    "its password file was removed: restore it, or move the data directory away to start a new cluster",
                ),
            });
        }
        if !self.data.join("PG_VERSION").exists() {
            // A new cluster is a new, empty database: say so and where, so that a command run
            // from another directory (another PAYCRON_HOME) is not silently a different world.
            tracing::info!(
                home = %self.root.display(),
                data = %self.data.display(),
                "creating a new embedded Postgres cluster (PAYCRON_HOME); `paycron db stop` stops it"
            );
            if self.data.exists() {
                // A half-finished initdb from a killed process: start over.
                fs::remove_dir_all(&self.data).map_err(io("cannot clear", &self.data))?;
            }
            let init_log = base.join("initdb.log");
            let out = File::create(&init_log).map_err(io("cannot create", &init_log))?;
            let err = out.try_clone().map_err(io("cannot open", &init_log))?;
            // The password reaches initdb in a file only the server's user can read, removed
            // right after.
            let pwfile = base.join(".initdb-password");
            let _ = fs::remove_file(&pwfile);
            {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&pwfile)
                    .map_err(io("cannot create", &pwfile))?;
                std::io::Write::write_all(&mut f, password.as_bytes())
                    .map_err(io("cannot write", &pwfile))?;
            }
            self.give_to_server_user(&pwfile)?;
            let status = self
                .command(bindir, "initdb")
                .arg("-D")
                .arg(&self.data)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth-local=scram-sha-256",
                    "--auth-host=reject",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .stdout(out)
                .stderr(err)
                .status()
                .map_err(io("cannot run initdb in", bindir));
            let _ = fs::remove_file(&pwfile);
            let status = status?;
            if !status.success() {
                return Err(EmbeddedError::Tool {
                    tool: "initdb",
                    status: status.to_string(),
                    log: init_log.display().to_string(),
                });
            }
        }
        if self.is_running()? {
            return self.secure_legacy(bindir, &password);
        }
        let mut opts = format!(
            "-c listen_addresses='' -c port={PORT} -c unix_socket_directories='{}' -c max_connections=400 -c shared_buffers=256MB -c max_wal_size=4GB -c checkpoint_timeout=15min",
            self.socket_dir.display()
        );
        if self.options.ephemeral {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let status = self
            .command(bindir, "pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("cannot run pg_ctl in", bindir))?;
        if !status.success() {
            return Err(EmbeddedError::Tool {
                tool: "pg_ctl start",
                status: status.to_string(),
                log: log.display().to_string(),
            });
        }
        self.secure_legacy(bindir, &password)
    }

    /// A cluster an older paycron made with `trust` auth: gives the superuser the password and
    /// switches every rule to SCRAM, then reloads. A no-op for a cluster made here.
    ///
    /// Long on purpose: one migration of an older cluster's layout, step by step, each step checked.
    fn secure_legacy(&self, bindir: &Path, password: &str) -> Result<()> {
        if !self.uses_trust()? {
            return Ok(());
        }
        let hba = self.data.join("pg_hba.conf");
        let text = fs::read_to_string(&hba).map_err(io("cannot read", &hba))?;
        let log = self.data.join("secure.log");
        let out = File::create(&log).map_err(io("cannot create", &log))?;
        // psql may live apart from the server binaries (a distribution's client package).
        let psql_dir = std::iter::once(bindir.to_path_buf())
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            )
            .chain(
                fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path().join("bin")),
            )
            .find(|d| d.join("psql").is_file())
            .ok_or(EmbeddedError::NoBinaries)?;
        let mut child = self
            .command(&psql_dir, "psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-h",
            ])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(out.try_clone().map_err(io("cannot open", &log))?)
            .stderr(out)
            .spawn()
            .map_err(io("cannot run psql in", bindir))?;
        // The password goes through stdin, never argv.
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(
                &mut stdin,
                format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n").as_bytes(),
            )
            .map_err(io("cannot write to psql for", &self.data))?;
        }
        let status = child.wait().map_err(io("cannot run psql in", bindir))?;
        if !status.success() {
            return Err(EmbeddedError::Tool {
                tool: "psql (setting the superuser's password)",
                status: status.to_string(),
                log: log.display().to_string(),
            });
        }
        let secured: String = text
            .lines()
            .map(|l| {
                if trust_rule(l) {
                    l.replace("trust", "scram-sha-256")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(&hba, secured + "\n").map_err(io("cannot write", &hba))?;
        let status = self
            .command(bindir, "pg_ctl")
            .arg("reload")
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("cannot run pg_ctl in", bindir))?;
        if !status.success() {
            return Err(EmbeddedError::Tool {
                tool: "pg_ctl reload",
                status: status.to_string(),
                log: self.data.display().to_string(),
            });
        }
        Ok(())
    }

    /// True when an older paycron's `trust` rules are still in pg_hba.conf.
    fn uses_trust(&self) -> Result<bool> {
        let hba = self.data.join("pg_hba.conf");
        let text = fs::read_to_string(&hba).map_err(io("cannot read", &hba))?;
        Ok(text.lines().any(trust_rule))
    }

    /// Stops the cluster if it runs (fast shutdown: open sessions are ended).
    ///
    /// # Errors
    /// [`EmbeddedError`] if pg_ctl fails.
    pub fn stop(&self) -> Result<bool> {
        if !self.is_running()? {
            return Ok(false);
        }
        let bindir = find_bindir()?;
        let status = self
            .command(&bindir, "pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("cannot run pg_ctl in", &bindir))?;
        if !status.success() {
            return Err(EmbeddedError::Tool {
                tool: "pg_ctl stop",
                status: status.to_string(),
                log: self.data.display().to_string(),
            });
        }
        Ok(true)
    }

    /// A one-line description for `paycron db status`.
    pub fn describe(&self) -> String {
        format!(
            "data {} socket {}",
            self.data.display(),
            self.socket_dir.display()
        )
    }
}

/// Drops and recreates `database` on the server behind `opts` (the demo's clean slate).
///
/// # Errors
/// [`super::StoreError`].
pub async fn recreate_database(
    opts: &sqlx::postgres::PgConnectOptions,
    database: &str,
) -> super::Result<()> {
    use sqlx::ConnectOptions;
    let mut conn = opts.clone().database("postgres").connect().await?;
    let quoted = database.replace('"', "\"\"");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
        .execute(&mut conn)
        .await?;
    Ok(())
}
