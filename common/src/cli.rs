//! The command line's small value parsers (`--for`, a PID), here rather than
//! in the binary so tests and fuzzers can reach them. Each returns a one-line
//! message for clap to print; none may panic, whatever the input.

use std::time::Duration;

/// The longest `--for` accepted. Anything longer is a typo or an attempt to
/// overflow the deadline arithmetic (`Instant + Duration` panics on overflow);
/// to stay attached without limit, leave `--for` out.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// `30s`, `500ms`, `2m`, `1h`, `1.5` (seconds), at most [`MAX_DURATION`].
/// Decimal arithmetic, no floats: `10701606219ms` is exactly that many ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || format!("bad duration {s:?} (e.g. 30s, 500ms, 5m)");
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let unit_ns: u128 = match unit.trim() {
        "" | "s" | "sec" => 1_000_000_000,
        "ms" => 1_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        u => return Err(format!("bad duration unit {u:?} (ms, s, m, h)")),
    };
    let too_long = || {
        format!(
            "bad duration {s:?}: at most {}h (leave --for out to stay until Ctrl-C)",
            MAX_DURATION.as_secs() / 3600
        )
    };
    // Leading zeros aside, more than 20 digits is more than any u64 of
    // nanoseconds; refuse before the arithmetic can overflow.
    let int = int.trim_start_matches('0');
    if int.len() > 20 {
        return Err(too_long());
    }
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    // Digits past the 18th cannot change the result by a nanosecond.
    let frac = &frac[..frac.len().min(18)];
    let part: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let ns = whole * unit_ns + part * unit_ns / 10u128.pow(frac.len() as u32);
    if ns == 0 {
        return Err(format!("bad duration {s:?}: must be more than 0"));
    }
    if ns > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    let secs = (ns / 1_000_000_000) as u64;
    Ok(Duration::new(secs, (ns % 1_000_000_000) as u32))
}

/// A process (or thread) id: a decimal number from 1 to 2^31-1.
pub fn parse_pid(s: &str) -> Result<i32, String> {
    let bad = |why: &str| format!("bad PID {s:?}: {why}");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("a process id is a decimal number"));
    }
    match s.parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        Ok(_) => Err(bad("process ids start at 1")),
        Err(_) => Err(bad("larger than any process id")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("8784h"), Ok(MAX_DURATION));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0.0000000001ms").is_err());
    }

    /// Found by tests/fuzz.rs: these panicked in Duration::from_secs_f64
    /// (`spinguard attach --for 99999999999999999999999h 1` exited 101), and
    /// `10701606219ms` came back a nanosecond short through f64.
    #[test]
    fn huge_durations_are_an_error_not_a_panic() {
        for s in [
            "99999999999999999999999h",
            "1e400",
            "18446744073709551616",
            "8785h",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        let long = "9".repeat(400);
        assert!(parse_duration(&long).is_err());
        assert!(parse_duration(&format!("{long}.5ms")).is_err());
        assert_eq!(
            parse_duration("10701606219ms"),
            Ok(Duration::from_millis(10_701_606_219))
        );
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
        assert!(parse_duration(".").is_err());
        assert!(parse_duration("1.2.3").is_err());
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid("1"), Ok(1));
        assert_eq!(parse_pid("2147483647"), Ok(i32::MAX));
        for s in ["0", "-1", "+5", " 5", "2147483648", "", "5x", "٣"] {
            assert!(parse_pid(s).is_err(), "{s:?}");
        }
    }
}
