//! Gateway API durations (GEP-2257: `1h30m`, `500ms`), as route timeouts and
//! the `agimo.dev/wait-timeout` annotation write them.

use std::time::Duration;

/// Parses a Gateway API duration, to the millisecond (the format's
/// precision). Callers say what the value is for, and what zero means.
pub fn parse(value: &str) -> Result<Duration, String> {
    let d = value.parse::<gateway_api::Duration>().map_err(|e| e.to_string())?;
    Ok(Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_api_durations_parse_and_others_do_not() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert!(parse("soon").is_err());
        assert!(parse("1.5s").is_err(), "GEP-2257 has no fractions");
    }
}
