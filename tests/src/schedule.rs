//! Fault schedules: a clock seed each run prints (so a failing schedule can be read back from
//! the log) and a tiny deterministic generator (xorshift64) to draw kill times and delays from.

/// A seed from the clock (odd, never zero).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// The next xorshift64 draw from `state` (which must not be zero).
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
