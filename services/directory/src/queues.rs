//! Call queues: agents, supervisors and agent logins.

use crate::audit::{Auditor, list};
use crate::authz::{Role, role};
use crate::records::{Read, check_version, event};
use crate::service::{Directory, key};
use crate::store::keys;
use crate::users::{kind_of, scope_of};
use presence_auth::Principal;
use presence_core::text::MAX_QUEUE_MEMBERS;
use presence_core::{ApiError, ApiResult, Capability, DomainId, UserId, UserKind};
use presence_proto::v1::{self, ChangeKind as Ck, EntityKind as Ek};

fn is_member(q: &v1::Queue, user: &str) -> bool {
    q.agents.iter().any(|a| a.user == user) || q.supervisors.iter().any(|s| s == user)
}

fn can_read(r: &Role, q: &v1::Queue, qu: &v1::User) -> bool {
    matches!(r, Role::Reader)
        || r.manages(&qu.site, scope_of(qu))
        || r.user().is_some_and(|u| is_member(q, u.as_str()))
}

fn load(s: &impl Read, d: &DomainId, id: &UserId) -> ApiResult<(v1::Queue, v1::User)> {
    let u = s.user(d, id)?;
    if kind_of(&u) != UserKind::CallQueue {
        return Err(ApiError::not_found(format!(
            "queue {id} not found in domain {d}"
        )));
    }
    Ok((s.queue(d, id)?, u))
}

/// Returns whether user `watcher` of `d` may read queue `q` (as
/// `GetQueue` would answer it): the queue's members and the users who
/// manage it. What a watch selecting the queue reveals (its agents)
/// follows the same rule. An unknown queue is `NotFound`.
pub fn user_may_read_queue(
    s: &impl Read,
    d: &DomainId,
    watcher: &UserId,
    q: &UserId,
) -> ApiResult<bool> {
    let (queue, qu) = load(s, d, q)?;
    let w = s.user(d, watcher)?;
    let p = Principal::User {
        domain: d.clone(),
        user: watcher.clone(),
        scope: scope_of(&w),
        site: crate::records::opt_site(&w.site)?,
    };
    Ok(can_read(&role(&p, d)?, &queue, &qu))
}

impl Directory {
    /// Returns a queue to managers, readers and its members.
    pub async fn get_queue(&self, p: &Principal, req: v1::GetQueueRequest) -> ApiResult<v1::Queue> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let r = role(p, &d)?;
        self.read(move |s| {
            s.domain(&d)?;
            let (q, qu) = load(s, &d, &id)?;
            if !can_read(&r, &q, &qu) {
                return Err(ApiError::denied(format!("not allowed to read queue {id}")));
            }
            Ok(q)
        })
        .await
    }

    /// Lists the queues the caller may read, optionally only those with
    /// `member` among agents or supervisors.
    pub async fn list_queues(
        &self,
        p: &Principal,
        req: v1::ListQueuesRequest,
    ) -> ApiResult<v1::ListQueuesResponse> {
        let d = DomainId::parse(&req.domain)?;
        let member = if req.member.is_empty() {
            None
        } else {
            Some(UserId::parse(&req.member)?)
        };
        let r = role(p, &d)?;
        r.require_browse()?;
        self.read(move |s| {
            s.domain(&d)?;
            let mut queues = Vec::new();
            for row in s.scan(&keys::prefix(keys::QUEUE, &[d.as_str()]), None) {
                let (_, v) = row?;
                let q: v1::Queue = crate::store::decode(&v)?;
                if member.as_ref().is_some_and(|m| !is_member(&q, m.as_str())) {
                    continue;
                }
                let Ok(qid) = UserId::parse(&q.id) else {
                    continue;
                };
                let Ok(qu) = s.user(&d, &qid) else { continue };
                if can_read(&r, &q, &qu) {
                    queues.push(q);
                }
            }
            Ok(v1::ListQueuesResponse { queues })
        })
        .await
    }

    /// Replaces a queue's agents and supervisors; agents keep their login
    /// state when they stay.
    pub async fn set_queue_members(
        &self,
        p: &Principal,
        req: v1::SetQueueMembersRequest,
    ) -> ApiResult<v1::Queue> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let r = role(p, &d)?;
        if req.agents.len() + req.supervisors.len() > MAX_QUEUE_MEMBERS {
            return Err(ApiError::invalid(format!(
                "too many queue members: {}, at most {MAX_QUEUE_MEMBERS}",
                req.agents.len() + req.supervisors.len()
            )));
        }
        let agents = parse_unique("agent", &req.agents)?;
        let supervisors = parse_unique("supervisor", &req.supervisors)?;
        let hooks = self.hooks();
        let audit = Auditor::new(p);
        self.write(move |tx| {
            tx.domain(&d)?;
            let (mut q, qu) = load(tx, &d, &id)?;
            r.require_manage(
                &qu.site,
                scope_of(&qu),
                &format!("change members of queue {id}"),
            )?;
            check_version(&format!("queue {id}"), q.version, req.expected_version)?;
            // Every member added or removed must be a user the caller
            // manages: a site manager cannot reach across its site through
            // a queue (members it does not change may stay).
            let was_agent = |u: &str| q.agents.iter().any(|a| a.user == u);
            let was_supervisor = |u: &str| q.supervisors.iter().any(|s| s == u);
            let mut changed: Vec<UserId> = Vec::new();
            changed.extend(agents.iter().filter(|a| !was_agent(a.as_str())).cloned());
            changed.extend(
                supervisors
                    .iter()
                    .filter(|s| !was_supervisor(s.as_str()))
                    .cloned(),
            );
            for a in &q.agents {
                if !agents.iter().any(|n| n.as_str() == a.user) {
                    changed.push(UserId::parse(&a.user)?);
                }
            }
            for s in &q.supervisors {
                if !supervisors.iter().any(|n| n.as_str() == s) {
                    changed.push(UserId::parse(s)?);
                }
            }
            for m in &changed {
                let u = tx.user(&d, m)?;
                r.require_manage(
                    &u.site,
                    scope_of(&u),
                    &format!("add or remove {m} as a member of queue {id}"),
                )?;
            }
            for a in &agents {
                let u = tx.user(&d, a)?;
                if kind_of(&u) != UserKind::Person || !scope_of(&u).has(Capability::QueueLogin) {
                    return Err(ApiError::FailedPrecondition(format!(
                        "user {a} cannot be an agent: scope {} has no queue login",
                        scope_of(&u).name()
                    )));
                }
            }
            for sup in &supervisors {
                let u = tx.user(&d, sup)?;
                if kind_of(&u) != UserKind::Person
                    || !scope_of(&u).has(Capability::MonitorQueueAgents)
                {
                    return Err(ApiError::FailedPrecondition(format!(
                        "user {sup} cannot supervise: scope {} cannot monitor agents",
                        scope_of(&u).name()
                    )));
                }
            }
            let members = |q: &v1::Queue| {
                let agents: Vec<&str> = q.agents.iter().map(|a| a.user.as_str()).collect();
                format!(
                    "agents={} supervisors={}",
                    list(&agents),
                    list(&q.supervisors)
                )
            };
            let before = members(&q);
            let old = std::mem::take(&mut q.agents);
            q.agents = agents
                .iter()
                .map(|a| v1::QueueAgent {
                    user: a.to_string(),
                    logged_in: old.iter().any(|o| o.user == a.as_str() && o.logged_in),
                })
                .collect();
            q.supervisors = supervisors.iter().map(|s| s.to_string()).collect();
            q.version += 1;
            let after = members(&q);
            if before != after {
                audit.record(tx, Some(&d), id.as_str(), "queue.members", before, after);
            }
            let mut concerned: Vec<String> = old.iter().map(|a| a.user.clone()).collect();
            concerned.extend(q.agents.iter().map(|a| a.user.clone()));
            concerned.extend(q.supervisors.iter().cloned());
            for h in &hooks {
                h.access_changed(tx, &d, &concerned, "queue members changed")?;
            }
            tx.put(key(keys::QUEUE, &[d.as_str(), id.as_str()]), &q);
            tx.emit(event(
                &d,
                Ek::Queue,
                Ck::Updated,
                id.as_str(),
                q.version,
                vec!["members".into()],
            ));
            Ok(q)
        })
        .await
    }

    /// Logs an agent in to or out of a queue. Allowed to the agent
    /// itself, the queue's supervisors and managers.
    pub async fn set_queue_login(
        &self,
        p: &Principal,
        req: v1::SetQueueLoginRequest,
    ) -> ApiResult<v1::Queue> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let agent = UserId::parse(&req.agent)?;
        let r = role(p, &d)?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let (mut q, qu) = load(tx, &d, &id)?;
            let is_agent = r.user() == Some(&agent);
            let is_supervisor = !matches!(r, Role::Phone { .. })
                && r.user()
                    .is_some_and(|u| q.supervisors.iter().any(|s| s == u.as_str()));
            let allowed = r.manages(&qu.site, scope_of(&qu)) || is_agent || is_supervisor;
            if !allowed {
                return Err(ApiError::denied(format!(
                    "not allowed to log {agent} in or out of queue {id}"
                )));
            }
            let Some(a) = q.agents.iter_mut().find(|a| a.user == agent.as_str()) else {
                return Err(ApiError::FailedPrecondition(format!(
                    "user {agent} is not an agent of queue {id}"
                )));
            };
            if a.logged_in == req.logged_in {
                return Ok(q);
            }
            a.logged_in = req.logged_in;
            q.version += 1;
            tx.put(key(keys::QUEUE, &[d.as_str(), id.as_str()]), &q);
            let fact = format!("{}:{agent}", if req.logged_in { "login" } else { "logout" });
            tx.emit(event(
                &d,
                Ek::Queue,
                Ck::Updated,
                id.as_str(),
                q.version,
                vec![fact],
            ));
            Ok(q)
        })
        .await
    }
}

fn parse_unique(what: &str, ids: &[String]) -> ApiResult<Vec<UserId>> {
    let mut out: Vec<UserId> = Vec::with_capacity(ids.len());
    for i in ids {
        let u = UserId::parse(i)?;
        if out.contains(&u) {
            return Err(ApiError::invalid(format!("{what} {u} listed twice")));
        }
        out.push(u);
    }
    Ok(out)
}
