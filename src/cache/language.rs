//! `Accept-Language` read as RFC 9110 §12.5.4 means it: the language a
//! request prefers, by weight. The cache uses it to let a stored response
//! in that language answer a request whose list is written differently
//! (see `key::Variant::selects`). Pure: no I/O.

/// The language tag an `Accept-Language` prefers strictly above every
/// other (RFC 9110 §12.4.2 weights, 1 when absent); `None` for a tie, a
/// wildcard, or nothing acceptable.
pub fn preferred<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let mut best: Option<(&[u8], u32)> = None;
    let mut tied = false;
    for item in lines.flat_map(|line| line.split(|&b| b == b',')) {
        let mut parts = item.split(|&b| b == b';');
        let tag = parts.next().unwrap_or_default().trim_ascii();
        if tag.is_empty() {
            continue;
        }
        let weight = parts
            .find_map(|param| {
                let param = param.trim_ascii();
                let value = param
                    .strip_prefix(b"q=")
                    .or_else(|| param.strip_prefix(b"Q="))?;
                Some(qvalue(value.trim_ascii()))
            })
            .unwrap_or(Some(1000))?;
        match best {
            Some((_, top)) if weight < top => {}
            Some((_, top)) if weight == top => tied = true,
            _ => {
                best = Some((tag, weight));
                tied = false;
            }
        }
    }
    let (tag, weight) = best?;
    (!tied && weight > 0 && tag != b"*").then_some(tag)
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths; `None` when malformed.
fn qvalue(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u32>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(value: &str) -> Option<&str> {
        preferred(std::iter::once(value.as_bytes()))
            .map(|tag| std::str::from_utf8(tag).expect("ascii"))
    }

    #[test]
    fn the_language_weighted_above_all_others_is_preferred() {
        assert_eq!(top("fr;q=0.5, de;q=1.0"), Some("de"));
        assert_eq!(top("en, de;q=0.9"), Some("en"));
        assert_eq!(top("en;q=0.5, de;q=0.5"), None, "a tie");
        assert_eq!(top("*, de;q=0.5"), None, "a wildcard");
        assert_eq!(top("de;q=0"), None, "nothing acceptable");
        assert_eq!(top("de;q=x"), None, "a malformed weight");
    }

    #[test]
    fn qvalues_have_three_decimals_at_most() {
        assert_eq!(qvalue(b"0.25"), Some(250));
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"1.5"), None);
        assert_eq!(qvalue(b"0.1234"), None);
    }
}
