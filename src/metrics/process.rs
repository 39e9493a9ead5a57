//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, ...), read from `/proc/self` at scrape time. Linux only; elsewhere empty.

use super::Family;

/// Clock ticks per second of `/proc/*/stat` times; 100 on every Linux this runs on.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as f64 } else { 4096.0 }
}

/// Fields of `/proc/self/stat` after the command name, so field 3 (state) is index 0.
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some(limit.rlim_cur as f64)
}

pub fn families() -> Vec<Family> {
    let mut out = Vec::new();
    let Some(f) = stat_fields() else {
        return out;
    };
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let ticks = ticks_per_second();
    // utime and stime are fields 14 and 15, starttime 22, vsize 23, rss 24 (1-based).
    if let (Some(user), Some(system)) = (field(11), field(12)) {
        out.push(
            Family::counter(
                "process_cpu_seconds",
                "User and system CPU time spent in seconds.",
            )
            .value((user + system) / ticks),
        );
    }
    if let Some(rss) = field(21) {
        out.push(
            Family::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )
            .value(rss * page_size()),
        );
    }
    if let Some(vsize) = field(20) {
        out.push(
            Family::gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )
            .value(vsize),
        );
    }
    if let (Some(start), Some(boot)) = (field(19), boot_time()) {
        out.push(
            Family::gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
            )
            .value(boot + start / ticks),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push(
            Family::gauge("process_open_fds", "Open file descriptors.").value(fds.count() as f64),
        );
    }
    if let Some(max) = max_fds() {
        out.push(Family::gauge("process_max_fds", "Limit of open file descriptors.").value(max));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_memory_and_fds() {
        let names: Vec<_> = super::families().iter().map(|f| f.name).collect();
        for name in [
            "process_cpu_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
}
