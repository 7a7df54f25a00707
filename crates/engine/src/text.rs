//! Text that came from outside (model output, file names, metadata) made safe for a terminal.

/// Removes control characters (C0, DEL, C1: every escape-sequence introducer) and the
/// bidirectional overrides that make a terminal show text in another order than it is, keeping
/// newlines and tabs. Borrows when there is nothing to remove (the common case).
#[must_use]
pub fn sanitize_for_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c != '\n'
            && c != '\t'
            && (c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c))
    };
    if s.chars().any(unsafe_char) {
        std::borrow::Cow::Owned(s.chars().filter(|&c| !unsafe_char(c)).collect())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The current UTC time as `YYYYmmdd-HHMMSS`.
#[must_use]
pub fn utc_stamp() -> String {
    utc_stamp_of(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// `secs` since the Unix epoch as `YYYYmmdd-HHMMSS` (UTC); calendar arithmetic by the `time`
/// crate.
#[must_use]
pub fn utc_stamp_of(secs: u64) -> String {
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "00000000-000000".to_string())
}

/// Today's UTC date as (year, month 1–12, day 1–31).
#[must_use]
pub fn utc_today() -> (i32, u8, u8) {
    let today = time::OffsetDateTime::now_utc().date();
    (today.year(), u8::from(today.month()), today.day())
}

/// A duration for people: `42s`, `3m07s`, `2h05m`, `1d03h`.
#[must_use]
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_are_removed() {
        assert_eq!(
            sanitize_for_terminal("a\x1b[31mb\x07c\u{9b}d\ne\tf\r\u{7f}\u{202e}g\u{2066}"),
            "a[31mbcd\ne\tfg"
        );
        assert!(matches!(
            sanitize_for_terminal("plain text"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn durations_read_at_a_glance() {
        let shown: Vec<String> = [42.0, 187.0, 7500.0, 97_200.0, -1.0]
            .into_iter()
            .map(duration)
            .collect();
        assert_eq!(shown, ["42s", "3m07s", "2h05m", "1d03h", "0s"]);
    }
}
