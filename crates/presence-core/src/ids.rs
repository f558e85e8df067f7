//! Validated identifiers. Construct them with `parse` at the edge; inside
//! the services they are known to be well formed.

use crate::error::{ApiError, ApiResult};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        pub struct $name(String);

        impl $name {
            /// Returns the id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Returns the owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A domain (tenant) id: `[a-z0-9][a-z0-9-]{0,62}`. It is always a
    /// single NATS subject token (no dots, no wildcards, no spaces).
    DomainId
);
id_type!(
    /// A user id, extension-like: `[A-Za-z0-9_-]{1,64}`.
    UserId
);
id_type!(
    /// A site id: `[A-Za-z0-9_-]{1,64}`.
    SiteId
);
id_type!(
    /// A MAC address in canonical form: 12 lowercase hex digits.
    Mac
);
id_type!(
    /// An e-mail address, trimmed, with a lowercased domain part.
    Email
);

impl DomainId {
    /// Parses a domain slug.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::invalid(format!(
                "invalid domain id {}: expected [a-z0-9][a-z0-9-]{{0,62}}",
                crate::text::shown(s)
            )))
        }
    }
}

fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

impl UserId {
    /// Parses a user id.
    pub fn parse(s: &str) -> ApiResult<Self> {
        if token_ok(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::invalid(format!(
                "invalid user id {}: expected [A-Za-z0-9_-]{{1,64}}",
                crate::text::shown(s)
            )))
        }
    }
}

impl SiteId {
    /// Parses a site id.
    pub fn parse(s: &str) -> ApiResult<Self> {
        if token_ok(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::invalid(format!(
                "invalid site id {}: expected [A-Za-z0-9_-]{{1,64}}",
                crate::text::shown(s)
            )))
        }
    }
}

impl Mac {
    /// Parses a MAC address written as `aa:bb:cc:dd:ee:ff`,
    /// `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` or `aabbccddeeff`, in any
    /// case, and returns its canonical form. The all-zero and broadcast
    /// addresses are rejected.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let bad = || {
            ApiError::invalid(format!(
                "invalid mac {}: expected 12 hex digits, optionally separated by ':', '-' or '.'",
                crate::text::shown(s)
            ))
        };
        let t = s.trim();
        let hex: String = match t.len() {
            12 => t.to_owned(),
            17 => {
                let sep = t.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(bad());
                }
                for (i, c) in t.bytes().enumerate() {
                    if i % 3 == 2 && c != sep {
                        return Err(bad());
                    }
                }
                t.bytes()
                    .enumerate()
                    .filter(|(i, _)| i % 3 != 2)
                    .map(|(_, c)| c as char)
                    .collect()
            }
            14 => {
                for (i, c) in t.bytes().enumerate() {
                    if i % 5 == 4 && c != b'.' {
                        return Err(bad());
                    }
                }
                t.bytes()
                    .enumerate()
                    .filter(|(i, _)| i % 5 != 4)
                    .map(|(_, c)| c as char)
                    .collect()
            }
            _ => return Err(bad()),
        };
        if hex.len() != 12 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let hex = hex.to_ascii_lowercase();
        if hex == "000000000000" || hex == "ffffffffffff" {
            return Err(ApiError::invalid(format!(
                "invalid mac {}: not a device address",
                crate::text::shown(s)
            )));
        }
        Ok(Self(hex))
    }

    /// Returns the MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn colon_form(&self) -> String {
        let b = self.0.as_bytes();
        b.chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl Email {
    /// Parses an e-mail address: one `@`, a non-empty local part of at
    /// most 64 bytes, and a dotted host name; 254 bytes at most.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let t = s.trim();
        let bad = || ApiError::invalid(format!("invalid email {}", crate::text::shown(s)));
        if t.len() > 254 {
            return Err(bad());
        }
        let (local, host) = t.split_once('@').ok_or_else(bad)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&c))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = host.split('.').collect();
        let host_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        if !local_ok || !host_ok {
            return Err(bad());
        }
        Ok(Self(format!("{local}@{}", host.to_ascii_lowercase())))
    }
}

/// Checks a list call's page token: empty (first page) or what `parse`
/// accepts (the id the previous page ended with). Anything else is
/// `InvalidArgument("invalid page_token")`, never used as a raw cursor.
pub fn check_page_token<T>(
    token: &str,
    parse: impl FnOnce(&str) -> crate::ApiResult<T>,
) -> crate::ApiResult<()> {
    if token.is_empty() || parse(token).is_ok() {
        Ok(())
    } else {
        Err(crate::ApiError::invalid("invalid page_token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_domain_ids() {
        for ok in ["acme", "a", "0", "acme-corp", "a1-b2", &"a".repeat(63)] {
            assert!(DomainId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "Acme",
            "acme.com",
            "ac me",
            "acme*",
            "acme>",
            "acme_corp",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(DomainId::parse(bad), Err(ApiError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn test_user_and_site_ids() {
        for ok in ["1001", "alice", "Bob_2", "q-sales", &"x".repeat(64)] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
            assert!(SiteId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a b", "a*", "a>", "é", &"x".repeat(65)] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
            assert!(SiteId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_mac_forms_normalize_to_one() {
        for form in [
            "00:1A:2b:3C:4d:5E",
            "00-1a-2b-3c-4d-5e",
            "001a.2b3c.4d5e",
            "001A2B3C4D5E",
            " 001a2b3c4d5e ",
        ] {
            assert_eq!(
                Mac::parse(form).map(Mac::into_string).as_deref(),
                Ok("001a2b3c4d5e")
            );
        }
        let mac = Mac::parse("001a2b3c4d5e").map(|m| m.colon_form());
        assert_eq!(mac.as_deref(), Ok("00:1a:2b:3c:4d:5e"));
    }

    #[test]
    fn test_mac_rejects_malformed() {
        for bad in [
            "",
            "001a2b3c4d5",
            "001a2b3c4d5e0",
            "00:1a:2b:3c:4d-5e",
            "00:1a:2b:3c:4d:5g",
            "001a:2b3c:4d5e",
            "000000000000",
            "ff:ff:ff:ff:ff:ff",
            "zz1a2b3c4d5e",
        ] {
            assert!(Mac::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_emails() {
        assert_eq!(
            Email::parse("Jack.Manning@Example.COM")
                .map(Email::into_string)
                .as_deref(),
            Ok("Jack.Manning@example.com")
        );
        for bad in [
            "",
            "jack",
            "@example.com",
            "jack@",
            "jack@example",
            "jack@@example.com",
            "ja ck@example.com",
            ".jack@example.com",
            "jack..m@example.com",
            "jack@-example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
