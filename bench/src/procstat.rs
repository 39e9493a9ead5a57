//! CPU time and resident memory from `/proc`, for "server CPU per packet" and "RSS per allocation".

use std::time::Instant;

/// Clock ticks per second of `/proc/*/stat` times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// user + system CPU seconds of a process (all its threads), or `None` when it is gone.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    process_user_system_s(pid).map(|(user, system)| user + system)
}

/// User and system (kernel) CPU seconds of a process, apart.
pub fn process_user_system_s(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / ticks_per_s(), stime / ticks_per_s()))
}

/// Resident set size in KiB.
pub fn process_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Busy CPU seconds of the whole machine (all cores), or of one core, from `/proc/stat`.
///
/// A core's figure includes the softirq work done on it, which on loopback is the
/// receiver's half of every send: the fair measure of a server pinned to that core.
pub fn busy_s(core: Option<usize>) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = match core {
        Some(n) => format!("cpu{n} "),
        None => "cpu ".to_string(),
    };
    let line = stat.lines().find_map(|l| l.strip_prefix(name.as_str()))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy / ticks_per_s())
}

/// A snapshot to subtract from a later one.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    /// The server's user and system seconds.
    server: Option<(f64, f64)>,
    me: f64,
    machine: f64,
    core: Option<f64>,
}

/// CPU used between two samples: by the server, by this tool, and by everything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub secs: f64,
    pub server_cpu_s: Option<f64>,
    /// The part of `server_cpu_s` spent in the kernel (system time).
    pub server_system_s: Option<f64>,
    pub tool_cpu_s: f64,
    pub other_cpu_s: f64,
    /// Busy seconds of the server's core (when it is pinned to one), softirq included.
    pub server_core_s: Option<f64>,
}

impl Sample {
    /// `core`: the core the server is pinned to, if any.
    pub fn take(server: Option<u32>, core: Option<usize>) -> Sample {
        Sample {
            at: Instant::now(),
            server: server.and_then(process_user_system_s),
            me: process_cpu_s(std::process::id()).unwrap_or(0.0),
            machine: busy_s(None).unwrap_or(0.0),
            core: core.and_then(|c| busy_s(Some(c))),
        }
    }

    pub fn usage_since(&self, earlier: &Sample) -> Usage {
        let (server, server_system) = match (self.server, earlier.server) {
            (Some((ua, sa)), Some((ub, sb))) => (Some(ua + sa - ub - sb), Some(sa - sb)),
            _ => (None, None),
        };
        let me = self.me - earlier.me;
        let machine = self.machine - earlier.machine;
        Usage {
            secs: (self.at - earlier.at).as_secs_f64(),
            server_cpu_s: server,
            server_system_s: server_system,
            tool_cpu_s: me,
            other_cpu_s: (machine - me - server.unwrap_or(0.0)).max(0.0),
            server_core_s: match (self.core, earlier.core) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
        }
    }
}

impl Usage {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "secs": round3(self.secs),
            "server_cpu_s": self.server_cpu_s.map(round3),
            "server_system_s": self.server_system_s.map(round3),
            "tool_cpu_s": round3(self.tool_cpu_s),
            "other_cpu_s": round3(self.other_cpu_s),
            "server_core_busy_s": self.server_core_s.map(round3),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
