//! Limits and checks for free-text fields.

use crate::error::{ApiError, ApiResult};

/// Longest name-like field (names, labels, models, caller-id name), in
/// characters.
pub const MAX_NAME: usize = 128;
/// Longest long-text field (address, greeting), in characters.
pub const MAX_TEXT: usize = 1024;
/// Most answering rules per user.
pub const MAX_ANSWERING_RULES: usize = 32;
/// Most line keys per phone.
pub const MAX_LINE_KEYS: usize = 256;
/// Most members (agents plus supervisors) per queue.
pub const MAX_QUEUE_MEMBERS: usize = 2000;
/// Shortest and longest password, in characters.
pub const PASSWORD_LEN: (usize, usize) = (8, 256);

/// Longest part of a refused value echoed in an error message.
pub const SHOWN_CHARS: usize = 64;

/// A refused value as an error message shows it: quoted and escaped, and
/// cut after [`SHOWN_CHARS`] characters (with its full size), so that
/// an error never grows with what a caller sent.
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// Returns whether `c` must not appear in stored or delivered text:
/// control characters (NUL, CR, LF, ESC, C1…) and the bidirectional
/// formatting characters that reorder what a reader sees (U+200E/F,
/// U+202A–U+202E, U+2066–U+2069).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Returns whether `s` contains a character of [`is_unsafe_char`].
pub fn has_unsafe_chars(s: &str) -> bool {
    s.chars().any(is_unsafe_char)
}

/// Checks a free-text field: at most `max` characters, none of
/// [`is_unsafe_char`]. Returns the trimmed value.
pub fn check(field: &str, value: &str, max: usize) -> ApiResult<String> {
    let v = value.trim();
    let n = v.chars().count();
    if n > max {
        return Err(ApiError::invalid(format!(
            "{field} is too long: {n} characters, at most {max}"
        )));
    }
    if has_unsafe_chars(v) {
        return Err(ApiError::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(v.to_owned())
}

/// Checks a password's length.
pub fn check_password(value: &str) -> ApiResult<()> {
    let n = value.chars().count();
    let (lo, hi) = PASSWORD_LEN;
    if n < lo || n > hi {
        return Err(ApiError::invalid(format!(
            "password must be {lo} to {hi} characters, got {n}"
        )));
    }
    Ok(())
}

/// Checks a voicemail PIN: 4 to 12 digits.
pub fn check_pin(value: &str) -> ApiResult<()> {
    if (4..=12).contains(&value.len()) && value.bytes().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ApiError::invalid("voicemail pin must be 4 to 12 digits"))
    }
}

/// Checks an external phone number: optional `+`, then 2 to 32 digits.
pub fn check_number(value: &str) -> ApiResult<String> {
    let v = value.trim();
    let digits = v.strip_prefix('+').unwrap_or(v);
    if (2..=32).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) {
        Ok(v.to_owned())
    } else {
        Err(ApiError::invalid(format!(
            "invalid external number {}: expected [+]digits",
            shown(value)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_text() {
        assert_eq!(check("name", "  Jack ", 10).as_deref(), Ok("Jack"));
        assert!(check("name", &"x".repeat(11), 10).is_err());
        assert!(check("name", "a\nb", 10).is_err());
        assert_eq!(check("name", "Zoë", 3).as_deref(), Ok("Zoë"));
    }

    #[test]
    fn test_passwords_pins_numbers() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_pin("1234").is_ok());
        assert!(check_pin("123").is_err());
        assert!(check_pin("12a4").is_err());
        assert!(check_number("+14155550100").is_ok());
        assert!(check_number("911").is_ok());
        assert!(check_number("+").is_err());
        assert!(check_number("555-0100").is_err());
    }
}
