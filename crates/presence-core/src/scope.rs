//! Scopes, user kinds and the capability table.
//!
//! The table in [`Scope::capabilities`] is the single source of truth; the
//! same table is printed in `docs/scopes.md` and checked by a unit test.

use serde::Serialize;

/// The permission level of a user inside its domain, lowest first: the
/// derived order is the rank used for "cannot hand out a scope above
/// one's own".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// No portal access, no voicemail.
    SimpleUser,
    /// Portal, voicemail and softphone.
    BasicUser,
    /// Basic user that logs in and out of call queues.
    CallCenterAgent,
    /// Monitors and manages the agents of the queues it supervises.
    CallCenterSupervisor,
    /// Office manager limited to one site; cannot create time frames.
    SiteManager,
    /// Manages every user and inventory item of its domain.
    OfficeManager,
}

/// Something a scope allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Log in to the portal and the API with a password.
    Portal,
    /// Have a voicemail box.
    Voicemail,
    /// Use the web/mobile softphone.
    Softphone,
    /// Edit one's own profile, answering rules, voicemail and presence
    /// settings.
    ManageSelf,
    /// Log in and out of the call queues one is an agent of.
    QueueLogin,
    /// Monitor the agents of the queues one supervises.
    MonitorQueueAgents,
    /// Manage users, phones and queues of one's own site.
    ManageSite,
    /// Manage every user, site, phone and queue of one's domain.
    ManageDomain,
    /// Create time frames.
    CreateTimeFrames,
}

impl Capability {
    /// Every capability, in table order.
    pub const ALL: [Capability; 9] = [
        Capability::Portal,
        Capability::Voicemail,
        Capability::Softphone,
        Capability::ManageSelf,
        Capability::QueueLogin,
        Capability::MonitorQueueAgents,
        Capability::ManageSite,
        Capability::ManageDomain,
        Capability::CreateTimeFrames,
    ];

    /// Returns the kebab-case name used in docs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Portal => "portal",
            Capability::Voicemail => "voicemail",
            Capability::Softphone => "softphone",
            Capability::ManageSelf => "manage-self",
            Capability::QueueLogin => "queue-login",
            Capability::MonitorQueueAgents => "monitor-queue-agents",
            Capability::ManageSite => "manage-site",
            Capability::ManageDomain => "manage-domain",
            Capability::CreateTimeFrames => "create-time-frames",
        }
    }
}

impl Scope {
    /// Every scope, lowest rank first.
    pub const ALL: [Scope; 6] = [
        Scope::SimpleUser,
        Scope::BasicUser,
        Scope::CallCenterAgent,
        Scope::CallCenterSupervisor,
        Scope::SiteManager,
        Scope::OfficeManager,
    ];

    /// Returns the capabilities this scope implies.
    pub fn capabilities(self) -> &'static [Capability] {
        use Capability::*;
        match self {
            Scope::SimpleUser => &[],
            Scope::BasicUser => &[Portal, Voicemail, Softphone, ManageSelf],
            Scope::CallCenterAgent => &[Portal, Voicemail, Softphone, ManageSelf, QueueLogin],
            Scope::CallCenterSupervisor => &[
                Portal,
                Voicemail,
                Softphone,
                ManageSelf,
                QueueLogin,
                MonitorQueueAgents,
            ],
            Scope::SiteManager => &[
                Portal,
                Voicemail,
                Softphone,
                ManageSelf,
                QueueLogin,
                MonitorQueueAgents,
                ManageSite,
            ],
            Scope::OfficeManager => &[
                Portal,
                Voicemail,
                Softphone,
                ManageSelf,
                QueueLogin,
                MonitorQueueAgents,
                ManageSite,
                ManageDomain,
                CreateTimeFrames,
            ],
        }
    }

    /// Returns whether this scope implies `cap`.
    pub fn has(self, cap: Capability) -> bool {
        self.capabilities().contains(&cap)
    }

    /// Returns the kebab-case name, e.g. `call-center-agent`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::SimpleUser => "simple-user",
            Scope::BasicUser => "basic-user",
            Scope::CallCenterAgent => "call-center-agent",
            Scope::CallCenterSupervisor => "call-center-supervisor",
            Scope::SiteManager => "site-manager",
            Scope::OfficeManager => "office-manager",
        }
    }

    /// Parses a kebab-case or snake-case scope name.
    pub fn from_name(s: &str) -> Option<Scope> {
        let n = s.trim().to_ascii_lowercase().replace('_', "-");
        Scope::ALL.into_iter().find(|sc| sc.name() == n)
    }

    /// Renders the capability table as Markdown (used by docs/scopes.md).
    pub fn markdown_table() -> String {
        let mut out = String::from("| capability |");
        for s in Scope::ALL {
            out.push_str(&format!(" {} |", s.name()));
        }
        out.push_str("\n|---|");
        for _ in Scope::ALL {
            out.push_str("---|");
        }
        out.push('\n');
        for c in Capability::ALL {
            out.push_str(&format!("| {} |", c.name()));
            for s in Scope::ALL {
                out.push_str(if s.has(c) { " yes |" } else { " - |" });
            }
            out.push('\n');
        }
        out
    }
}

/// What kind of call destination a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserKind {
    /// A person's account.
    Person,
    /// A conference bridge (system user).
    ConferenceBridge,
    /// An auto attendant (system user).
    AutoAttendant,
    /// A call queue (system user).
    CallQueue,
}

impl UserKind {
    /// Returns whether list calls hide this kind by default.
    pub fn is_system(self) -> bool {
        !matches!(self, UserKind::Person)
    }

    /// Returns the kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            UserKind::Person => "person",
            UserKind::ConferenceBridge => "conference-bridge",
            UserKind::AutoAttendant => "auto-attendant",
            UserKind::CallQueue => "call-queue",
        }
    }

    /// Parses a kebab-case or snake-case kind name.
    pub fn from_name(s: &str) -> Option<UserKind> {
        let n = s.trim().to_ascii_lowercase().replace('_', "-");
        [
            UserKind::Person,
            UserKind::ConferenceBridge,
            UserKind::AutoAttendant,
            UserKind::CallQueue,
        ]
        .into_iter()
        .find(|k| k.name() == n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_scope_table_is_monotonic() {
        // A higher scope never loses a capability of a lower one.
        for pair in Scope::ALL.windows(2) {
            for c in pair[0].capabilities() {
                assert!(pair[1].has(*c), "{:?} lacks {:?}", pair[1], c);
            }
        }
    }

    #[test]
    fn test_scope_table_matches_seed() {
        assert!(Scope::SimpleUser.capabilities().is_empty());
        assert!(Scope::BasicUser.has(Capability::Portal));
        assert!(Scope::BasicUser.has(Capability::Voicemail));
        assert!(!Scope::BasicUser.has(Capability::QueueLogin));
        assert!(Scope::CallCenterAgent.has(Capability::QueueLogin));
        assert!(!Scope::CallCenterAgent.has(Capability::MonitorQueueAgents));
        assert!(Scope::CallCenterSupervisor.has(Capability::MonitorQueueAgents));
        assert!(Scope::SiteManager.has(Capability::ManageSite));
        assert!(!Scope::SiteManager.has(Capability::ManageDomain));
        assert!(!Scope::SiteManager.has(Capability::CreateTimeFrames));
        assert!(Scope::OfficeManager.has(Capability::CreateTimeFrames));
        assert!(Scope::OfficeManager.has(Capability::ManageDomain));
    }

    #[test]
    fn test_scope_rank_and_names() {
        assert!(Scope::SiteManager < Scope::OfficeManager);
        assert!(Scope::SimpleUser < Scope::BasicUser);
        for s in Scope::ALL {
            assert_eq!(Scope::from_name(s.name()), Some(s));
        }
        assert_eq!(
            Scope::from_name("OFFICE_MANAGER"),
            Some(Scope::OfficeManager)
        );
        assert_eq!(Scope::from_name("root"), None);
    }

    #[test]
    fn test_system_kinds() {
        assert!(!UserKind::Person.is_system());
        assert!(UserKind::ConferenceBridge.is_system());
        assert!(UserKind::AutoAttendant.is_system());
        assert!(UserKind::CallQueue.is_system());
        assert_eq!(UserKind::from_name("call_queue"), Some(UserKind::CallQueue));
    }

    #[test]
    fn test_docs_table_is_current() {
        let doc = include_str!("../../../docs/scopes.md");
        assert!(
            doc.contains(&Scope::markdown_table()),
            "docs/scopes.md is stale; paste:\n{}",
            Scope::markdown_table()
        );
    }
}
