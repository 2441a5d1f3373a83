/// Milliseconds since the Unix epoch by this machine's clock (leases and schedules of the
/// embedded and in-memory stores use it; the Redis store uses the server's clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
