//! Shared setup of the presence benchmarks: a directory with many users,
//! loaded through the real `Directory` API.

use presence_auth::password::HashCost;
use presence_auth::{DomainSet, Principal, TokenSigner, rights};
use presence_bus::InProcessBus;
use presence_directory::{Directory, DirectoryConfig, Store};
use presence_proto::v1;
use std::sync::Arc;

const FIRST: &[&str] = &[
    "Jack", "Jill", "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan",
    "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
    "Yvonne", "Zoë", "Åsa", "Noor", "Kenji", "Mei", "Raj", "Lucía", "Omar", "Priya", "Sven",
];
const LAST: &[&str] = &[
    "Manning", "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Nakamura", "García", "Müller", "Dubois", "Rossi", "Kowalski",
    "Singh", "Haddad", "Larsen", "Okafor",
];
const DEPTS: &[&str] = &[
    "Sales",
    "Support",
    "R&D",
    "Finance",
    "Operations",
    "Marketing",
    "Legal",
];

/// Returns the admin principal used by the benchmarks.
pub fn admin() -> Principal {
    Principal::Service {
        name: "bench".into(),
        domains: DomainSet::All,
        rights: vec![rights::ALL.into()],
    }
}

/// Opens a directory in `dir` (unsynced store: bulk load speed) and
/// creates domain `acme` with `n` users in 20 sites.
pub async fn loaded_directory(dir: &std::path::Path, n: usize) -> Directory {
    let store = Arc::new(Store::open_unsynced(dir).unwrap_or_else(|e| panic!("{e}")));
    let signer = TokenSigner::new(TokenSigner::generate_key()).unwrap_or_else(|e| panic!("{e}"));
    let cfg = DirectoryConfig {
        hash_cost: HashCost {
            memory_kib: 1024,
            iterations: 1,
        },
        ..DirectoryConfig::default()
    };
    let d = Directory::new(store, Arc::new(InProcessBus::new(16)), signer, cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let p = admin();
    d.create_domain(
        &p,
        v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for s in 0..20 {
        d.create_site(
            &p,
            v1::CreateSiteRequest {
                domain: "acme".into(),
                id: format!("site{s:02}"),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 0..n {
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / FIRST.len()) % LAST.len()];
        let kind = if i % 50 == 49 {
            v1::UserKind::CallQueue
        } else {
            v1::UserKind::Person
        };
        d.create_user(
            &p,
            v1::CreateUserRequest {
                domain: "acme".into(),
                id: format!("{}", 100_000 + i),
                kind: kind as i32,
                scope: 0,
                site: format!("site{:02}", i % 20),
                profile: Some(v1::Profile {
                    first_name: first.into(),
                    last_name: last.into(),
                    email: format!(
                        "{}.{}{}@acme.example.com",
                        first.to_lowercase(),
                        last.to_lowercase(),
                        i
                    )
                    .replace(['ë', 'å', 'í', 'ü', 'ç'], "x")
                    .replace(['Å'], "a"),
                    department: DEPTS[i % DEPTS.len()].into(),
                    caller_id_name: String::new(),
                }),
                password: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("user {i}: {e}"));
    }
    d
}
