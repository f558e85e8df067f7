//! The directory's domain API, independent of tonic.
//!
//! [`Directory`] methods take the calling [`Principal`] and a request
//! message and return the response or an [`ApiError`]. Storage work runs
//! on blocking threads; committed changes are then published on the bus
//! (`presence.v1.dir.<domain>`).

use crate::authz::role;
use crate::hooks::DirectoryHooks;
use crate::records::{Read, check_version, event, incarnation};
use crate::store::{Outbox, Store, Tx, keys};
use presence_auth::password::{self, HashCost};
use presence_auth::token::now_ms;
use presence_auth::{Principal, TokenSigner, rights};
use presence_bus::{SharedBus, subjects};
use presence_core::text::{self, MAX_NAME, MAX_TEXT};
use presence_core::{ApiError, ApiResult, DomainId, SiteId};
use presence_proto::v1::{self, ChangeKind as Ck, EntityKind as Ek};
use prost::Message;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the directory service.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Lifetime of a user session token.
    pub session_ttl: Duration,
    /// Default lifetime of an issued service or phone token.
    pub service_token_ttl: Duration,
    /// Default lifetime of a welcome token.
    pub welcome_ttl: Duration,
    /// Cost of password and PIN hashes.
    pub hash_cost: HashCost,
    /// Password hashes computed at once (each holds `hash_cost` memory).
    pub hash_concurrency: usize,
    /// Password hashes waiting for a free slot; beyond that, a call that
    /// needs one is answered `ResourceExhausted` at once. Logins need no
    /// token, so this is what bounds an anonymous caller's memory.
    pub hash_queue: usize,
    /// Login throttling per account and per source address.
    pub login_throttle: crate::throttle::ThrottleConfig,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            service_token_ttl: Duration::from_secs(365 * 24 * 3600),
            welcome_ttl: Duration::from_secs(72 * 3600),
            hash_cost: HashCost::default(),
            hash_concurrency: default_hash_concurrency(),
            hash_queue: 32,
            login_throttle: crate::throttle::ThrottleConfig::default(),
        }
    }
}

/// Returns the default number of hashing threads: one per core, at most
/// four (each keeps up to ~100 MiB of hash memory and allocator arena;
/// four threads already check over a hundred passwords a second).
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(4)
}

/// Default and largest page size of list calls.
pub const PAGE_DEFAULT: usize = 100;
/// Largest page size; larger requests are clamped.
pub const PAGE_MAX: usize = 1000;

/// Returns the effective page size of a request (0 → default, clamped).
pub fn page_size(n: u32) -> usize {
    match n as usize {
        0 => PAGE_DEFAULT,
        n => n.min(PAGE_MAX),
    }
}

/// The directory service.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    hooks: std::sync::RwLock<Vec<Arc<dyn DirectoryHooks>>>,
    store: Arc<Store>,
    bus: SharedBus,
    signer: TokenSigner,
    cfg: DirectoryConfig,
    /// Hash verified when a login names an unknown user, so that the
    /// answer takes as long as for a known one.
    dummy_hash: String,
    /// The threads that compute password hashes.
    hashers: crate::hashing::HashPool,
    /// Failed logins per account and per source address.
    throttle: crate::throttle::LoginThrottle,
    /// The replicated log, when there is one.
    replica: std::sync::OnceLock<crate::replica::Replica>,
    /// Serializes this node's replicated writes.
    writer: tokio::sync::Mutex<()>,
}

/// Rounds a replicated write runs again when what it read changed through
/// other nodes before its place in the log.
pub const CONFLICT_ATTEMPTS: u32 = 8;

/// How long a write waits for this node to apply its log entry.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// What a write answers, kept with its outcome in the replicated log so
/// that a retried request gets the original answer.
pub trait Reply: Sized + Send + 'static {
    /// Encodes the answer.
    fn encode_reply(&self) -> Vec<u8>;
    /// Decodes an answer [`Reply::encode_reply`] made.
    fn decode_reply(b: &[u8]) -> ApiResult<Self>;
}

impl<M: Message + Default + 'static> Reply for M {
    fn encode_reply(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    fn decode_reply(b: &[u8]) -> ApiResult<Self> {
        M::decode(b).map_err(|e| ApiError::Internal(format!("corrupt recorded reply: {e}")))
    }
}

fn join_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("blocking task failed: {e}"))
}

pub(crate) fn key(tag: &str, parts: &[&str]) -> Vec<u8> {
    keys::key(tag, parts)
}

pub(crate) fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Directory {
    /// Returns a directory over `store`, publishing on `bus`.
    pub fn new(
        store: Arc<Store>,
        bus: SharedBus,
        signer: TokenSigner,
        cfg: DirectoryConfig,
    ) -> ApiResult<Self> {
        let dummy_hash = password::hash("presence-dummy-password", cfg.hash_cost)?;
        // Every clone of the signer (the interceptor's too) signs and
        // verifies with the ring this store holds.
        Self::attach_keyring(&signer, &store);
        Ok(Self {
            inner: Arc::new(Inner {
                hooks: std::sync::RwLock::new(Vec::new()),
                store,
                bus,
                signer,
                hashers: crate::hashing::HashPool::new(cfg.hash_concurrency, cfg.hash_queue)?,
                throttle: crate::throttle::LoginThrottle::new(cfg.login_throttle),
                cfg,
                dummy_hash,
                replica: std::sync::OnceLock::new(),
                writer: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Registers hooks run inside every later directory transaction that
    /// deletes or changes access-relevant data.
    pub fn add_hooks(&self, h: Arc<dyn DirectoryHooks>) {
        match self.inner.hooks.write() {
            Ok(mut g) => g.push(h),
            Err(p) => p.into_inner().push(h),
        }
    }

    /// Returns the registered hooks.
    pub(crate) fn hooks(&self) -> Vec<Arc<dyn DirectoryHooks>> {
        match self.inner.hooks.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Returns the store (for the session validator and tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Returns the login throttle.
    pub(crate) fn throttle(&self) -> &crate::throttle::LoginThrottle {
        &self.inner.throttle
    }

    /// Returns the token signer.
    pub fn signer(&self) -> &TokenSigner {
        &self.inner.signer
    }

    /// Returns the configuration.
    pub fn config(&self) -> &DirectoryConfig {
        &self.inner.cfg
    }

    /// Returns the bus the directory publishes on.
    pub(crate) fn bus(&self) -> &SharedBus {
        &self.inner.bus
    }

    /// Returns a handle to the bus the directory publishes on.
    pub fn bus_handle(&self) -> SharedBus {
        self.inner.bus.clone()
    }

    /// Returns the hash verified for unknown users at login.
    pub(crate) fn dummy_hash(&self) -> &str {
        &self.inner.dummy_hash
    }

    /// Runs a read on a blocking thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(join_err)?
    }

    /// Runs one atomic, durable transaction, then publishes its outbox.
    /// Services sharing the store (policy) use it for their own records.
    ///
    /// Embedded, the transaction commits on a blocking thread. On a
    /// replicated directory ([`Directory::set_replica`]) it runs against
    /// the local store, goes through the log and is answered once this
    /// node applied it; when something it read changed before its place
    /// in the log, it runs again (so `f` may run more than once), and
    /// after [`CONFLICT_ATTEMPTS`] such rounds the call is `Aborted`.
    pub async fn write<T: Reply>(
        &self,
        f: impl Fn(&mut Tx<'_>) -> ApiResult<T> + Send + Sync + 'static,
    ) -> ApiResult<T> {
        let store = self.inner.store.clone();
        let Some(replica) = self.inner.replica.get() else {
            let (out, outbox) = tokio::task::spawn_blocking(move || store.write(f))
                .await
                .map_err(join_err)??;
            self.publish_outbox(outbox).await;
            return Ok(out);
        };
        let f = Arc::new(f);
        let (tx_id, retried) = crate::replicated::tx_id();
        // One write of this node at a time: its transactions never
        // conflict with each other, only with other nodes'.
        let _writer = self.inner.writer.lock().await;
        if retried {
            // A retried request may have been applied through another
            // node that died before answering: answer as it would have.
            replica.catch_up(APPLY_WAIT).await?;
            if let Some(o) = store.outcome(&tx_id)?
                && o.committed
            {
                return T::decode_reply(&o.reply);
            }
        }
        for attempt in 0..CONFLICT_ATTEMPTS {
            let (s, f) = (store.clone(), f.clone());
            let (out, entry) = tokio::task::spawn_blocking(move || s.prepare(|tx| f(tx)))
                .await
                .map_err(join_err)??;
            let Some(mut entry) = entry else {
                return Ok(out);
            };
            entry.tx_id = tx_id.clone();
            entry.reply = out.encode_reply();
            let (seq, duplicate) = replica
                .append(&entry, &format!("{tx_id}.{attempt}"))
                .await?;
            replica.wait_applied(seq, APPLY_WAIT).await?;
            let outcome = store.outcome(&tx_id)?.ok_or_else(|| {
                ApiError::Internal(format!("log entry {seq} applied without an outcome"))
            })?;
            if outcome.committed {
                if duplicate || outcome.sequence != seq {
                    // Another copy of this request was applied.
                    return T::decode_reply(&outcome.reply);
                }
                let mut events = entry.events;
                for ev in &mut events {
                    ev.sequence = seq;
                }
                let messages = entry
                    .messages
                    .into_iter()
                    .map(|m| (m.subject, m.payload))
                    .collect();
                self.publish_outbox(Outbox { events, messages }).await;
                return Ok(out);
            }
            metrics::counter!("presence_directory_write_conflicts_total").increment(1);
        }
        Err(ApiError::Aborted(format!(
            "the records this change reads were changed through other nodes {CONFLICT_ATTEMPTS} \
             times in a row; try again"
        )))
    }

    /// Makes this directory replicated: every later write goes through
    /// `replica`'s log. Set once, before serving.
    pub fn set_replica(&self, replica: crate::replica::Replica) -> ApiResult<()> {
        self.inner
            .replica
            .set(replica)
            .map_err(|_| ApiError::Internal("the directory is already replicated".into()))
    }

    /// Returns the replicated log, when the directory is replicated.
    pub fn replica(&self) -> Option<&crate::replica::Replica> {
        self.inner.replica.get()
    }

    async fn publish_outbox(&self, outbox: Outbox) {
        for (subject, payload) in outbox.messages {
            if let Err(e) = self
                .inner
                .bus
                .publish(subject.clone(), payload.into())
                .await
            {
                tracing::warn!(error = %e, %subject, "message not published");
            }
        }
        for ev in outbox.events {
            metrics::counter!("presence_directory_changes_total").increment(1);
            let Ok(domain) = DomainId::parse(&ev.domain) else {
                continue;
            };
            let subject = subjects::directory(&domain);
            if let Err(e) = self
                .inner
                .bus
                .publish(subject, ev.encode_to_vec().into())
                .await
            {
                // The change is committed; subscribers resynchronize from
                // the store sequence. Losing the notification is logged.
                tracing::warn!(error = %e, domain = %domain, "directory event not published");
            }
        }
    }

    /// Runs one password hash or verification on the hashing pool: at
    /// most `hash_concurrency` at once, `hash_queue` waiting; past that
    /// the caller gets `ResourceExhausted` without any hashing.
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        self.inner.hashers.run(f).await
    }

    pub(crate) async fn hash(&self, secret: String) -> ApiResult<String> {
        let cost = self.inner.cfg.hash_cost;
        self.hashing(move || password::hash(&secret, cost)).await?
    }

    pub(crate) async fn verify(&self, secret: String, phc: String) -> ApiResult<bool> {
        self.hashing(move || password::verify(&secret, &phc)).await
    }

    // ---- domains ----------------------------------------------------------

    /// Creates a domain (needs the global `domains.admin` right).
    pub async fn create_domain(
        &self,
        p: &Principal,
        req: v1::CreateDomainRequest,
    ) -> ApiResult<v1::Domain> {
        let id = DomainId::parse(&req.id)?;
        if !p.has_global_right(rights::DOMAINS_ADMIN) {
            return Err(ApiError::denied("not allowed to create domains"));
        }
        let name = text::check("name", &req.name, MAX_NAME)?;
        let dns_name = check_dns_name(&req.dns_name)?;
        let inc = incarnation::fresh();
        self.write(move |tx| {
            let k = key(keys::DOMAIN, &[id.as_str()]);
            if tx.exists(&k)? {
                return Err(ApiError::AlreadyExists(format!(
                    "domain {id} already exists"
                )));
            }
            require_unused_dns_name(tx, &id, &dns_name)?;
            let now = now_ms();
            let d = v1::Domain {
                id: id.to_string(),
                name: name.clone(),
                dns_name: dns_name.clone(),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
            };
            tx.put(k, &d);
            // A domain created again under an old id is a new tenant: no
            // token of the earlier one applies to it.
            tx.put_raw(
                incarnation::domain_key(id.as_str()),
                inc.to_be_bytes().to_vec(),
            );
            tx.emit(event(&id, Ek::Domain, Ck::Created, id.as_str(), 1, vec![]));
            Ok(d)
        })
        .await
    }

    /// Returns a domain the caller belongs to.
    pub async fn get_domain(
        &self,
        p: &Principal,
        req: v1::GetDomainRequest,
    ) -> ApiResult<v1::Domain> {
        let id = DomainId::parse(&req.id)?;
        role(p, &id)?.require_browse()?;
        self.read(move |s| s.domain(&id)).await
    }

    /// Lists the domains the caller may see, ordered by id.
    pub async fn list_domains(
        &self,
        p: &Principal,
        req: v1::ListDomainsRequest,
    ) -> ApiResult<v1::ListDomainsResponse> {
        let p = p.clone();
        let n = page_size(req.page_size);
        presence_core::check_page_token(&req.page_token, DomainId::parse)?;
        self.read(move |s| {
            let prefix = keys::prefix(keys::DOMAIN, &[]);
            let after = (!req.page_token.is_empty()).then(|| key(keys::DOMAIN, &[&req.page_token]));
            let mut out = Vec::new();
            let mut more = false;
            for r in s.scan(&prefix, after.as_deref()) {
                let (_, v) = r?;
                let d: v1::Domain = crate::store::decode(&v)?;
                let Ok(id) = DomainId::parse(&d.id) else {
                    continue;
                };
                if !p.in_domain(&id) {
                    continue;
                }
                if out.len() == n {
                    more = true;
                    break;
                }
                out.push(d);
            }
            let next_page_token = match (more, out.last()) {
                (true, Some(d)) => d.id.clone(),
                _ => String::new(),
            };
            Ok(v1::ListDomainsResponse {
                domains: out,
                next_page_token,
            })
        })
        .await
    }

    /// Updates a domain's name or DNS name (office manager or
    /// `directory.write`).
    pub async fn update_domain(
        &self,
        p: &Principal,
        req: v1::UpdateDomainRequest,
    ) -> ApiResult<v1::Domain> {
        let id = DomainId::parse(&req.id)?;
        role(p, &id)?.require_admin("update this domain")?;
        let name = req
            .name
            .as_deref()
            .map(|n| text::check("name", n, MAX_NAME))
            .transpose()?;
        let dns = req.dns_name.as_deref().map(check_dns_name).transpose()?;
        self.write(move |tx| {
            let mut d = tx.domain(&id)?;
            check_version(&format!("domain {id}"), d.version, req.expected_version)?;
            if let Some(n) = name.clone() {
                d.name = n;
            }
            if let Some(n) = dns.clone() {
                require_unused_dns_name(tx, &id, &n)?;
                d.dns_name = n;
            }
            d.version += 1;
            d.updated_at_ms = now_ms();
            tx.put(key(keys::DOMAIN, &[id.as_str()]), &d);
            tx.emit(event(
                &id,
                Ek::Domain,
                Ck::Updated,
                id.as_str(),
                d.version,
                vec![],
            ));
            Ok(d)
        })
        .await
    }

    /// Deletes a domain (global `domains.admin`); with `force`, everything
    /// in it goes too.
    pub async fn delete_domain(
        &self,
        p: &Principal,
        req: v1::DeleteDomainRequest,
    ) -> ApiResult<v1::DeleteResponse> {
        let id = DomainId::parse(&req.id)?;
        if !p.has_global_right(rights::DOMAINS_ADMIN) {
            // Indistinguishable from a missing domain for tenants.
            p.require_domain(&id)?;
            return Err(ApiError::denied("not allowed to delete domains"));
        }
        let hooks = self.hooks();
        let audit = crate::audit::Auditor::new(p);
        self.write(move |tx| {
            let d = tx.domain(&id)?;
            check_version(&format!("domain {id}"), d.version, req.expected_version)?;
            let has_children = !tx
                .keys_with_prefix(&keys::prefix(keys::USER, &[id.as_str()]))?
                .is_empty()
                || !tx
                    .keys_with_prefix(&keys::prefix(keys::SITE, &[id.as_str()]))?
                    .is_empty();
            if has_children && !req.force {
                return Err(ApiError::FailedPrecondition(format!(
                    "domain {id} still has sites or users; delete them or set force"
                )));
            }
            // Welcome tokens are keyed globally: find them through the
            // per-user index first.
            for k in tx.keys_with_prefix(&keys::prefix(keys::WELCOME_BY_USER, &[id.as_str()]))? {
                if let Some(h) = tx.raw(&k)? {
                    tx.delete(key(keys::WELCOME, &[&String::from_utf8_lossy(&h)]));
                }
            }
            for tag in [
                keys::PHONE,
                keys::INCARNATION,
                keys::SITE,
                keys::USER,
                keys::OPTIONS,
                keys::CREDENTIALS,
                keys::PHONE_BY_USER,
                keys::QUEUE,
                keys::WELCOME_BY_USER,
                keys::INDEX,
                // The tenant's trail goes with it: a domain created again
                // under this id must not read it (the deletion itself is
                // in the deployment-wide trail).
                crate::audit::TRAIL,
                crate::audit::BY_USER,
            ] {
                tx.delete_prefix(&keys::prefix(tag, &[id.as_str()]))?;
            }
            audit.record(
                tx,
                None,
                "",
                "domain.delete",
                format!("domain {id} ({})", d.name),
                String::new(),
            );
            for h in &hooks {
                h.domain_deleted(tx, &id)?;
            }
            tx.delete(key(keys::DOMAIN, &[id.as_str()]));
            tx.delete(incarnation::domain_key(id.as_str()));
            tx.emit(event(
                &id,
                Ek::Domain,
                Ck::Deleted,
                id.as_str(),
                d.version,
                vec![],
            ));
            Ok(v1::DeleteResponse {})
        })
        .await
    }

    // ---- sites ------------------------------------------------------------

    /// Creates a site (office manager or `directory.write`).
    pub async fn create_site(
        &self,
        p: &Principal,
        req: v1::CreateSiteRequest,
    ) -> ApiResult<v1::Site> {
        let d = DomainId::parse(&req.domain)?;
        let id = SiteId::parse(&req.id)?;
        role(p, &d)?.require_admin("create sites")?;
        let name = text::check("name", &req.name, MAX_NAME)?;
        let address = text::check("address", &req.address, MAX_TEXT)?;
        let time_zone = text::check("time_zone", &req.time_zone, MAX_NAME)?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let k = key(keys::SITE, &[d.as_str(), id.as_str()]);
            if tx.exists(&k)? {
                return Err(ApiError::AlreadyExists(format!(
                    "site {id} already exists in domain {d}"
                )));
            }
            let now = now_ms();
            let s = v1::Site {
                domain: d.to_string(),
                id: id.to_string(),
                name: name.clone(),
                address: address.clone(),
                time_zone: time_zone.clone(),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
            };
            tx.put(k, &s);
            tx.emit(event(&d, Ek::Site, Ck::Created, id.as_str(), 1, vec![]));
            Ok(s)
        })
        .await
    }

    /// Returns a site.
    pub async fn get_site(&self, p: &Principal, req: v1::GetSiteRequest) -> ApiResult<v1::Site> {
        let d = DomainId::parse(&req.domain)?;
        let id = SiteId::parse(&req.id)?;
        role(p, &d)?.require_browse()?;
        self.read(move |s| {
            s.domain(&d)?;
            s.site(&d, &id)
        })
        .await
    }

    /// Lists the sites of a domain, ordered by id.
    pub async fn list_sites(
        &self,
        p: &Principal,
        req: v1::ListSitesRequest,
    ) -> ApiResult<v1::ListSitesResponse> {
        let d = DomainId::parse(&req.domain)?;
        role(p, &d)?.require_browse()?;
        let n = page_size(req.page_size);
        presence_core::check_page_token(&req.page_token, SiteId::parse)?;
        self.read(move |s| {
            s.domain(&d)?;
            let prefix = keys::prefix(keys::SITE, &[d.as_str()]);
            let after = (!req.page_token.is_empty())
                .then(|| key(keys::SITE, &[d.as_str(), &req.page_token]));
            let (sites, next_page_token) =
                page::<v1::Site>(s, &prefix, after.as_deref(), n, |x| x.id.clone())?;
            Ok(v1::ListSitesResponse {
                sites,
                next_page_token,
            })
        })
        .await
    }

    /// Updates a site (office manager or `directory.write`).
    pub async fn update_site(
        &self,
        p: &Principal,
        req: v1::UpdateSiteRequest,
    ) -> ApiResult<v1::Site> {
        let d = DomainId::parse(&req.domain)?;
        let id = SiteId::parse(&req.id)?;
        role(p, &d)?.require_admin("update sites")?;
        let name = req
            .name
            .as_deref()
            .map(|v| text::check("name", v, MAX_NAME))
            .transpose()?;
        let address = req
            .address
            .as_deref()
            .map(|v| text::check("address", v, MAX_TEXT))
            .transpose()?;
        let tz = req
            .time_zone
            .as_deref()
            .map(|v| text::check("time_zone", v, MAX_NAME))
            .transpose()?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let mut s = tx.site(&d, &id)?;
            check_version(&format!("site {id}"), s.version, req.expected_version)?;
            if let Some(v) = name.clone() {
                s.name = v;
            }
            if let Some(v) = address.clone() {
                s.address = v;
            }
            if let Some(v) = tz.clone() {
                s.time_zone = v;
            }
            s.version += 1;
            s.updated_at_ms = now_ms();
            tx.put(key(keys::SITE, &[d.as_str(), id.as_str()]), &s);
            tx.emit(event(
                &d,
                Ek::Site,
                Ck::Updated,
                id.as_str(),
                s.version,
                vec![],
            ));
            Ok(s)
        })
        .await
    }

    /// Deletes a site that no user belongs to.
    pub async fn delete_site(
        &self,
        p: &Principal,
        req: v1::DeleteSiteRequest,
    ) -> ApiResult<v1::DeleteResponse> {
        let d = DomainId::parse(&req.domain)?;
        let id = SiteId::parse(&req.id)?;
        role(p, &d)?.require_admin("delete sites")?;
        let hooks = self.hooks();
        self.write(move |tx| {
            tx.domain(&d)?;
            let s = tx.site(&d, &id)?;
            check_version(&format!("site {id}"), s.version, req.expected_version)?;
            for k in tx.keys_with_prefix(&keys::prefix(keys::USER, &[d.as_str()]))? {
                if let Some(u) = tx.record::<v1::User>(&k)?
                    && u.site == id.as_str()
                {
                    return Err(ApiError::FailedPrecondition(format!(
                        "site {id} still has users (e.g. {}); move or delete them first",
                        u.id
                    )));
                }
            }
            for h in &hooks {
                h.site_deleted(tx, &d, &id)?;
            }
            tx.delete(key(keys::SITE, &[d.as_str(), id.as_str()]));
            tx.emit(event(
                &d,
                Ek::Site,
                Ck::Deleted,
                id.as_str(),
                s.version,
                vec![],
            ));
            Ok(v1::DeleteResponse {})
        })
        .await
    }
}

/// Returns the last `\0`-separated component of a key.
pub(crate) fn last_component(k: &[u8]) -> Option<String> {
    k.rsplit(|b| *b == keys::SEP)
        .next()
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// Reads one page of records under `prefix`.
pub(crate) fn page<M: Message + Default>(
    s: &Store,
    prefix: &[u8],
    after: Option<&[u8]>,
    n: usize,
    token: impl Fn(&M) -> String,
) -> ApiResult<(Vec<M>, String)> {
    let mut out = Vec::new();
    let mut more = false;
    for r in s.scan(prefix, after) {
        let (_, v) = r?;
        if out.len() == n {
            more = true;
            break;
        }
        out.push(crate::store::decode::<M>(&v)?);
    }
    let next = match (more, out.last()) {
        (true, Some(m)) => token(m),
        _ => String::new(),
    };
    Ok((out, next))
}

/// Validates an optional DNS name.
/// Refuses `dns` (already checked and lowercased) when a domain other
/// than `id` uses it: the DNS name is the tenant's SIP realm, so two
/// tenants cannot share one. Domains are few and this runs only when a
/// DNS name is set, so a scan is cheap.
fn require_unused_dns_name(tx: &Tx<'_>, id: &DomainId, dns: &str) -> ApiResult<()> {
    if dns.is_empty() {
        return Ok(());
    }
    for k in tx.keys_with_prefix(&keys::prefix(keys::DOMAIN, &[]))? {
        if let Some(other) = tx.record::<v1::Domain>(&k)?
            && other.id != id.as_str()
            && other.dns_name == dns
        {
            return Err(ApiError::AlreadyExists(format!(
                "dns_name {dns} is used by another domain"
            )));
        }
    }
    Ok(())
}

fn check_dns_name(s: &str) -> ApiResult<String> {
    let v = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if v.is_empty() {
        return Ok(v);
    }
    let ok = v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if ok {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!("invalid dns_name {s:?}")))
    }
}
