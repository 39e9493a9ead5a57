//! The wall clock, in the one unit credentials and tokens count by: seconds since the Unix
//! epoch. The sans-IO cores never call it; their callers pass the time in.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
