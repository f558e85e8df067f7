//! `presencectl keys`: the token signing keys (list, add, retire).

use crate::common::{CtlResult, Out, status_err, utc};
use clap::Subcommand;
use presence_client::PresenceClient;
use presence_proto::v1;

/// Token signing keys.
#[derive(Subcommand, Debug)]
pub(crate) enum KeysCmd {
    /// List the keys: which one signs, which are retired.
    List,
    /// Add a key: it signs every token issued from now on; earlier keys
    /// go on verifying theirs.
    Add,
    /// Retire a key (an id from `keys list`, or `deployment`): every
    /// token it signed is refused from now on.
    Retire {
        /// The key's id.
        id: String,
    },
}

fn rows(keys: &[v1::SigningKey]) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| {
            vec![
                k.id.clone(),
                if k.signing {
                    "signing".into()
                } else if k.retired_at_ms != 0 {
                    "retired".into()
                } else {
                    "verifying".into()
                },
                utc(k.created_at_ms),
                k.added_by.clone(),
                utc(k.retired_at_ms),
                k.retired_by.clone(),
            ]
        })
        .collect()
}

const HEADERS: &[&str] = &["ID", "STATE", "ADDED", "BY", "RETIRED", "BY"];

pub(crate) async fn keys_cmd(c: &mut PresenceClient, out: &Out, cmd: KeysCmd) -> CtlResult<()> {
    match cmd {
        KeysCmd::List => {
            let r = c
                .auth
                .list_signing_keys(v1::ListSigningKeysRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&r, HEADERS, rows(&r.keys))
        }
        KeysCmd::Add => {
            let k = c
                .auth
                .add_signing_key(v1::AddSigningKeyRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&k, HEADERS, rows(std::slice::from_ref(&k)))
        }
        KeysCmd::Retire { id } => {
            let k = c
                .auth
                .retire_signing_key(v1::RetireSigningKeyRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&k, HEADERS, rows(std::slice::from_ref(&k)))
        }
    }
}
