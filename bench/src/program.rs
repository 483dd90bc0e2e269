//! Small helpers the benchmark programs share (they take this crate as a dev-dependency, for
//! [`crate::line::Family`] as well): positional arguments with defaults, extra librdkafka
//! settings from `BENCH_CLIENT`, memory figures from `/proc/<pid>/status`, and the CPU time the
//! process has used ([`process_cpu`]).

/// The `i`-th command-line argument as a number, or `default` when it is missing or not one.
pub fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Extra librdkafka settings for experiments, from `BENCH_CLIENT="key=value,key=value"`, as
/// `"key" = "value"` lines for the agent's `[kafka.client]` table (empty when unset).
pub fn client_settings_from_env() -> String {
    client_settings(&std::env::var("BENCH_CLIENT").unwrap_or_default())
}

/// TOML keys for an experiment from the environment variable `var`, `;` between keys
/// (`BENCH_KAFKA="poll_interval_ms = 50;batch_max_records = 20000"`), one per line (empty when
/// unset).
pub fn toml_keys_from_env(var: &str) -> String {
    std::env::var(var)
        .map(|v| v.replace(';', "\n"))
        .unwrap_or_default()
}

fn client_settings(spec: &str) -> String {
    spec.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect()
}

/// Whose `/proc/.../status` to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// This process (`/proc/self`).
    This,
    /// Another process, by pid (e.g. a child agent).
    Pid(u32),
}

/// The kB figure of the `/proc/<pid>/status` line starting with `key` (`"VmRSS:"`,
/// `"VmHWM:"`); 0 when the file or the line cannot be read.
pub fn status_kib(process: Process, key: &str) -> u64 {
    let path = match process {
        Process::This => "/proc/self/status".to_owned(),
        Process::Pid(pid) => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| parse_status(&s, key))
        .unwrap_or(0)
}

fn parse_status(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// User plus system CPU time this process has used (all its threads, exited ones included),
/// from `getrusage(RUSAGE_SELF)`: microseconds, where `/proc/self/stat` counts 10 ms ticks.
pub fn process_cpu() -> std::time::Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we own; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return std::time::Duration::ZERO;
        }
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_counts_a_busy_loop() {
        let before = process_cpu();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = process_cpu().saturating_sub(before);
        assert!(
            used >= std::time::Duration::from_millis(10),
            "{used:?} ({x})"
        );
    }

    #[test]
    fn a_status_line_gives_its_kib() {
        let status = "Name:\tedge-agent\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status(status, "VmSwap:"), None);
    }

    #[test]
    fn client_settings_become_toml_lines() {
        assert_eq!(client_settings(""), "");
        assert_eq!(
            client_settings("linger.ms=20,socket.nagle.disable=false,junk"),
            "\"linger.ms\" = \"20\"\n\"socket.nagle.disable\" = \"false\"\n"
        );
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(status_kib(Process::This, "VmRSS:") > 0);
        assert_eq!(status_kib(Process::Pid(u32::MAX), "VmRSS:"), 0);
    }
}
