//! A process's CPU time and memory as Linux reports them in `/proc/<pid>` (`self` for this
//! one): the metrics' process gauges and the benchmark's figures read them here. `None` where
//! `/proc` cannot say (another OS, a process gone).

/// User + system CPU seconds of `pid`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux); the
    // command name (field 2) may hold spaces, so fields count from its closing ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// A `/proc/<pid>/status` memory line (`VmRSS`, `VmHWM`: the peak), in bytes.
pub fn memory_bytes(pid: &str, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0)
}
