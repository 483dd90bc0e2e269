//! The wall clock, in the one unit the agent stores and sends: milliseconds since the Unix epoch.

/// Wall clock, ms since the Unix epoch (0 if the clock reads before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
