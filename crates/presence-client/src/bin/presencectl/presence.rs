//! Presence commands (placeholder while the split compiles).

use clap::Subcommand;
use presence_client::PresenceClient;

use crate::common::*;

/// Live presence.
#[derive(Subcommand, Debug)]
pub(crate) enum PresenceCmd {}

/// Runs a `presence` command.
pub(crate) async fn run(_c: &mut PresenceClient, _out: &Out, cmd: PresenceCmd) -> CtlResult<()> {
    match cmd {}
}
