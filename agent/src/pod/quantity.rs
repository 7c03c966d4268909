//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `0.5`, `1e3`) as the numbers cgroups take.

/// Parses a quantity into its value in thousandths (milli-units), rounding up as Kubernetes does
/// when it converts to integers. `None` for malformed input.
pub fn parse_millis(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return None;
    }
    let (int_part, frac_part) = number
        .trim_start_matches('+')
        .split_once('.')
        .unwrap_or((number.trim_start_matches('+'), ""));
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = digits / 10^frac_len, then scaled by the suffix; keep everything in integers.
    let digits: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    let frac_len = frac_part.len() as u32;
    let (mul, div): (u128, u128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1_000_000, 1),
        "G" => (1000 * 1_000_000_000, 1),
        "T" => (1000 * 1_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (1000 * 10u128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    let denominator = div * 10u128.checked_pow(frac_len)?;
    Some((digits.checked_mul(mul)?).div_ceil(denominator))
}

/// Bytes for memory (`limits.memory`), rounded up to a whole byte.
pub fn parse_bytes(text: &str) -> Option<u64> {
    parse_millis(text)
        .map(|m| m.div_ceil(1000))
        .and_then(|b| u64::try_from(b).ok())
}

/// Millicores for CPU (`limits.cpu`).
pub fn parse_millicpu(text: &str) -> Option<u64> {
    parse_millis(text).and_then(|m| u64::try_from(m).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory() {
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("129e6"), Some(129_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("12345"), Some(12345));
        for bad in ["", "Mi", "12XB", "-1", "1.2.3"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_millicpu("500m"), Some(500));
        assert_eq!(parse_millicpu("0.5"), Some(500));
        assert_eq!(parse_millicpu("2"), Some(2000));
        assert_eq!(parse_millicpu("0.0001"), Some(1));
    }
}
