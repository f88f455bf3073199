//! Sizes as people write them: `64KiB`, `256MiB`, `10GiB`, or a plain number
//! of bytes. KiB, MiB, GiB and TiB are powers of 1024; KB, MB, GB and TB are
//! powers of 1000, as their SI names say (so `256MB` is 256,000,000 bytes,
//! about 5% less than `256MiB`). A bare letter, `K`, `M`, `G` or `T`, is
//! binary, as in nginx, Varnish, Traffic Server and systemd configurations:
//! `512M` is `512MiB`. Units are case-insensitive and may follow a space.
//! Pure: no I/O.

/// Each unit and the bytes it stands for; the longest suffixes come first
/// so that `KiB` is not read as a number ending in `B`.
const UNITS: [(&str, u64); 13] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
];

/// The largest size accepted: TOML integers are signed 64-bit, and a size
/// must fit in the config file as well as on the command line.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// What a size looks like, for messages.
pub const EXPECTED_SIZE: &str = "a whole number of bytes or a size such as 64KiB, 256MiB or 10GiB (KiB and K = 1024 bytes, KB = 1000)";

/// Parses `64KiB`, `256 MiB`, `10GB`, `512M` or `65536` into bytes.
///
/// # Errors
/// What was expected, when `text` is not a size or is over [`MAX_SIZE`].
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let unit = unit.trim_start();
    let multiplier = if unit.is_empty() {
        Some(1)
    } else {
        UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|&(_, bytes)| bytes)
    };
    let (Some(multiplier), false) = (multiplier, number.is_empty()) else {
        return Err(format!("expected {EXPECTED_SIZE}"));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|&bytes| bytes <= MAX_SIZE)
        .ok_or_else(|| format!("too large; the largest size is {MAX_SIZE} bytes"))
}

/// Writes `bytes` in the largest binary unit that divides it exactly:
/// 65536 is `64KiB`, 1000 stays `1000`. `parse_size` reads it back.
pub fn format_size(bytes: u64) -> String {
    let binary = UNITS[..4]
        .iter()
        .rev()
        .find(|&&(_, unit)| bytes >= unit && bytes.is_multiple_of(unit));
    match binary {
        Some((name, unit)) => format!("{}{name}", bytes / unit),
        None => bytes.to_string(),
    }
}

/// A size in a message, as it would be written: the shorter of the
/// largest binary and the largest SI unit that divide it exactly (`64KiB`,
/// `10KB`, `512MB` rather than `500000KiB`); else, from 1 MiB, about so
/// many MiB or GiB (`about 18.9MiB`); else in bytes (`1536 bytes`, `1
/// byte`).
pub fn size_text(bytes: u64) -> String {
    let exact = |units: &[(&str, u64)]| {
        units
            .iter()
            .rev()
            .find(|&&(_, unit)| bytes >= unit && bytes.is_multiple_of(unit))
            .map(|(name, unit)| format!("{}{name}", bytes / unit))
    };
    match (exact(&UNITS[..4]), exact(&UNITS[4..8])) {
        (Some(binary), Some(si)) if si.len() < binary.len() => si,
        (Some(text), _) | (None, Some(text)) => text,
        (None, None) => {
            // The largest unit of which it is at least 1.0 once rounded.
            let about = UNITS[1..4].iter().rev().find_map(|&(name, unit)| {
                let amount = bytes as f64 / unit as f64;
                ((amount * 10.0).round() >= 10.0).then(|| format!("about {amount:.1}{name}"))
            });
            about.unwrap_or_else(|| format!("{bytes} byte{}", if bytes == 1 { "" } else { "s" }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units_are_powers_of_1024() {
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("10GiB"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn si_units_are_powers_of_1000() {
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("256MB"), Ok(256_000_000));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
    }

    #[test]
    fn a_bare_letter_is_binary() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("256 m"), Ok(256 << 20));
    }

    #[test]
    fn plain_numbers_and_bytes_are_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn units_ignore_case_and_may_follow_a_space() {
        assert_eq!(parse_size("64kib"), Ok(65536));
        assert_eq!(parse_size("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_size(" 1 gib "), Ok(1 << 30));
        assert_eq!(parse_size("5mb"), Ok(5_000_000));
    }

    #[test]
    fn anything_else_says_what_a_size_looks_like() {
        for bad in [
            "", "MiB", "-1", "1.5GiB", "12XB", "64Ki", "64KIBB", "ten", "64 KiB s", "+5", "M",
        ] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains("64KiB"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_past_the_toml_integer_range_are_refused() {
        assert_eq!(parse_size("8388607TiB"), Ok(8_388_607 << 40));
        assert!(
            parse_size("8388608TiB")
                .expect_err("too big")
                .contains("too large")
        );
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_size(&MAX_SIZE.to_string()), Ok(MAX_SIZE));
    }

    #[test]
    fn formatting_picks_the_largest_exact_binary_unit() {
        assert_eq!(format_size(65536), "64KiB");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        for bytes in [0, 1, 1024, 1536, 8192, 65536, 1 << 40, 123_456_789] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn sizes_in_messages_always_carry_a_unit() {
        assert_eq!(size_text(256 << 20), "256MiB");
        assert_eq!(size_text(10_000), "10KB");
        assert_eq!(size_text(1536), "1536 bytes");
        assert_eq!(size_text(1), "1 byte");
        assert_eq!(size_text(0), "0 bytes");
        assert_eq!(size_text(512_000_000), "512MB", "not 500000KiB");
        assert_eq!(size_text(1 << 30), "1GiB");
        assert_eq!(size_text(21 << 20), "21MiB");
        assert_eq!(size_text((21 << 20) * 9 / 10), "about 18.9MiB");
        assert_eq!(size_text((3 << 30) + 1), "about 3.0GiB");
        assert_eq!(size_text((1 << 30) - 1), "about 1.0GiB");
        assert_eq!(size_text(MAX_SIZE), "about 8388608.0TiB");
        assert_eq!(size_text((1 << 20) - 1), "about 1.0MiB");
        assert_eq!(size_text(900_001), "900001 bytes");
    }
}
