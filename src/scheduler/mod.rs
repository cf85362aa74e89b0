//! The daemon's own schedule: `schedules/*.toml` → validated job specs.
//!
//! Each `[[job]]` has a unique `name`, a `task` (bill-due | recover | sync-cards | reconcile), a UTC
//! `cron` expression with a seconds field, and `enabled` (default true). Anything wrong —
//! unknown task or key, bad cron, duplicate name, bad TOML — is refused at start-up with one
//! line naming the file, the line and the reason.
//!
//! tokio-cron-scheduler only *ticks* these tasks (see [`daemon`]): what is due is decided by
//! the database, singletons take a Postgres lock, and draining is ours.

pub mod daemon;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

/// A task the daemon (and `run-once`) can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Charge everything due.
    BillDue,
    /// Finish charges whose owner died or whose lease expired.
    Recover,
    /// Pull customers and cards from Square (singleton).
    SyncCards,
    /// Square's payments against the ledger (singleton).
    Reconcile,
    /// Send due outbound webhook deliveries.
    DeliverWebhooks,
    /// Move enrollments at the counter along: expire unpaid links, announce late cards, and
    /// ask Square about sales whose callback was lost and cards whose webhook never came.
    Enrollments,
}

impl TaskKind {
    /// The task's name in files, logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskKind::BillDue => "bill-due",
            TaskKind::Recover => "recover",
            TaskKind::SyncCards => "sync-cards",
            TaskKind::Reconcile => "reconcile",
            TaskKind::DeliverWebhooks => "deliver-webhooks",
            TaskKind::Enrollments => "enrollments",
        }
    }

    /// Whether only one replica may run it per tick.
    pub fn singleton(&self) -> bool {
        matches!(self, TaskKind::SyncCards | TaskKind::Reconcile)
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bill-due" => Ok(TaskKind::BillDue),
            "recover" => Ok(TaskKind::Recover),
            "sync-cards" => Ok(TaskKind::SyncCards),
            "reconcile" => Ok(TaskKind::Reconcile),
            "deliver-webhooks" => Ok(TaskKind::DeliverWebhooks),
            "enrollments" => Ok(TaskKind::Enrollments),
            other => Err(format!(
                "unknown task {other:?} (expected bill-due, recover, sync-cards, reconcile, deliver-webhooks or enrollments)"
            )),
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// What it runs.
    pub task: TaskKind,
    /// UTC cron expression with seconds.
    pub cron: String,
    /// Whether it is scheduled.
    pub enabled: bool,
    /// Where it was defined (`file:line`).
    pub origin: String,
}

/// A schedule file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleFileError {
    /// Invalid content.
    #[error("{file}:{line}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Unreadable file or directory.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    job: Vec<Spanned<RawJob>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    task: Spanned<String>,
    cron: Spanned<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The longest gap between the next few firings of a cron expression (seconds first), if it
/// parses.
pub fn interval(expr: &str) -> Option<std::time::Duration> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .ok()?;
    let mut at = chrono::Utc::now();
    let mut longest = chrono::Duration::zero();
    for _ in 0..12 {
        let next = cron.find_next_occurrence(&at, false).ok()?;
        longest = longest.max(next - at);
        at = next;
    }
    longest.to_std().ok()
}

/// Checks a cron expression: six or seven fields (seconds first), parseable by the scheduler.
pub fn check_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "cron {expr:?} has {fields} fields; expected 6 (sec min hour day month weekday), e.g. \"*/15 * * * * *\""
        ));
    }
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| format!("cron {expr:?} does not parse: {e}"))
}

/// Parses one schedule file's text.
///
/// # Errors
/// [`ScheduleFileError::Invalid`] with the line of the problem.
pub fn parse(file: &str, text: &str) -> Result<Vec<JobSpec>, ScheduleFileError> {
    let invalid = |offset: usize, reason: String| ScheduleFileError::Invalid {
        file: file.to_owned(),
        line: line_of(text, offset),
        reason,
    };
    let shape: FileShape = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        invalid(offset, e.message().trim().to_owned())
    })?;
    let mut jobs = Vec::new();
    for spanned in shape.job {
        let job = spanned.get_ref();
        let task: TaskKind = job
            .task
            .get_ref()
            .parse()
            .map_err(|e| invalid(job.task.span().start, e))?;
        check_cron(job.cron.get_ref()).map_err(|e| invalid(job.cron.span().start, e))?;
        let name = job.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(invalid(job.name.span().start, "job name is empty".into()));
        }
        jobs.push(JobSpec {
            name,
            task,
            cron: job.cron.get_ref().clone(),
            enabled: job.enabled,
            origin: format!("{file}:{}", line_of(text, job.name.span().start)),
        });
    }
    Ok(jobs)
}

/// The schedule shipped in `schedules/default.toml`, built in: what `paycron run` ticks when
/// `PAYCRON_SCHEDULES` is unset and there is no `schedules/` where it runs.
///
/// # Errors
/// Never for the shipped file (a test parses it); [`ScheduleFileError`] otherwise.
pub fn built_in() -> Result<Vec<JobSpec>, ScheduleFileError> {
    parse(
        "built-in schedules/default.toml",
        include_str!("../../schedules/default.toml"),
    )
}

/// Where [`resolve`] takes the schedules from, in words for the start-up line.
pub fn source(configured: Option<&Path>) -> String {
    match configured {
        Some(path) => format!("{} (PAYCRON_SCHEDULES)", path.display()),
        None if Path::new("schedules").exists() => "schedules/ in the working directory".to_owned(),
        None => "the built-in default (schedules/default.toml as shipped)".to_owned(),
    }
}

/// The schedules the daemon runs: `configured` when set (a file or a directory), else
/// `schedules/` in the working directory when it exists, else [`built_in`].
///
/// # Errors
/// [`ScheduleFileError`] naming the file and line.
pub fn resolve(configured: Option<&Path>) -> Result<Vec<JobSpec>, ScheduleFileError> {
    match configured {
        Some(path) => load(path),
        None if Path::new("schedules").exists() => load(Path::new("schedules")),
        None => built_in(),
    }
}

/// Loads a schedule file, or every `*.toml` in a directory (sorted), refusing duplicate names
/// across files.
///
/// # Errors
/// [`ScheduleFileError`].
pub fn load(path: &Path) -> Result<Vec<JobSpec>, ScheduleFileError> {
    let io = |p: &Path, e: std::io::Error| ScheduleFileError::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut all: Vec<JobSpec> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| io(&f, e))?;
        let name = f.display().to_string();
        for job in parse(&name, &text)? {
            if let Some(first) = all.iter().find(|j| j.name == job.name) {
                let (file, line) = job.origin.rsplit_once(':').unwrap_or((&name, "1"));
                return Err(ScheduleFileError::Invalid {
                    file: file.to_owned(),
                    line: line.parse().unwrap_or(1),
                    reason: format!(
                        "duplicate job name {:?} (first defined at {})",
                        job.name, first.origin
                    ),
                });
            }
            all.push(job);
        }
    }
    if all.iter().filter(|j| j.enabled).count() == 0 {
        return Err(ScheduleFileError::Io {
            path: path.display().to_string(),
            reason: "no enabled [[job]] found".into(),
        });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_loads() {
        let jobs = load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schedules"))).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bill-due",
                "recover",
                "sync-cards",
                "reconcile",
                "deliver-webhooks",
                "enrollments"
            ]
        );
        assert_eq!(jobs[0].cron, "*/15 * * * * *");
    }

    #[test]
    fn refusals_name_file_line_and_reason() {
        let cases = [
            (
                "[[job]]\nname = \"a\"\ntask = \"mine-bitcoin\"\ncron = \"* * * * * *\"\n",
                "f.toml:3: unknown task",
            ),
            (
                "[[job]]\nname = \"a\"\ntask = \"recover\"\ncron = \"* * * * *\"\n",
                "f.toml:4: cron \"* * * * *\" has 5 fields",
            ),
            (
                "[[job]]\nname = \"a\"\ntask = \"recover\"\ncron = \"61 * * * * *\"\n",
                "f.toml:4: cron \"61 * * * * *\" does not parse",
            ),
            (
                "[[job]]\nname = \"a\"\ntask = \"recover\"\ncron = \"* * * * * *\"\ncolour = \"red\"\n",
                "f.toml:5: unknown field `colour`",
            ),
            (
                "[[job]]\nname = \"a\"\ntask = \"recover\"\n",
                "f.toml:1: missing field `cron`",
            ),
            ("[[job]\n", "f.toml:1:"),
        ];
        for (text, expect) in cases {
            let err = parse("f.toml", text).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("paycron-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[job]]\nname = \"x\"\ntask = \"recover\"\ncron = \"* * * * * *\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.toml"),
            "\n[[job]]\nname = \"x\"\ntask = \"bill-due\"\ncron = \"* * * * * *\"\n",
        )
        .unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("b.toml:3: duplicate job name \"x\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
