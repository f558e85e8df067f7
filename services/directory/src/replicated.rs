//! Transaction ids of replicated writes.
//!
//! A request that carries an idempotency key (the `idempotency-key` gRPC
//! metadata, set into [`REQUEST`] by the server) gets an id derived from
//! it, so that a client retrying through another node after a node died
//! is answered with the original outcome and the change is applied once.
//! Other requests get a fresh random id.

use sha2::{Digest, Sha256};

tokio::task_local! {
    /// The idempotency scope of the request being served: a string that
    /// identifies the caller, the method and the client's key.
    pub static REQUEST: String;
}

/// Returns the transaction id of the current write and whether it comes
/// from the client's idempotency key.
pub fn tx_id() -> (String, bool) {
    match REQUEST.try_with(|r| r.clone()) {
        Ok(r) if !r.is_empty() => {
            let d = Sha256::digest(r.as_bytes());
            let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
            (format!("k{hex}"), true)
        }
        _ => {
            let n = crate::records::incarnation::fresh();
            let m = crate::records::incarnation::fresh();
            (format!("r{n:016x}{m:016x}"), false)
        }
    }
}
