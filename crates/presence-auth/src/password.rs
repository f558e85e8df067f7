//! Salted slow hashes (argon2id, PHC string format) for passwords and
//! voicemail PINs. Hashing takes tens of milliseconds on purpose: call it
//! from a blocking thread.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use presence_core::{ApiError, ApiResult};
use rand_core::OsRng;

/// Cost parameters of the hash.
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
}

impl Default for HashCost {
    /// Returns OWASP's argon2id minimum: 19 MiB, 2 iterations.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

fn hasher(cost: HashCost) -> ApiResult<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| ApiError::Internal(format!("argon2 params: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Returns the PHC string of a salted argon2id hash of `secret`.
pub fn hash(secret: &str, cost: HashCost) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    hasher(cost)?
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2 hash: {e}")))
}

/// Returns whether `secret` matches the PHC string `phc`. A malformed or
/// empty hash never matches.
pub fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // The parameters are read from the PHC string itself.
        Ok(h) => Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hash_verify() -> ApiResult<()> {
        let cost = HashCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let h = hash("correct horse", cost)?;
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", ""));
        assert!(!verify("correct horse", "$argon2id$garbage"));
        let h2 = hash("correct horse", cost)?;
        assert_ne!(h, h2, "salted");
        Ok(())
    }
}
