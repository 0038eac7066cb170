//! Cleaning text that comes from peers before it is committed or shown: control
//! characters (terminal escapes, newlines) are dropped and the length is bounded.

/// `s` without control characters, cut to at most `max` characters (not bytes, so a
/// multi-byte character is never split).
pub fn clean_text(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_drops_control_characters() {
        assert_eq!(
            clean_text("a\x1b[31mb\nc\td\u{7f}e\u{9b}f", 100),
            "a[31mbcdef"
        );
        assert_eq!(clean_text("plain", 100), "plain");
        assert_eq!(clean_text("", 10), "");
    }

    #[test]
    fn clean_text_bounds_characters_not_bytes() {
        assert_eq!(clean_text("abcdef", 3), "abc");
        assert_eq!(clean_text("ééééé", 2), "éé");
        assert_eq!(clean_text(&"x".repeat(5000), 1024).len(), 1024);
        // Control characters do not count toward the bound.
        assert_eq!(clean_text("\n\n\nabc", 2), "ab");
        assert_eq!(clean_text("abc", 0), "");
    }
}
