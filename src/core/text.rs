//! Text that came from outside (model output, file names, metadata) made safe for a terminal.

/// Removes control characters and escape-sequence introducers, keeping newlines and tabs.
#[must_use]
pub fn sanitize_for_terminal(s: &str) -> String {
    s.chars()
        .filter(|&c| {
            c == '\n' || c == '\t' || !(c.is_control() || ('\u{80}'..='\u{9f}').contains(&c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_are_removed() {
        assert_eq!(
            sanitize_for_terminal("a\x1b[31mb\x07c\u{9b}d\ne\tf\r"),
            "a[31mbcd\ne\tf"
        );
    }
}
