//! Timestamps for records, and their RFC 3339 form.

use std::time::{SystemTime, UNIX_EPOCH};

/// `(wall_ns, mono_ns)`: nanoseconds since the Unix epoch, and CLOCK_MONOTONIC (the clock of
/// the kernel's `bpf_ktime_get_ns`, so daemon records and kernel actions can be ordered).
pub fn now() -> (u64, u64) {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let mono = u64::try_from(mono.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(mono.tv_nsec).unwrap_or(0);
    (wall, mono)
}

/// `wall_ns` as RFC 3339 in UTC with `digits` fractional digits (0 to 9).
pub fn rfc3339(wall_ns: u64, digits: u32) -> String {
    let secs = wall_ns / 1_000_000_000;
    let nanos = wall_ns % 1_000_000_000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    let digits = digits.min(9);
    if digits > 0 {
        let frac = nanos / 10u64.pow(9 - digits);
        out.push_str(&format!(".{frac:0width$}", width = digits as usize));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000, 3),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(1_709_251_199_123_456_789, 9),
            "2024-02-29T23:59:59.123456789Z"
        );
        assert_eq!(
            rfc3339(4_102_444_800_500_000_000, 1),
            "2100-01-01T00:00:00.5Z"
        );
    }

    #[test]
    fn now_is_plausible() {
        let (wall, mono) = now();
        assert!(wall > 1_600_000_000_000_000_000);
        assert!(mono > 0);
    }
}
