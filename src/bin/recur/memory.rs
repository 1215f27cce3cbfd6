//! Peak-memory estimates checked before a command allocates: a run that will not fit is refused
//! with one line giving the estimate and the limit, instead of being killed or aborted part-way.
//!
//! The limit is `--max-memory` when given, otherwise the `MemAvailable` line of `/proc/meminfo`
//! (no check where that file does not exist). Each command's estimate is an upper bound of its
//! peak resident memory measured over a range of sizes, from what its arguments make it allocate.

/// A few mebibytes of memory per thread, the binary and the allocator's slack.
pub const BASE: u64 = 48 << 20;

/// Parses a size: a number of bytes, or a number with a suffix K, M, G or T (powers of 1024;
/// `KiB`, `MB`... are read the same), e.g. `512M` or `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 800M, 4G, 1000000)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let scale = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("`{s}` has an unknown unit (use K, M, G or T)")),
    };
    let bytes = value * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(bytes as u64)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A size for people: `1.23 GiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", (b / (1u64 << 20) as f64).ceil())
    }
}

/// Refuses `estimate` bytes when it exceeds `max` (or, without `max`, the available memory).
pub fn check(command: &str, estimate: u64, max: Option<u64>) -> Result<(), String> {
    let (limit, source) = match max {
        Some(m) => (m, "--max-memory"),
        None => match available() {
            Some(a) => (a, "available memory (MemAvailable)"),
            None => return Ok(()),
        },
    };
    if estimate > limit {
        return Err(format!(
            "{command} would need about {} of memory but the limit is {} ({source}); use \
             smaller sizes, or --max-memory to set the limit",
            human(estimate),
            human(limit)
        ));
    }
    Ok(())
}

/// Sums byte counts given as `f64` products (sizes too large for `u64` saturate).
pub fn bytes(x: f64) -> u64 {
    if x.is_finite() && x < u64::MAX as f64 {
        x.max(0.0) as u64
    } else {
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2 KB").unwrap(), 2048);
        for bad in ["", "x", "4Q", "-1G", "0", "1e999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_check_names_the_estimate_and_the_limit() {
        assert!(check("x", 10, Some(10)).is_ok());
        let e = check("recur demo", 3 << 30, Some(1 << 30)).unwrap_err();
        assert!(e.contains("3.00 GiB") && e.contains("1.00 GiB") && e.contains("--max-memory"));
        assert_eq!(e.lines().count(), 1);
        assert_eq!(bytes(f64::INFINITY), u64::MAX);
    }
}
