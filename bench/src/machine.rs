//! What the figures were measured on: CPU model, cores, RAM, kernel, OS, rustc, git commit and
//! the load average, read from `/proc`, `/etc/os-release`, `rustc --version` and `git`. The
//! hostname is never read. A field that cannot be read says `unknown` (or is empty) rather than
//! failing the run.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The machine and the tree the suite ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of the first processor in `/proc/cpuinfo`.
    pub cpu: String,
    /// Cores this process may use (`available_parallelism`: affinity and cgroup quota).
    pub cores: usize,
    /// `MemTotal` from `/proc/meminfo`, in GiB.
    pub ram_gib: f64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `git rev-parse HEAD`.
    pub git_commit: String,
    /// Whether tracked files differ from the commit (`git status --porcelain -uno`).
    pub git_dirty: bool,
    /// 1, 5 and 15 minute load averages before the first benchmark.
    pub load_before: [f64; 3],
    /// The same after the last.
    pub load_after: [f64; 3],
}

impl Machine {
    /// Reads everything but `load_after` (set it with [`load_average`] at the end).
    pub fn read() -> Self {
        let load = load_average();
        Machine {
            cpu: read("/proc/cpuinfo")
                .and_then(|t| cpu_model(&t))
                .unwrap_or_else(|| "unknown".to_owned()),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            ram_gib: read("/proc/meminfo")
                .and_then(|t| mem_total_kib(&t))
                .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0)),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned()),
            os: read("/etc/os-release")
                .and_then(|t| os_pretty_name(&t))
                .unwrap_or_else(|| "unknown".to_owned()),
            rustc: command("rustc", &["--version"]).unwrap_or_else(|| "unknown".to_owned()),
            git_commit: command("git", &["rev-parse", "HEAD"]).unwrap_or_default(),
            git_dirty: command("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            load_before: load,
            load_after: load,
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Trimmed standard output of a command that succeeded.
fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The first `model name` (x86) or `Model`/`Hardware` (ARM) line of `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    })
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `PRETTY_NAME` of `/etc/os-release`, unquoted.
pub fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(loadavg: &str) -> Option<[f64; 3]> {
    let mut it = loadavg.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some([a, b, c]),
        _ => None,
    }
}

/// The load averages now (zeros when `/proc/loadavg` cannot be read).
pub fn load_average() -> [f64; 3] {
    read("/proc/loadavg")
        .and_then(|t| parse_loadavg(&t))
        .unwrap_or_default()
}

/// Busy and total jiffies of all CPUs from the first line of `/proc/stat` (`cpu user nice
/// system idle iowait irq softirq steal ...`); idle and iowait are the idle ones.
pub fn parse_cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The machine's CPU counters now, for [`busy_share`]; zeros when `/proc/stat` cannot be read.
pub fn cpu_jiffies() -> (u64, u64) {
    read("/proc/stat")
        .and_then(|t| parse_cpu_jiffies(&t))
        .unwrap_or_default()
}

/// The share of all CPUs that was busy between two [`cpu_jiffies`] readings, in percent.
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    100.0 * after.0.saturating_sub(before.0) as f64 / total as f64
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (RFC 3339 in UTC, whole seconds; the `time` crate).
/// A time past the year 9999 cannot be written so and gives the seconds as a number.
pub fn utc_timestamp(unix_s: u64) -> String {
    i64::try_from(unix_s)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_match_known_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_764_158_400), "2025-11-26T12:00:00Z");
        assert_eq!(utc_timestamp(1_795_709_710), "2026-11-26T16:15:10Z");
        assert_eq!(utc_timestamp(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn cpu_jiffies_count_idle_and_iowait_as_idle_and_ignore_guest_time() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 3 0\n";
        assert_eq!(parse_cpu_jiffies(stat), Some((160, 1000)));
        assert_eq!(parse_cpu_jiffies("cpu0 1 2 3 4\n"), None);
        assert_eq!(busy_share((160, 1000), (310, 1200)), 75.0);
        assert_eq!(busy_share((160, 1000), (160, 1000)), 0.0);
    }

    #[test]
    fn cpu_model_prefers_model_name_and_falls_back_for_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm =
            "processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(
            cpu_model(arm).as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn meminfo_os_release_and_loadavg_parse() {
        assert_eq!(
            mem_total_kib("MemTotal:       24586224 kB\nMemFree: 1 kB\n"),
            Some(24_586_224)
        );
        assert_eq!(
            os_pretty_name(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
            )
            .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_loadavg("0.52 1.07 2.50 3/312 4242\n"),
            Some([0.52, 1.07, 2.5])
        );
        assert_eq!(parse_loadavg("garbage"), None);
    }
}
