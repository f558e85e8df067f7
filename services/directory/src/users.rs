//! Users: create, read, list and search, update, delete.

use crate::audit::Auditor;
use crate::authz::{Role, role};
use crate::records::{
    Credentials, Read, check_profile, check_version, event, incarnation, opt_site, void_welcome,
};
use crate::search;
use crate::service::{Directory, key, page_size};
use crate::store::{Store, Tx, keys};
use presence_auth::Principal;
use presence_auth::token::now_ms;
use presence_core::text;
use presence_core::{ApiError, ApiResult, Capability, DomainId, Scope, SiteId, UserId, UserKind};
use presence_proto::convert::{kind_from_proto, kind_to_proto, scope_from_proto, scope_to_proto};
use presence_proto::v1::{self, ChangeKind as Ck, EntityKind as Ek};
use std::collections::BTreeSet;

/// Returns the stored scope of a user (records are validated on write).
pub(crate) fn scope_of(u: &v1::User) -> Scope {
    scope_from_proto(u.scope).unwrap_or(Scope::SimpleUser)
}

/// Returns the stored kind of a user.
pub(crate) fn kind_of(u: &v1::User) -> UserKind {
    kind_from_proto(u.kind).unwrap_or(UserKind::Person)
}

fn index(tx: &mut Tx<'_>, d: &DomainId, u: &v1::User) {
    for w in search::words(u) {
        tx.put_raw(key(keys::INDEX, &[d.as_str(), &w, &u.id]), Vec::new());
    }
}

fn unindex(tx: &mut Tx<'_>, d: &DomainId, u: &v1::User) {
    for w in search::words(u) {
        tx.delete(key(keys::INDEX, &[d.as_str(), &w, &u.id]));
    }
}

/// Default options of a new or reset user.
pub(crate) fn default_options(d: &DomainId, u: &v1::User, version: u64) -> v1::UserOptions {
    let email = u
        .profile
        .as_ref()
        .map(|p| p.email.clone())
        .unwrap_or_default();
    v1::UserOptions {
        domain: d.to_string(),
        user: u.id.clone(),
        answering_rules: Vec::new(),
        voicemail: Some(v1::Voicemail {
            enabled: scope_of(u).has(Capability::Voicemail) && kind_of(u) == UserKind::Person,
            greeting: String::new(),
            notification_email: email,
            pin_set: false,
        }),
        version,
    }
}

/// Removes what is shown to a caller that may only browse the directory.
fn redact(mut u: v1::User) -> v1::User {
    if let Some(p) = u.profile.as_mut() {
        p.email.clear();
        p.caller_id_name.clear();
    }
    u.has_password = false;
    u.password_reset_required = false;
    u
}

fn check_scope_ceiling(r: &Role, scope: Scope) -> ApiResult<()> {
    match r.scope_ceiling() {
        Some(max) if scope > max => Err(ApiError::denied(format!(
            "not allowed to hand out scope {} (above {})",
            scope.name(),
            max.name()
        ))),
        _ => Ok(()),
    }
}

/// Returns queues (ids) where `user` is an agent or supervisor.
pub(crate) fn memberships(tx: &Tx<'_>, d: &DomainId, user: &str) -> ApiResult<Vec<v1::Queue>> {
    let mut out = Vec::new();
    for k in tx.keys_with_prefix(&keys::prefix(keys::QUEUE, &[d.as_str()]))? {
        if let Some(q) = tx.record::<v1::Queue>(&k)?
            && (q.agents.iter().any(|a| a.user == user) || q.supervisors.iter().any(|s| s == user))
        {
            out.push(q);
        }
    }
    Ok(out)
}

impl Directory {
    /// Creates a user (office manager, site manager for its site up to
    /// its own scope, or `directory.write`).
    pub async fn create_user(
        &self,
        p: &Principal,
        req: v1::CreateUserRequest,
    ) -> ApiResult<v1::User> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let kind = if req.kind == 0 {
            UserKind::Person
        } else {
            kind_from_proto(req.kind)?
        };
        let scope = match req.scope {
            0 if kind.is_system() => Scope::SimpleUser,
            0 => Scope::BasicUser,
            s => scope_from_proto(s)?,
        };
        let site = opt_site(&req.site)?;
        let profile = check_profile(&req.profile.unwrap_or_default())?;
        let r = role(p, &d)?;
        let site_str = site.as_ref().map(|s| s.to_string()).unwrap_or_default();
        r.require_manage(&site_str, scope, "create this user")?;
        check_scope_ceiling(&r, scope)?;
        let password_hash = match req.password {
            Some(pw) => {
                text::check_password(&pw)?;
                self.hash(pw).await?
            }
            None => String::new(),
        };
        let hooks = self.hooks();
        let inc = incarnation::fresh();
        let audit = Auditor::new(p);
        self.write(move |tx| {
            tx.domain(&d)?;
            if let Some(s) = &site {
                tx.site(&d, s)?;
            }
            let k = key(keys::USER, &[d.as_str(), id.as_str()]);
            if tx.exists(&k)? {
                return Err(ApiError::AlreadyExists(format!(
                    "user {id} already exists in domain {d}"
                )));
            }
            let now = now_ms();
            let u = v1::User {
                domain: d.to_string(),
                id: id.to_string(),
                kind: kind_to_proto(kind) as i32,
                scope: scope_to_proto(scope) as i32,
                site: site_str.clone(),
                profile: Some(profile.clone()),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
                password_reset_required: false,
                has_password: !password_hash.is_empty(),
            };
            tx.put(k, &u);
            // A new identity: no token of an earlier user of this id
            // applies to this one.
            tx.put_raw(
                incarnation::user_key(d.as_str(), id.as_str()),
                inc.to_be_bytes().to_vec(),
            );
            tx.put(
                key(keys::OPTIONS, &[d.as_str(), id.as_str()]),
                &default_options(&d, &u, 1),
            );
            tx.put(
                key(keys::CREDENTIALS, &[d.as_str(), id.as_str()]),
                &Credentials {
                    password_hash: password_hash.clone(),
                    session_epoch: 1,
                    reset_required: false,
                    pin_hash: String::new(),
                },
            );
            if kind == UserKind::CallQueue {
                let q = v1::Queue {
                    domain: d.to_string(),
                    id: id.to_string(),
                    version: 1,
                    ..Default::default()
                };
                tx.put(key(keys::QUEUE, &[d.as_str(), id.as_str()]), &q);
            }
            index(tx, &d, &u);
            audit.record(
                tx,
                Some(&d),
                id.as_str(),
                "user.create",
                String::new(),
                placement(&u),
            );
            for h in &hooks {
                h.access_changed(tx, &d, std::slice::from_ref(&u.id), "user created")?;
            }
            tx.emit(event(&d, Ek::User, Ck::Created, id.as_str(), 1, vec![]));
            Ok(u)
        })
        .await
    }

    /// Returns a user: the full record to itself, its managers and
    /// readers; other members of the domain get PermissionDenied.
    pub async fn get_user(&self, p: &Principal, req: v1::GetUserRequest) -> ApiResult<v1::User> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let r = role(p, &d)?;
        self.read(move |s| {
            s.domain(&d)?;
            let u = s.user(&d, &id)?;
            r.require_read_user(&u.id, &u.site, scope_of(&u))?;
            Ok(u)
        })
        .await
    }

    /// Lists and searches users. Stable order (by id), page tokens,
    /// system users hidden unless `hide_system_users` is false. Callers
    /// that do not manage a user see a redacted entry (no e-mail, no
    /// caller-id name).
    pub async fn list_users(
        &self,
        p: &Principal,
        req: v1::ListUsersRequest,
    ) -> ApiResult<v1::ListUsersResponse> {
        let d = DomainId::parse(&req.domain)?;
        let r = role(p, &d)?;
        r.require_browse()?;
        let scope = if req.scope == 0 {
            None
        } else {
            Some(scope_from_proto(req.scope)?)
        };
        let kind = if req.kind == 0 {
            None
        } else {
            Some(kind_from_proto(req.kind)?)
        };
        let site = opt_site(&req.site)?;
        let department = text::check("department", &req.department, text::MAX_NAME)?.to_lowercase();
        let search = text::check("search", &req.search, text::MAX_NAME)?;
        let hide_system = req.hide_system_users.unwrap_or(true);
        presence_core::check_page_token(&req.page_token, UserId::parse)?;
        let n = page_size(req.page_size);
        self.read(move |s| {
            s.domain(&d)?;
            let filter = |u: &v1::User| {
                (!hide_system || !kind_of(u).is_system())
                    && scope.is_none_or(|sc| scope_of(u) == sc)
                    && kind.is_none_or(|k| kind_of(u) == k)
                    && site.as_ref().is_none_or(|st| u.site == st.as_str())
                    && (department.is_empty()
                        || u.profile
                            .as_ref()
                            .is_some_and(|p| p.department.to_lowercase() == department))
            };
            let query = search::query_words(&search);
            let mut users = Vec::new();
            let mut more = false;
            let mut take = |u: v1::User, users: &mut Vec<v1::User>| -> bool {
                if !filter(&u) {
                    return true;
                }
                if users.len() == n {
                    more = true;
                    return false;
                }
                let full = r.reads_user(&u.id, &u.site, scope_of(&u));
                users.push(if full { u } else { redact(u) });
                true
            };
            if query.is_empty() {
                let prefix = keys::prefix(keys::USER, &[d.as_str()]);
                let after = (!req.page_token.is_empty())
                    .then(|| key(keys::USER, &[d.as_str(), &req.page_token]));
                for row in s.scan(&prefix, after.as_deref()) {
                    let (_, v) = row?;
                    if !take(crate::store::decode(&v)?, &mut users) {
                        break;
                    }
                }
            } else {
                // Intersect the index hits of every query word before
                // loading any record.
                let mut ids = candidates(s, &d, &query[0])?;
                for w in &query[1..] {
                    if ids.is_empty() {
                        break;
                    }
                    let more = candidates(s, &d, w)?;
                    ids.retain(|id| more.contains(id));
                }
                for id in ids.into_iter().filter(|id| *id > req.page_token) {
                    let Ok(uid) = UserId::parse(&id) else {
                        continue;
                    };
                    let Some(u) =
                        s.record::<v1::User>(&key(keys::USER, &[d.as_str(), uid.as_str()]))?
                    else {
                        continue;
                    };
                    // Only what the caller may see can match: a search
                    // must not recover a redacted e-mail prefix by prefix.
                    let visible = if r.reads_user(&u.id, &u.site, scope_of(&u)) {
                        search::words(&u)
                    } else {
                        search::words(&redact(u.clone()))
                    };
                    if !search::matches(&visible, &query) {
                        continue;
                    }
                    if !take(u, &mut users) {
                        break;
                    }
                }
            }
            let next_page_token = match (more, users.last()) {
                (true, Some(u)) => u.id.clone(),
                _ => String::new(),
            };
            Ok(v1::ListUsersResponse {
                users,
                next_page_token,
            })
        })
        .await
    }

    /// Updates a user. Scope, site and password need a manager of both
    /// the old and the new placement; the user itself may edit only its
    /// profile.
    pub async fn update_user(
        &self,
        p: &Principal,
        req: v1::UpdateUserRequest,
    ) -> ApiResult<v1::User> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let r = role(p, &d)?;
        let new_scope = req.scope.map(scope_from_proto).transpose()?;
        let new_site = req.site.as_deref().map(opt_site).transpose()?;
        let up = req.profile.unwrap_or_default();
        let checked = |f: &str, v: &Option<String>| {
            v.as_deref()
                .map(|x| text::check(f, x, text::MAX_NAME))
                .transpose()
        };
        let first = checked("first_name", &up.first_name)?;
        let last = checked("last_name", &up.last_name)?;
        let dept = checked("department", &up.department)?;
        let cid = checked("caller_id_name", &up.caller_id_name)?;
        let email = up
            .email
            .as_deref()
            .map(crate::records::check_email)
            .transpose()?;
        let password_hash = match req.password {
            Some(pw) => {
                text::check_password(&pw)?;
                Some(self.hash(pw).await?)
            }
            None => None,
        };
        let hooks = self.hooks();
        let audit = Auditor::new(p);
        self.write(move |tx| {
            tx.domain(&d)?;
            let mut u = tx.user(&d, &id)?;
            let old_scope = scope_of(&u);
            let old_site = u.site.clone();
            let admin_change = new_scope.is_some() || new_site.is_some() || password_hash.is_some();
            if admin_change {
                r.require_manage(&u.site, old_scope, &format!("change scope, site or password of user {id}"))?;
            } else if !r.manages(&u.site, old_scope) && !r.is_self_manager(id.as_str()) {
                return Err(ApiError::denied(format!("not allowed to update user {id}")));
            }
            check_version(&format!("user {id}"), u.version, req.expected_version)?;
            let mut facts = Vec::new();
            if let Some(sc) = new_scope {
                check_scope_ceiling(&r, sc)?;
                if sc != old_scope {
                    if sc < Scope::CallCenterAgent && !memberships(tx, &d, id.as_str())?.is_empty() {
                        return Err(ApiError::FailedPrecondition(format!(
                            "user {id} is a member of call queues; remove it before lowering its scope to {}",
                            sc.name()
                        )));
                    }
                    facts.push(format!("scope:{}", sc.name()));
                    u.scope = scope_to_proto(sc) as i32;
                }
            }
            if let Some(site) = new_site.clone() {
                let s = site.as_ref().map(SiteId::to_string).unwrap_or_default();
                if let Some(site) = &site {
                    tx.site(&d, site)?;
                }
                if s != u.site {
                    facts.push(format!("site:{s}"));
                    u.site = s;
                }
            }
            if admin_change {
                // The caller must manage the new placement too.
                r.require_manage(&u.site, scope_of(&u), &format!("move user {id} there"))?;
            }
            unindex(tx, &d, &u);
            let pr = u.profile.get_or_insert_with(Default::default);
            if let Some(v) = first.clone() {
                pr.first_name = v;
            }
            if let Some(v) = last.clone() {
                pr.last_name = v;
            }
            if let Some(v) = dept.clone() {
                pr.department = v;
            }
            if let Some(v) = cid.clone() {
                pr.caller_id_name = v;
            }
            if let Some(v) = email.clone() {
                pr.email = v;
            }
            index(tx, &d, &u);
            if let Some(h) = password_hash.clone() {
                let mut c = tx.credentials(&d, &id)?;
                c.password_hash = h;
                c.reset_required = false;
                c.session_epoch += 1;
                u.has_password = true;
                u.password_reset_required = false;
                tx.put(key(keys::CREDENTIALS, &[d.as_str(), id.as_str()]), &c);
                void_welcome(tx, &d, &id)?;
                facts.push("sessions:invalidated".into());
            }
            u.version += 1;
            u.updated_at_ms = now_ms();
            tx.put(key(keys::USER, &[d.as_str(), id.as_str()]), &u);
            if scope_of(&u) != old_scope {
                let new = scope_of(&u).name().to_owned();
                audit.record(tx, Some(&d), id.as_str(), "user.scope", old_scope.name().to_owned(), new);
            }
            if u.site != old_site {
                let new = u.site.clone();
                audit.record(tx, Some(&d), id.as_str(), "user.site", old_site.clone(), new);
            }
            if password_hash.is_some() {
                audit.record(
                    tx,
                    Some(&d),
                    id.as_str(),
                    "user.password",
                    String::new(),
                    "password set, sessions ended".into(),
                );
            }
            if facts.iter().any(|f| f.starts_with("scope:") || f.starts_with("site:")) {
                for h in &hooks {
                    h.access_changed(tx, &d, std::slice::from_ref(&u.id), "user scope or site changed")?;
                }
            }
            tx.emit(event(&d, Ek::User, Ck::Updated, id.as_str(), u.version, facts));
            Ok(u)
        })
        .await
    }

    /// Deletes a user with its phones, options, credentials, queue
    /// memberships and the answering rules of others that forward to it,
    /// in one atomic commit.
    pub async fn delete_user(
        &self,
        p: &Principal,
        req: v1::DeleteUserRequest,
    ) -> ApiResult<v1::DeleteResponse> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.id)?;
        let r = role(p, &d)?;
        let hooks = self.hooks();
        let audit = Auditor::new(p);
        self.write(move |tx| {
            tx.domain(&d)?;
            let u = tx.user(&d, &id)?;
            r.require_manage(&u.site, scope_of(&u), &format!("delete user {id}"))?;
            audit.record(
                tx,
                Some(&d),
                id.as_str(),
                "user.delete",
                placement(&u),
                String::new(),
            );
            check_version(&format!("user {id}"), u.version, req.expected_version)?;
            let ds = d.as_str();
            let us = id.as_str();
            unindex(tx, &d, &u);
            for k in tx.keys_with_prefix(&keys::prefix(keys::PHONE_BY_USER, &[ds, us]))? {
                if let Some(mac) = crate::service::last_component(&k) {
                    tx.delete(key(keys::PHONE, &[ds, &mac]));
                    tx.delete(incarnation::phone_key(ds, &mac));
                    tx.emit(event(
                        &d,
                        Ek::Phone,
                        Ck::Deleted,
                        &mac,
                        0,
                        vec![format!("user:{us}")],
                    ));
                }
                tx.delete(k);
            }
            void_welcome(tx, &d, &id)?;
            for mut q in memberships(tx, &d, us)? {
                q.agents.retain(|a| a.user != us);
                q.supervisors.retain(|s| s != us);
                q.version += 1;
                tx.put(key(keys::QUEUE, &[ds, &q.id]), &q);
                tx.emit(event(
                    &d,
                    Ek::Queue,
                    Ck::Updated,
                    &q.id,
                    q.version,
                    vec![format!("removed:{us}")],
                ));
            }
            if kind_of(&u) == UserKind::CallQueue {
                tx.delete(key(keys::QUEUE, &[ds, us]));
                tx.emit(event(&d, Ek::Queue, Ck::Deleted, us, 0, vec![]));
            }
            // Answering rules of other users that forward to this user.
            for k in tx.keys_with_prefix(&keys::prefix(keys::OPTIONS, &[ds]))? {
                let Some(mut o) = tx.record::<v1::UserOptions>(&k)? else {
                    continue;
                };
                if o.user == us {
                    continue;
                }
                let before = o.answering_rules.len();
                o.answering_rules.retain(|rule| {
                    !matches!(
                        rule.forward_to.as_ref().and_then(|f| f.target.as_ref()),
                        Some(v1::forward_target::Target::User(t)) if t == us
                    )
                });
                if o.answering_rules.len() != before {
                    o.version += 1;
                    tx.put(k.clone(), &o);
                    tx.emit(event(
                        &d,
                        Ek::UserOptions,
                        Ck::Updated,
                        &o.user,
                        o.version,
                        vec![format!("removed:{us}")],
                    ));
                }
            }
            for h in &hooks {
                h.user_deleted(tx, &d, &id)?;
            }
            tx.delete(key(keys::OPTIONS, &[ds, us]));
            tx.delete(key(keys::CREDENTIALS, &[ds, us]));
            tx.delete(incarnation::user_key(ds, us));
            tx.delete(key(keys::USER, &[ds, us]));
            tx.emit(event(
                &d,
                Ek::User,
                Ck::Deleted,
                us,
                u.version,
                vec!["sessions:invalidated".into()],
            ));
            Ok(v1::DeleteResponse {})
        })
        .await
    }
}

/// Returns the sorted ids of users with an indexed word starting with
/// `word`.
fn candidates(s: &Store, d: &DomainId, word: &str) -> ApiResult<BTreeSet<String>> {
    let mut prefix = keys::prefix(keys::INDEX, &[d.as_str()]);
    prefix.extend_from_slice(word.as_bytes());
    let mut out = BTreeSet::new();
    for row in s.scan(&prefix, None) {
        let (k, _) = row?;
        if let Some(u) = crate::service::last_component(&k) {
            out.insert(u);
        }
    }
    Ok(out)
}

/// A user's access-relevant placement, as audit text.
fn placement(u: &v1::User) -> String {
    let site = if u.site.is_empty() {
        "-"
    } else {
        u.site.as_str()
    };
    format!("scope={} site={site}", scope_of(u).name())
}
