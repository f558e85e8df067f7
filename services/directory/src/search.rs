//! Case-insensitive user search.
//!
//! Each user is indexed under the lowercased words of its first name,
//! last name, e-mail and extension (and the whole e-mail). A query
//! matches when every query word is a prefix of some indexed word, so
//! "jack man", "manning" and "jack.manning@" all find Jack Manning. The
//! index lives in the store (`I\0domain\0word\0user`), so a search reads
//! the candidates of one word by prefix scan instead of every user.

use presence_proto::v1;
use std::collections::BTreeSet;

/// Longest indexed word, in bytes; longer words are cut.
const MAX_WORD: usize = 64;

fn push(out: &mut BTreeSet<String>, w: &str) {
    let w = w.trim();
    if w.is_empty() {
        return;
    }
    let mut s = w.to_lowercase();
    if s.len() > MAX_WORD {
        let mut end = MAX_WORD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    out.insert(s);
}

fn split_words(out: &mut BTreeSet<String>, text: &str) {
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        push(out, w);
    }
}

/// Returns the indexed words of a user.
pub fn words(user: &v1::User) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    push(&mut out, &user.id);
    split_words(&mut out, &user.id);
    if let Some(p) = &user.profile {
        split_words(&mut out, &p.first_name);
        split_words(&mut out, &p.last_name);
        push(&mut out, &p.email);
        split_words(&mut out, &p.email);
    }
    out
}

/// Returns the lowercased words of a query, longest first (the longest
/// word is the most selective one to scan).
pub fn query_words(q: &str) -> Vec<String> {
    let mut v: Vec<String> = q
        .split_whitespace()
        .map(|w| w.to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    v.sort_by_key(|w| std::cmp::Reverse(w.len()));
    v.dedup();
    v
}

/// Returns whether every query word prefixes one of `words`.
pub fn matches(words: &BTreeSet<String>, query: &[String]) -> bool {
    query.iter().all(|q| {
        words
            .range(q.clone()..)
            .next()
            .is_some_and(|w| w.starts_with(q.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile names, e-mails and queries (as `ListUsers` takes them,
    /// after its 128-character check) never panic the index or the
    /// matcher, and stay within the index's bounds. Cases:
    /// `PRESENCE_FUZZ_CASES` (default 20 000).
    #[test]
    fn untrusted_names_and_queries_stay_within_the_index_bounds() {
        use presence_testkit::rng::{Rng, cases, seed};
        let mut r = Rng::new(seed() ^ 6);
        for _ in 0..cases(20_000) {
            let u = v1::User {
                id: r.hostile_string(70),
                profile: Some(v1::Profile {
                    first_name: r.hostile_string(200),
                    last_name: r.hostile_string(200),
                    email: r.hostile_string(260),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let ws = words(&u);
            assert!(ws.iter().all(|w| !w.is_empty() && w.len() <= MAX_WORD));
            let Ok(q) = presence_core::text::check("search", &r.hostile_string(140), 128) else {
                continue;
            };
            let query = query_words(&q);
            assert!(query.len() <= 64);
            assert!(
                query
                    .iter()
                    .all(|w| !w.is_empty() && !w.contains(char::is_whitespace))
            );
            let _ = matches(&ws, &query);
        }
    }

    fn jack() -> v1::User {
        v1::User {
            id: "1001".into(),
            profile: Some(v1::Profile {
                first_name: "Jack".into(),
                last_name: "Manning".into(),
                email: "jack.manning@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn test_queries() {
        let w = words(&jack());
        for q in [
            "jack",
            "JA",
            "man",
            "jack man",
            "1001",
            "10",
            "jack.manning@",
            "example",
        ] {
            assert!(matches(&w, &query_words(q)), "{q}");
        }
        for q in ["anning", "jill", "jack jill", "1002"] {
            assert!(!matches(&w, &query_words(q)), "{q}");
        }
    }

    #[test]
    fn test_query_words_longest_first() {
        assert_eq!(query_words(" Jo  Manning "), vec!["manning", "jo"]);
        assert!(query_words("   ").is_empty());
    }
}
