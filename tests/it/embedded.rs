//! The embedded cluster is private to the user who runs paycron: other local users cannot
//! reach it, it asks for a password, and the server never holds paycron's secrets.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::process::Command;

use crate::helpers::{EmbeddedHome, paycron, run};

fn psql() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin")),
        )
        .map(|d| d.join("psql"))
        .find(|p| p.is_file())
        .expect("psql is installed with the server binaries")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_cluster_is_private_and_holds_no_secret() {
    let home = EmbeddedHome::new("paycron-private");
    let cli = || {
        let mut c = paycron(None, None);
        c.env("PAYCRON_HOME", home.path())
            .env("SQUARE_ACCESS_TOKEN", "test-token-never-in-the-server")
            .env("PAYCRON_OPS_ADDR", "127.0.0.1:1");
        c
    };
    let (code, _, err) = run(cli().args(["customers", "list"])).await;
    assert_eq!(code, 0, "{err}");
    // A new cluster is announced, with where it lives; an existing one is not.
    assert!(
        err.contains("creating a new embedded Postgres cluster"),
        "{err}"
    );
    let (code, _, err) = run(cli().args(["customers", "list"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("creating a new embedded"), "{err}");
    let (code, status, err) = run(cli().args(["db", "status"])).await;
    assert_eq!(code, 0, "{err}");
    // "running (data <dir> socket <dir>)"
    let words: Vec<&str> = status.split_whitespace().collect();
    let data = PathBuf::from(words[2]);
    let socket = PathBuf::from(words[4].trim_end_matches(')'));
    let (code, url, said) = run(cli().args(["db", "url"])).await;
    assert_eq!(code, 0);
    assert!(
        said.contains("runtime role"),
        "db url says which role: {said}"
    );
    assert!(
        url.starts_with("postgres://paycron:"),
        "the runtime login: {url}"
    );
    let stop = async || run(cli().args(["db", "stop"])).await;

    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        // The socket directory is closed to everyone but the server's user.
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o700,
            "{}",
            socket.display()
        );
        // A password is required, and `db url` carries it.
        assert!(url.contains('@'), "{url}");
        let no_password = Command::new(psql())
            .args(["-X", "-w", "-h"])
            .arg(&socket)
            .args(["-U", "postgres", "-d", "postgres", "-c", "select 1"])
            .env_clear()
            .output()
            .await
            .unwrap();
        assert!(
            !no_password.status.success(),
            "connected without a password"
        );
        // The server's environment holds none of paycron's settings or secrets.
        let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim();
        let environ = std::fs::read(Path::new("/proc").join(pid).join("environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        for secret in ["SQUARE_", "PAYCRON_", "DATABASE_URL", "test-token-never"] {
            assert!(
                !environ.contains(secret),
                "{secret} in the server's environment"
            );
        }
        // Another local user cannot even reach the socket.
        if is_root() {
            let other = Command::new(if Path::new("/usr/sbin/runuser").exists() {
                "/usr/sbin/runuser"
            } else {
                "/sbin/runuser"
            })
            .args(["-u", "nobody", "--"])
            .arg(psql())
            .args(["-X", "-w", "-h"])
            .arg(&socket)
            .args(["-U", "postgres", "-d", "postgres", "-c", "select 1"])
            .env_clear()
            .output()
            .await
            .unwrap();
            assert!(!other.status.success(), "user nobody connected");
            let why = String::from_utf8_lossy(&other.stderr);
            assert!(
                why.contains("Permission denied") || why.contains("password"),
                "{why}"
            );
        }
    }))
    .await;
    let (code, _, err) = stop().await;
    assert_eq!(code, 0, "{err}");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A home removed and made again at the same path starts a new cluster (the old one's
/// password went with the old home), and a cluster whose password file is gone is named as
/// such, every time, instead of failing to log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_home_at_an_old_path_is_a_new_cluster_and_a_lost_password_is_named() {
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("home");
    let cli = |args: &[&str]| {
        let mut c = paycron(None, None);
        c.env("PAYCRON_HOME", &home)
            .env("PAYCRON_OPS_ADDR", "127.0.0.1:1")
            .args(args);
        c
    };
    let location = || std::fs::read_to_string(home.join("pg/location")).ok();
    let mut made = Vec::new();

    let (code, _, err) = run(&mut cli(&["customers", "list"])).await;
    assert_eq!(code, 0, "{err}");
    made.extend(location());
    assert_eq!(run(&mut cli(&["db", "stop"])).await.0, 0);
    std::fs::remove_dir_all(&home).unwrap();

    let (code, _, err) = run(&mut cli(&["customers", "list"])).await;
    made.extend(location());
    let again = (code, err);
    assert_eq!(run(&mut cli(&["db", "stop"])).await.0, 0);
    std::fs::remove_file(home.join("pg/password")).unwrap();
    let lost = [
        run(&mut cli(&["customers", "list"])).await,
        run(&mut cli(&["customers", "list"])).await,
    ];
    for dir in &made {
        let _ = std::fs::remove_dir_all(dir.trim());
    }

    assert_eq!(again.0, 0, "{}", again.1);
    assert!(again.1.contains("creating a new embedded"), "{}", again.1);
    if made.len() == 2 {
        assert_ne!(
            made[0], made[1],
            "the old home's data directory was adopted"
        );
    }
    for (code, out, err) in lost {
        assert_ne!(code, 0, "{out}");
        assert_eq!(err.matches("\"level\":\"ERROR\"").count(), 1, "{err}");
        assert!(err.contains("password is lost"), "{err}");
    }
}
