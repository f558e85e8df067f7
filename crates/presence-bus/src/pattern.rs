//! NATS subject syntax: validation and wildcard matching.

/// Returns whether `s` is a valid subject to publish on: non-empty
/// dot-separated tokens without whitespace or wildcards.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|c| c.is_ascii_whitespace())
        })
}

/// Returns whether `p` is a valid subscription pattern: like a subject,
/// but tokens may be `*`, and the last token may be `>`.
pub fn valid_pattern(p: &str) -> bool {
    if p.is_empty() {
        return false;
    }
    // No allocation: this runs on every publish.
    let mut tokens = p.split('.').peekable();
    while let Some(t) = tokens.next() {
        let last = tokens.peek().is_none();
        let ok = !t.is_empty()
            && !t.bytes().any(|c| c.is_ascii_whitespace())
            && (t != ">" || last)
            && (t.len() == 1 || (!t.contains('*') && !t.contains('>')));
        if !ok {
            return false;
        }
    }
    true
}

/// Returns whether `subject` matches `pattern` (`*` one token, `>` one or
/// more trailing tokens).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_matching() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*.c", "a.x.c"));
        assert!(!matches("a.*.c", "a.x.y.c"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c.d"));
        assert!(!matches("a.>", "a"));
        assert!(matches("*.>", "x.y"));
    }

    #[test]
    fn test_validation() {
        assert!(valid_subject("presence.v1.dir.acme"));
        assert!(!valid_subject("presence..dir"));
        assert!(!valid_subject("presence.*"));
        assert!(!valid_subject("a b"));
        assert!(valid_pattern("presence.v1.dir.*"));
        assert!(valid_pattern("presence.>"));
        assert!(!valid_pattern("presence.>.x"));
        assert!(!valid_pattern("pre*sence"));
        assert!(!valid_pattern(""));
    }
}
