//! The policy service's domain API, independent of tonic.

use crate::records::{self, LINES, SETTINGS, bump_epoch, put_grants};
use crate::rules::{self, Target, Verdict, Watcher};
use presence_auth::{Principal, rights};
use presence_core::{ApiError, ApiResult, Capability, DomainId, Scope, SiteId, UserId};
use presence_directory::Directory;
use presence_directory::audit::Auditor;
use presence_directory::authz::{Role, role};
use presence_directory::records::{Read, check_version};
use presence_directory::store::{Store, keys};
use presence_proto::convert::scope_from_proto;
use presence_proto::v1::{self, GrantKind, grantee::Kind as G};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Limits of the policy service.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Most grantees in one see or pickup list.
    pub max_grantees: usize,
    /// Most monitored lines of one watcher.
    pub max_lines: usize,
    /// Most targets in one CheckSee / CheckPickup call.
    pub max_check_targets: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_grantees: 1000,
            max_lines: 200,
            max_check_targets: 5000,
        }
    }
}

/// The policy service.
#[derive(Clone)]
pub struct Policy {
    dir: Directory,
    cfg: Arc<PolicyConfig>,
}

/// Resolves the caller's role for policy: office managers and
/// `policy.write` services administer, `policy.read` and
/// `presence.watch` services read.
fn prole(p: &Principal, d: &DomainId) -> ApiResult<Role> {
    let r = role(p, d)?;
    Ok(match p {
        Principal::Service { .. } => {
            if p.has_right(d, rights::POLICY_WRITE) {
                Role::Admin
            } else if p.has_right(d, rights::POLICY_READ) || p.has_right(d, rights::PRESENCE_WATCH)
            {
                Role::Reader
            } else {
                Role::Outsider
            }
        }
        _ => r,
    })
}

fn scope_of(u: &v1::User) -> Scope {
    scope_from_proto(u.scope).unwrap_or(Scope::SimpleUser)
}

/// Requires that the caller may read (or change) what belongs to `u`:
/// `u` itself, its managers, and (for reads) readers.
fn require_subject(r: &Role, u: &v1::User, write: bool, what: &str) -> ApiResult<()> {
    let ok = r.manages(&u.site, scope_of(u))
        || r.is_self_manager(&u.id)
        || (!write && *r == Role::Reader)
        || (!write && matches!(r, Role::Phone { user, .. } if user.as_str() == u.id));
    if ok {
        Ok(())
    } else {
        Err(ApiError::denied(format!(
            "not allowed to {what} of user {}",
            u.id
        )))
    }
}

fn parse_users(what: &str, ids: &[String]) -> ApiResult<Vec<UserId>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for i in ids {
        let u = UserId::parse(i)?;
        if !seen.insert(u.clone()) {
            return Err(ApiError::invalid(format!("{what} {u} listed twice")));
        }
        out.push(u);
    }
    Ok(out)
}

/// Supervisor → agents of the queues it supervises, for a whole domain.
fn supervision(s: &Store, d: &DomainId) -> ApiResult<HashMap<String, HashSet<String>>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for row in s.scan(&keys::prefix(keys::QUEUE, &[d.as_str()]), None) {
        let (_, v) = row?;
        let q: v1::Queue = presence_directory::store::decode(&v)?;
        for sup in &q.supervisors {
            out.entry(sup.clone())
                .or_default()
                .extend(q.agents.iter().map(|a| a.user.clone()));
        }
    }
    Ok(out)
}

fn watcher_of(u: &v1::User, supervised: HashSet<String>) -> Watcher {
    Watcher {
        id: u.id.clone(),
        site: u.site.clone(),
        scope: scope_of(u),
        supervised,
    }
}

/// Loads the facts about one watcher.
pub fn load_watcher(s: &Store, d: &DomainId, w: &UserId) -> ApiResult<Watcher> {
    let u = s.user(d, w)?;
    let supervised = if scope_of(&u).has(Capability::MonitorQueueAgents) {
        supervision(s, d)?.remove(w.as_str()).unwrap_or_default()
    } else {
        HashSet::new()
    };
    Ok(watcher_of(&u, supervised))
}

/// What the rules need about a target, owned.
struct TargetFacts {
    user: v1::User,
    settings: v1::PresenceSettings,
    grants: v1::Grants,
}

impl TargetFacts {
    fn load(s: &Store, d: &DomainId, t: &str) -> ApiResult<Option<Self>> {
        let Ok(tid) = UserId::parse(t) else {
            return Ok(None);
        };
        let user = match s.user(d, &tid) {
            Ok(u) => u,
            Err(ApiError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Self {
            settings: records::settings(s, d, t)?,
            grants: records::grants(s, d, t)?,
            user,
        }))
    }

    fn target(&self) -> Target<'_> {
        Target {
            id: &self.user.id,
            site: &self.user.site,
            settings: &self.settings,
            grants: &self.grants,
        }
    }
}

fn decision(target: &str, v: Verdict) -> v1::Decision {
    v1::Decision {
        target: target.into(),
        allowed: v.allowed,
        rule: v.rule as i32,
        caller_id_visible: v.caller_id_visible,
    }
}

fn no_such_user(target: &str) -> v1::Decision {
    v1::Decision {
        target: target.into(),
        allowed: false,
        rule: v1::Rule::OtherDomain as i32,
        caller_id_visible: false,
    }
}

/// Which question a check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// May the watcher see the target's presence?
    See,
    /// May the watcher pick up the target's calls?
    Pickup,
}

/// Evaluates `q` for one watcher and many targets against the store.
/// Unknown targets are denied with rule `OTHER_DOMAIN` ("no such user").
/// Returns the domain's policy epoch read *before* evaluating, so that a
/// cache keyed by it never outlives a later change.
pub fn evaluate(
    s: &Store,
    d: &DomainId,
    watcher: &UserId,
    targets: &[String],
    q: Question,
) -> ApiResult<(u64, Vec<v1::Decision>)> {
    let pol = records::domain_policy(s, d)?;
    let w = load_watcher(s, d, watcher)?;
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        match TargetFacts::load(s, d, t)? {
            None => out.push(no_such_user(t)),
            Some(f) => {
                let v = match q {
                    Question::See => rules::can_see(&pol, &w, &f.target()),
                    Question::Pickup => rules::can_pickup(&w, &f.target()),
                };
                out.push(decision(t, v));
            }
        }
    }
    Ok((pol.epoch, out))
}

fn check_grantees(
    s: &impl Read,
    d: &DomainId,
    target: &str,
    list: &[v1::Grantee],
    max: usize,
) -> ApiResult<Vec<v1::Grantee>> {
    if list.len() > max {
        return Err(ApiError::invalid(format!(
            "too many grantees: {}, at most {max}",
            list.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for g in list {
        let k = match g.kind.as_ref() {
            Some(G::User(u)) => {
                let uid = UserId::parse(u)?;
                if uid.as_str() == target {
                    return Err(ApiError::invalid(format!(
                        "user {target} cannot grant to itself"
                    )));
                }
                s.user(d, &uid)?;
                G::User(uid.into_string())
            }
            Some(G::Site(st)) => {
                let sid = SiteId::parse(st)?;
                s.site(d, &sid)?;
                G::Site(sid.into_string())
            }
            Some(G::Domain(true)) => G::Domain(true),
            Some(G::Domain(false)) | None => {
                return Err(ApiError::invalid(
                    "grantee must be a user, a site or domain=true",
                ));
            }
        };
        let key = format!("{k:?}");
        if !seen.insert(key) {
            return Err(ApiError::invalid(format!("grantee {k:?} listed twice")));
        }
        out.push(v1::Grantee { kind: Some(k) });
    }
    Ok(out)
}

fn targets_and_watchers(g: &v1::Grants) -> (Vec<String>, Vec<String>) {
    let watchers = g
        .see
        .iter()
        .chain(&g.pickup)
        .filter_map(|x| match x.kind.as_ref() {
            Some(G::User(u)) => Some(u.clone()),
            _ => None,
        })
        .collect();
    (vec![g.target.clone()], watchers)
}

impl Policy {
    /// Returns the policy service over the directory's store and
    /// registers its cascades (user, site and domain deletion, access
    /// changes) with the directory.
    pub fn new(dir: Directory, cfg: PolicyConfig) -> Self {
        dir.add_hooks(Arc::new(crate::hooks::PolicyHooks));
        Self {
            dir,
            cfg: Arc::new(cfg),
        }
    }

    /// Returns the store (for the ACL view).
    pub fn store(&self) -> &Arc<Store> {
        self.dir.store()
    }

    /// Reads something that belongs to `user` after checking that the
    /// caller may read it (the user itself, its managers, readers).
    async fn read_for<T: Send + 'static>(
        &self,
        p: &Principal,
        domain: &str,
        user: &str,
        what: &'static str,
        f: impl FnOnce(&Store, &DomainId, &UserId) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let d = DomainId::parse(domain)?;
        let u = UserId::parse(user)?;
        let r = prole(p, &d)?;
        self.dir
            .read(move |s| {
                s.domain(&d)?;
                let record = s.user(&d, &u)?;
                require_subject(&r, &record, false, what)?;
                f(s, &d, &u)
            })
            .await
    }

    // ---- settings ---------------------------------------------------------

    /// Returns a user's presence settings (defaults when never saved).
    pub async fn get_presence_settings(
        &self,
        p: &Principal,
        req: v1::GetPresenceSettingsRequest,
    ) -> ApiResult<v1::PresenceSettings> {
        self.read_for(
            p,
            &req.domain,
            &req.user,
            "read presence settings",
            |s, d, u| records::settings(s, d, u.as_str()),
        )
        .await
    }

    /// Updates a user's presence settings.
    pub async fn update_presence_settings(
        &self,
        p: &Principal,
        req: v1::UpdatePresenceSettingsRequest,
    ) -> ApiResult<v1::PresenceSettings> {
        let d = DomainId::parse(&req.domain)?;
        let u = UserId::parse(&req.user)?;
        let r = prole(p, &d)?;
        if let Some(v) = req.visibility
            && !matches!(v1::Visibility::try_from(v), Ok(x) if x != v1::Visibility::Unspecified)
        {
            return Err(ApiError::invalid(format!("invalid visibility {v}")));
        }
        if let Some(v) = req.caller_id_visibility
            && !matches!(v1::CallerIdVisibility::try_from(v), Ok(x) if x != v1::CallerIdVisibility::Unspecified)
        {
            return Err(ApiError::invalid(format!(
                "invalid caller_id_visibility {v}"
            )));
        }
        let audit = Auditor::new(p);
        self.dir
            .write(move |tx| {
                tx.domain(&d)?;
                let user = tx.user(&d, &u)?;
                require_subject(&r, &user, true, "change presence settings")?;
                let mut s = records::settings(tx, &d, u.as_str())?;
                let before = settings_text(&s);
                check_version(
                    &format!("presence settings of user {u}"),
                    s.version,
                    req.expected_version,
                )?;
                if let Some(v) = req.visibility {
                    s.visibility = v;
                }
                if let Some(v) = req.caller_id_visibility {
                    s.caller_id_visibility = v;
                }
                if let Some(v) = req.ring_on_monitored_call {
                    s.ring_on_monitored_call = v;
                }
                if let Some(v) = req.pickup_calls_on_hold {
                    s.pickup_calls_on_hold = v;
                }
                s.version += 1;
                tx.put(keys::key(SETTINGS, &[d.as_str(), u.as_str()]), &s);
                let after = settings_text(&s);
                if before != after {
                    audit.record(tx, Some(&d), u.as_str(), "policy.settings", before, after);
                }
                bump_epoch(
                    tx,
                    &d,
                    vec![u.to_string()],
                    vec![],
                    "presence settings changed",
                )?;
                Ok(s)
            })
            .await
    }

    // ---- grants -----------------------------------------------------------

    /// Returns a target's see and pickup grants.
    pub async fn list_grants(
        &self,
        p: &Principal,
        req: v1::ListGrantsRequest,
    ) -> ApiResult<v1::Grants> {
        self.read_for(p, &req.domain, &req.target, "read grants", |s, d, t| {
            records::grants(s, d, t.as_str())
        })
        .await
    }

    /// Replaces a target's see and pickup lists (the admin page's Save).
    pub async fn set_grants(
        &self,
        p: &Principal,
        req: v1::SetGrantsRequest,
    ) -> ApiResult<v1::Grants> {
        let d = DomainId::parse(&req.domain)?;
        let t = UserId::parse(&req.target)?;
        let r = prole(p, &d)?;
        let max = self.cfg.max_grantees;
        let audit = Auditor::new(p);
        self.dir
            .write(move |tx| {
                tx.domain(&d)?;
                let user = tx.user(&d, &t)?;
                require_subject(&r, &user, true, "change grants")?;
                let old = records::grants(tx, &d, t.as_str())?;
                check_version(
                    &format!("grants of user {t}"),
                    old.version,
                    req.expected_version,
                )?;
                let new = v1::Grants {
                    domain: d.to_string(),
                    target: t.to_string(),
                    see: check_grantees(tx, &d, t.as_str(), &req.see, max)?,
                    pickup: check_grantees(tx, &d, t.as_str(), &req.pickup, max)?,
                    version: old.version + 1,
                };
                put_grants(tx, &d, &old, &new);
                audit_grants(&audit, tx, &d, &old, &new);
                let (targets, mut watchers) = targets_and_watchers(&new);
                watchers.extend(targets_and_watchers(&old).1);
                bump_epoch(tx, &d, targets, watchers, "grants replaced")?;
                Ok(new)
            })
            .await
    }

    /// Adds one grant (no-op when already present).
    pub async fn add_grant(
        &self,
        p: &Principal,
        req: v1::AddGrantRequest,
    ) -> ApiResult<v1::Grants> {
        self.change_grant(p, req.domain, req.target, req.kind, req.grantee, true)
            .await
    }

    /// Removes one grant (no-op when absent).
    pub async fn remove_grant(
        &self,
        p: &Principal,
        req: v1::RemoveGrantRequest,
    ) -> ApiResult<v1::Grants> {
        self.change_grant(p, req.domain, req.target, req.kind, req.grantee, false)
            .await
    }

    async fn change_grant(
        &self,
        p: &Principal,
        domain: String,
        target: String,
        kind: i32,
        grantee: Option<v1::Grantee>,
        add: bool,
    ) -> ApiResult<v1::Grants> {
        let d = DomainId::parse(&domain)?;
        let t = UserId::parse(&target)?;
        let r = prole(p, &d)?;
        let kind = match GrantKind::try_from(kind) {
            Ok(k @ (GrantKind::See | GrantKind::Pickup)) => k,
            _ => return Err(ApiError::invalid(format!("invalid grant kind {kind}"))),
        };
        let grantee = grantee.ok_or_else(|| ApiError::invalid("grantee must be set"))?;
        let max = self.cfg.max_grantees;
        let audit = Auditor::new(p);
        self.dir
            .write(move |tx| {
                tx.domain(&d)?;
                let user = tx.user(&d, &t)?;
                require_subject(&r, &user, true, "change grants")?;
                let old = records::grants(tx, &d, t.as_str())?;
                let mut new = old.clone();
                let list = if kind == GrantKind::See {
                    &mut new.see
                } else {
                    &mut new.pickup
                };
                let g = if add {
                    check_grantees(tx, &d, t.as_str(), std::slice::from_ref(&grantee), max)?
                        .remove(0)
                } else {
                    grantee.clone()
                };
                let present = list.contains(&g);
                match (add, present) {
                    (true, false) => {
                        if list.len() >= max {
                            return Err(ApiError::ResourceExhausted(format!(
                                "grant list of user {t} is full ({max})"
                            )));
                        }
                        list.push(g);
                    }
                    (false, true) => list.retain(|x| *x != g),
                    _ => return Ok(old),
                }
                new.version = old.version + 1;
                put_grants(tx, &d, &old, &new);
                audit_grants(&audit, tx, &d, &old, &new);
                let (targets, mut watchers) = targets_and_watchers(&new);
                watchers.extend(targets_and_watchers(&old).1);
                bump_epoch(
                    tx,
                    &d,
                    targets,
                    watchers,
                    if add { "grant added" } else { "grant removed" },
                )?;
                Ok(new)
            })
            .await
    }

    // ---- domain policy ----------------------------------------------------

    /// Returns the domain's switches and epoch.
    pub async fn get_domain_policy(
        &self,
        p: &Principal,
        req: v1::GetDomainPolicyRequest,
    ) -> ApiResult<v1::DomainPolicy> {
        let d = DomainId::parse(&req.domain)?;
        let r = prole(p, &d)?;
        if matches!(r, Role::Outsider | Role::Phone { .. }) {
            return Err(ApiError::denied("not allowed to read the domain policy"));
        }
        self.dir
            .read(move |s| {
                s.domain(&d)?;
                records::domain_policy(s, &d)
            })
            .await
    }

    /// Switches scope-implied visibility (office managers, `policy.write`).
    pub async fn update_domain_policy(
        &self,
        p: &Principal,
        req: v1::UpdateDomainPolicyRequest,
    ) -> ApiResult<v1::DomainPolicy> {
        let d = DomainId::parse(&req.domain)?;
        prole(p, &d)?.require_admin("change the domain policy")?;
        let audit = Auditor::new(p);
        self.dir
            .write(move |tx| {
                tx.domain(&d)?;
                let mut pol = records::domain_policy(tx, &d)?;
                let before = domain_policy_text(&pol);
                if let Some(v) = req.office_manager_sees_domain {
                    pol.office_manager_sees_domain = v;
                }
                if let Some(v) = req.site_manager_sees_site {
                    pol.site_manager_sees_site = v;
                }
                if let Some(v) = req.supervisor_sees_queue_agents {
                    pol.supervisor_sees_queue_agents = v;
                }
                tx.put(keys::key(records::DOMAIN_POLICY, &[d.as_str()]), &pol);
                let after = domain_policy_text(&pol);
                if before != after {
                    audit.record(tx, Some(&d), "", "policy.domain", before, after);
                }
                pol.epoch = bump_epoch(tx, &d, vec![], vec![], "domain policy changed")?;
                Ok(pol)
            })
            .await
    }

    // ---- checks -----------------------------------------------------------

    fn check_access(r: &Role, w: &v1::User) -> ApiResult<()> {
        let ok = matches!(r, Role::Reader)
            || r.manages(&w.site, scope_of(w))
            || r.user().is_some_and(|u| u.as_str() == w.id);
        if ok {
            Ok(())
        } else {
            Err(ApiError::denied(format!(
                "not allowed to check access of user {}",
                w.id
            )))
        }
    }

    async fn check(
        &self,
        p: &Principal,
        req: v1::CheckRequest,
        q: Question,
    ) -> ApiResult<v1::CheckResponse> {
        let d = DomainId::parse(&req.domain)?;
        let w = UserId::parse(&req.watcher)?;
        let r = prole(p, &d)?;
        if req.targets.len() > self.cfg.max_check_targets {
            return Err(ApiError::ResourceExhausted(format!(
                "{} targets in one check, at most {}",
                req.targets.len(),
                self.cfg.max_check_targets
            )));
        }
        for t in &req.targets {
            UserId::parse(t)?;
        }
        self.dir
            .read(move |s| {
                s.domain(&d)?;
                let wu = s.user(&d, &w)?;
                Self::check_access(&r, &wu)?;
                let (epoch, decisions) = evaluate(s, &d, &w, &req.targets, q)?;
                Ok(v1::CheckResponse { decisions, epoch })
            })
            .await
    }

    /// May the watcher see each target?
    pub async fn check_see(
        &self,
        p: &Principal,
        req: v1::CheckRequest,
    ) -> ApiResult<v1::CheckResponse> {
        self.check(p, req, Question::See).await
    }

    /// May the watcher pick up each target's calls?
    pub async fn check_pickup(
        &self,
        p: &Principal,
        req: v1::CheckRequest,
    ) -> ApiResult<v1::CheckResponse> {
        self.check(p, req, Question::Pickup).await
    }

    /// The see decision for one pair, the rule that made it and why.
    pub async fn explain(
        &self,
        p: &Principal,
        req: v1::ExplainRequest,
    ) -> ApiResult<v1::Explanation> {
        let d = DomainId::parse(&req.domain)?;
        let w = UserId::parse(&req.watcher)?;
        let t = UserId::parse(&req.target)?;
        let r = prole(p, &d)?;
        self.dir
            .read(move |s| {
                s.domain(&d)?;
                let wu = s.user(&d, &w)?;
                let tu = s.user(&d, &t)?;
                if Self::check_access(&r, &wu).is_err() && Self::check_access(&r, &tu).is_err() {
                    return Err(ApiError::denied(format!(
                        "not allowed to explain access of {w} to {t}"
                    )));
                }
                let pol = records::domain_policy(s, &d)?;
                let watcher = load_watcher(s, &d, &w)?;
                let Some(f) = TargetFacts::load(s, &d, t.as_str())? else {
                    return Err(presence_directory::records::user_not_found(&d, t.as_str()));
                };
                let v = rules::can_see(&pol, &watcher, &f.target());
                Ok(v1::Explanation {
                    decision: Some(decision(t.as_str(), v)),
                    reason: rules::explain(&v, &watcher, &f.target()),
                })
            })
            .await
    }

    /// Who can see the target, and why; paged by watcher id.
    pub async fn list_watchers(
        &self,
        p: &Principal,
        req: v1::ListWatchersRequest,
    ) -> ApiResult<v1::ListWatchersResponse> {
        let d = DomainId::parse(&req.domain)?;
        let t = UserId::parse(&req.target)?;
        let r = prole(p, &d)?;
        let n = presence_directory::service::page_size(req.page_size);
        presence_core::check_page_token(&req.page_token, UserId::parse)?;
        self.dir
            .read(move |s| {
                s.domain(&d)?;
                let tu = s.user(&d, &t)?;
                require_subject(&r, &tu, false, "list watchers")?;
                let pol = records::domain_policy(s, &d)?;
                let f = TargetFacts {
                    settings: records::settings(s, &d, t.as_str())?,
                    grants: records::grants(s, &d, t.as_str())?,
                    user: tu,
                };
                let mut sup = supervision(s, &d)?;
                let after = (!req.page_token.is_empty())
                    .then(|| keys::key(keys::USER, &[d.as_str(), &req.page_token]));
                let mut watchers = Vec::new();
                let mut more = false;
                for row in s.scan(&keys::prefix(keys::USER, &[d.as_str()]), after.as_deref()) {
                    let (_, v) = row?;
                    let wu: v1::User = presence_directory::store::decode(&v)?;
                    if wu.id == t.as_str() {
                        continue;
                    }
                    let w = watcher_of(&wu, sup.remove(&wu.id).unwrap_or_default());
                    let v = rules::can_see(&pol, &w, &f.target());
                    if !v.allowed {
                        continue;
                    }
                    if watchers.len() == n {
                        more = true;
                        break;
                    }
                    watchers.push(v1::WatcherEntry {
                        user: wu.id.clone(),
                        rule: v.rule as i32,
                        can_pickup: rules::can_pickup(&w, &f.target()).allowed,
                    });
                }
                let next_page_token = match (more, watchers.last()) {
                    (true, Some(w)) => w.user.clone(),
                    _ => String::new(),
                };
                Ok(v1::ListWatchersResponse {
                    watchers,
                    next_page_token,
                })
            })
            .await
    }

    /// Whom the watcher can see; paged by target id.
    pub async fn list_monitorable(
        &self,
        p: &Principal,
        req: v1::ListMonitorableRequest,
    ) -> ApiResult<v1::ListMonitorableResponse> {
        let d = DomainId::parse(&req.domain)?;
        let w = UserId::parse(&req.watcher)?;
        let r = prole(p, &d)?;
        let n = presence_directory::service::page_size(req.page_size);
        presence_core::check_page_token(&req.page_token, UserId::parse)?;
        self.dir
            .read(move |s| {
                s.domain(&d)?;
                let wu = s.user(&d, &w)?;
                require_subject(&r, &wu, false, "list what is monitorable")?;
                let (targets, next_page_token) = monitorable(s, &d, &w, &req.page_token, n)?;
                Ok(v1::ListMonitorableResponse {
                    targets,
                    next_page_token,
                })
            })
            .await
    }

    // ---- monitored lines --------------------------------------------------

    /// Returns the watcher's monitored lines, each with whether its target
    /// allows the watcher now.
    pub async fn get_monitored_lines(
        &self,
        p: &Principal,
        req: v1::GetMonitoredLinesRequest,
    ) -> ApiResult<v1::MonitoredLines> {
        let max = self.cfg.max_lines;
        self.read_for(
            p,
            &req.domain,
            &req.watcher,
            "read monitored lines",
            move |s, d, w| monitored_lines(s, d, w, max),
        )
        .await
    }

    /// Saves the watcher's ordered monitored lines. The watcher's own
    /// extension comes first unless `omit_self`.
    pub async fn set_monitored_lines(
        &self,
        p: &Principal,
        req: v1::SetMonitoredLinesRequest,
    ) -> ApiResult<v1::MonitoredLines> {
        let d = DomainId::parse(&req.domain)?;
        let w = UserId::parse(&req.watcher)?;
        let r = prole(p, &d)?;
        let max = self.cfg.max_lines;
        if req.targets.len() > max {
            return Err(ApiError::invalid(format!(
                "too many monitored lines: {}, at most {max}",
                req.targets.len()
            )));
        }
        let targets = parse_users("target", &req.targets)?;
        let store = self.store().clone();
        let audit = Auditor::new(p);
        self.dir
            .write(move |tx| {
                tx.domain(&d)?;
                let wu = tx.user(&d, &w)?;
                require_subject(&r, &wu, true, "change monitored lines")?;
                for t in &targets {
                    tx.user(&d, t)?;
                }
                let key = keys::key(LINES, &[d.as_str(), w.as_str()]);
                let old: Option<v1::MonitoredLines> = tx.record(&key)?;
                let version = old.as_ref().map(|o| o.version).unwrap_or(0);
                check_version(
                    &format!("monitored lines of user {w}"),
                    version,
                    req.expected_version,
                )?;
                let mut lines: Vec<String> = Vec::with_capacity(targets.len() + 1);
                if !req.omit_self {
                    lines.push(w.to_string());
                }
                for t in &targets {
                    if !lines.contains(&t.to_string()) {
                        lines.push(t.to_string());
                    }
                }
                let saved = v1::MonitoredLines {
                    domain: d.to_string(),
                    watcher: w.to_string(),
                    lines: lines
                        .into_iter()
                        .map(|t| v1::MonitoredLine {
                            target: t,
                            allowed: false,
                        })
                        .collect(),
                    explicit: true,
                    version: version + 1,
                };
                tx.put(key, &saved);
                let line_ids = |l: &v1::MonitoredLines| {
                    presence_directory::audit::list(
                        &l.lines
                            .iter()
                            .map(|x| x.target.as_str())
                            .collect::<Vec<_>>(),
                    )
                };
                let before = old.as_ref().map_or_else(|| "[]".to_owned(), line_ids);
                let after = line_ids(&saved);
                if before != after {
                    audit.record(tx, Some(&d), w.as_str(), "policy.lines", before, after);
                }
                bump_epoch(
                    tx,
                    &d,
                    vec![],
                    vec![w.to_string()],
                    "monitored lines changed",
                )?;
                Ok(())
            })
            .await?;
        // Report with current decisions (reads committed state).
        let d2 = DomainId::parse(&req.domain)?;
        let w2 = UserId::parse(&req.watcher)?;
        self.dir
            .read(move |_| monitored_lines(&store, &d2, &w2, max))
            .await
    }
}

/// One page of the targets `w` may see, in id order (decisions and the
/// next page token).
pub fn monitorable(
    s: &Store,
    d: &DomainId,
    w: &UserId,
    page_token: &str,
    n: usize,
) -> ApiResult<(Vec<v1::Decision>, String)> {
    let pol = records::domain_policy(s, d)?;
    let watcher = load_watcher(s, d, w)?;
    let after = (!page_token.is_empty()).then(|| keys::key(keys::USER, &[d.as_str(), page_token]));
    let mut out = Vec::new();
    let mut more = false;
    for row in s.scan(&keys::prefix(keys::USER, &[d.as_str()]), after.as_deref()) {
        let (_, v) = row?;
        let tu: v1::User = presence_directory::store::decode(&v)?;
        let f = TargetFacts {
            settings: records::settings(s, d, &tu.id)?,
            grants: records::grants(s, d, &tu.id)?,
            user: tu,
        };
        let v = rules::can_see(&pol, &watcher, &f.target());
        if !v.allowed {
            continue;
        }
        if out.len() == n {
            more = true;
            break;
        }
        out.push(decision(&f.user.id, v));
    }
    let next = match (more, out.last()) {
        (true, Some(x)) => x.target.clone(),
        _ => String::new(),
    };
    Ok((out, next))
}

/// The watcher's monitored lines: saved ones, or derived.
pub fn monitored_lines(
    s: &Store,
    d: &DomainId,
    w: &UserId,
    max: usize,
) -> ApiResult<v1::MonitoredLines> {
    let saved: Option<v1::MonitoredLines> =
        s.record(&keys::key(LINES, &[d.as_str(), w.as_str()]))?;
    match saved {
        Some(mut m) => {
            let targets: Vec<String> = m.lines.iter().map(|l| l.target.clone()).collect();
            let (_, decisions) = evaluate(s, d, w, &targets, Question::See)?;
            for (line, dec) in m.lines.iter_mut().zip(decisions) {
                line.allowed = dec.allowed;
            }
            Ok(m)
        }
        None => {
            let (visible, _) = monitorable(s, d, w, "", max)?;
            let mut lines = vec![v1::MonitoredLine {
                target: w.to_string(),
                allowed: true,
            }];
            lines.extend(
                visible
                    .into_iter()
                    .filter(|x| x.target != w.as_str())
                    .take(max.saturating_sub(1))
                    .map(|x| v1::MonitoredLine {
                        target: x.target,
                        allowed: true,
                    }),
            );
            Ok(v1::MonitoredLines {
                domain: d.to_string(),
                watcher: w.to_string(),
                lines,
                explicit: false,
                version: 0,
            })
        }
    }
}

/// Returns the targets a watch selector names for `watcher` (deduplicated,
/// in order): explicit targets, the watcher's monitored lines, everyone
/// the watcher may see, a site's users or a queue's agents. More than
/// `max` targets is `ResourceExhausted`.
pub fn resolve_selector(
    store: &Store,
    d: &DomainId,
    watcher: &UserId,
    sel: &v1::watch_request::Selector,
    max: usize,
) -> ApiResult<Vec<String>> {
    use v1::watch_request::Selector as S;
    let too_many = |what: String| ApiError::ResourceExhausted(format!("{what}, at most {max}"));
    let list: Vec<String> = match sel {
        S::Targets(t) => {
            if t.targets.len() > max {
                return Err(too_many(format!("{} targets", t.targets.len())));
            }
            for x in &t.targets {
                UserId::parse(x)?;
            }
            t.targets.clone()
        }
        S::MonitoredLines(_) => monitored_lines(store, d, watcher, max)?
            .lines
            .into_iter()
            .map(|l| l.target)
            .collect(),
        S::EveryoneVisible(_) => {
            let mut out = Vec::new();
            let mut token = String::new();
            loop {
                let (page, next) = monitorable(store, d, watcher, &token, 1000)?;
                out.extend(page.into_iter().map(|x| x.target));
                if out.len() > max {
                    return Err(too_many("more visible targets".into()));
                }
                if next.is_empty() {
                    break out;
                }
                token = next;
            }
        }
        S::Site(site) => {
            let sid = SiteId::parse(site)?;
            store.site(d, &sid)?;
            let prefix = keys::prefix(keys::USER, &[d.as_str()]);
            let mut out = Vec::new();
            for row in store.scan(&prefix, None) {
                let (_, v) = row?;
                let u: v1::User = presence_directory::store::decode(&v)?;
                if u.site == *site {
                    out.push(u.id);
                }
            }
            if out.len() > max {
                return Err(too_many(format!("site {site} has more users")));
            }
            out
        }
        S::Queue(q) => {
            let qid = UserId::parse(q)?;
            if !presence_directory::queues::user_may_read_queue(store, d, watcher, &qid)? {
                return Err(ApiError::denied(format!("not allowed to read queue {qid}")));
            }
            store
                .queue(d, &qid)?
                .agents
                .into_iter()
                .map(|a| a.user)
                .collect()
        }
    };
    let mut seen = HashSet::new();
    Ok(list
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect())
}

/// A grantee as audit text: `user:1001`, `site:hq`, `domain`.
fn grantee_text(g: &v1::Grantee) -> String {
    match &g.kind {
        Some(G::User(u)) => format!("user:{u}"),
        Some(G::Site(x)) => format!("site:{x}"),
        Some(G::Domain(_)) => "domain".into(),
        None => "-".into(),
    }
}

fn grants_text(g: &v1::Grants) -> String {
    let l = |v: &[v1::Grantee]| {
        presence_directory::audit::list(&v.iter().map(grantee_text).collect::<Vec<_>>())
    };
    format!("see={} pickup={}", l(&g.see), l(&g.pickup))
}

/// Records a change of a target's grants (nothing when they are equal).
fn audit_grants(
    audit: &Auditor,
    tx: &mut presence_directory::store::Tx<'_>,
    d: &DomainId,
    old: &v1::Grants,
    new: &v1::Grants,
) {
    let (before, after) = (grants_text(old), grants_text(new));
    if before != after {
        audit.record(tx, Some(d), &new.target, "policy.grants", before, after);
    }
}

fn settings_text(s: &v1::PresenceSettings) -> String {
    let vis = v1::Visibility::try_from(s.visibility)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("VISIBILITY_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.visibility.to_string());
    let cid = v1::CallerIdVisibility::try_from(s.caller_id_visibility)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("CALLER_ID_VISIBILITY_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.caller_id_visibility.to_string());
    format!(
        "visibility={vis} caller_id={cid} ring_on_monitored_call={} pickup_calls_on_hold={}",
        s.ring_on_monitored_call, s.pickup_calls_on_hold
    )
}

fn domain_policy_text(p: &v1::DomainPolicy) -> String {
    format!(
        "office_manager_sees_domain={} site_manager_sees_site={} supervisor_sees_queue_agents={}",
        p.office_manager_sees_domain, p.site_manager_sees_site, p.supervisor_sees_queue_agents
    )
}
