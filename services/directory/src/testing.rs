//! Shared set-up of the crate's unit tests: a directory on a temporary
//! store with cheap password hashing, and an administrator principal.

#![allow(clippy::unwrap_used)]

use crate::service::{Directory, DirectoryConfig};
use crate::store::Store;
use presence_auth::{DomainSet, Principal, TokenSigner, rights};
use std::sync::Arc;

/// A service principal with every right in every domain.
pub(crate) fn admin() -> Principal {
    Principal::Service {
        name: "ops".into(),
        domains: DomainSet::All,
        rights: vec![rights::ALL.into()],
    }
}

/// A directory over a fresh store in `dir` (in-process bus, a random
/// signing key, the cheapest password hashing).
pub(crate) fn directory(dir: &std::path::Path) -> (Directory, Arc<Store>) {
    let store = Arc::new(Store::open_unsynced(dir).unwrap());
    let cfg = DirectoryConfig {
        hash_cost: presence_auth::password::HashCost {
            memory_kib: 256,
            iterations: 1,
        },
        ..DirectoryConfig::default()
    };
    let d = Directory::new(
        store.clone(),
        Arc::new(presence_bus::InProcessBus::new(16)),
        TokenSigner::new(TokenSigner::generate_key()).unwrap(),
        cfg,
    )
    .unwrap();
    (d, store)
}
