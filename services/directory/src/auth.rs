//! AuthService: logins, welcome acceptance, password changes, token
//! issuance, and the session validator every server's interceptor uses.

use crate::records::{Read, WelcomeRecord, event, incarnation, void_welcome};
use crate::service::{Directory, key, token_hash};
use crate::store::{Store, keys};
use crate::users::{kind_of, scope_of};
use presence_auth::principal::parse_rights;
use presence_auth::token::{Claims, Subject, now_ms};
use presence_auth::{DomainSet, Principal, SessionValidator, rights};
use presence_core::text;
use presence_core::{ApiError, ApiResult, Capability, DomainId, Mac, SiteId, UserId, UserKind};
use presence_proto::v1::{self, ChangeKind as Ck, EntityKind as Ek};
use std::sync::Arc;

fn invalid_credentials() -> ApiError {
    ApiError::Unauthenticated("invalid credentials".into())
}

/// What a user session token is bound to: the user's incarnation and
/// its session epoch at issue time.
/// (A message, so a replicated write can keep it as its answer.)
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Session {
    #[prost(uint64, tag = "1")]
    epoch: u64,
    #[prost(uint64, tag = "2")]
    inc: u64,
}

/// A user with the session its new token is bound to.
#[derive(Clone, PartialEq, prost::Message)]
struct UserSession {
    #[prost(message, optional, tag = "1")]
    user: Option<v1::User>,
    #[prost(message, optional, tag = "2")]
    session: Option<Session>,
}

/// Reads the session a new token of `d`/`u` is bound to.
fn session_of(r: &impl Read, d: &DomainId, u: &UserId, epoch: u64) -> ApiResult<Session> {
    Ok(Session {
        epoch,
        inc: r.incarnation(&incarnation::user_key(d.as_str(), u.as_str()))?,
    })
}

impl Directory {
    fn user_token(&self, d: &DomainId, u: &UserId, session: Session) -> (String, i64) {
        let ttl = self.config().session_ttl.as_millis() as i64;
        let (t, c) = self.signer().issue(
            Subject::User {
                domain: d.to_string(),
                user: u.to_string(),
                epoch: session.epoch,
                inc: session.inc,
            },
            ttl,
        );
        (t, c.exp)
    }

    fn login_response(
        &self,
        d: &DomainId,
        u: &v1::User,
        session: Session,
    ) -> ApiResult<v1::LoginResponse> {
        let uid = UserId::parse(&u.id)?;
        let (token, expires_at_ms) = self.user_token(d, &uid, session);
        let principal = Principal::User {
            domain: d.clone(),
            user: uid,
            scope: scope_of(u),
            site: if u.site.is_empty() {
                None
            } else {
                SiteId::parse(&u.site).ok()
            },
        };
        Ok(v1::LoginResponse {
            token,
            principal: Some(principal.to_proto()),
            expires_at_ms,
        })
    }

    /// Checks a password login and returns a session token. Unknown
    /// users, wrong passwords and unknown domains all answer
    /// "invalid credentials", after the same amount of hashing work.
    /// `peer` is the caller's address, logged with each failure.
    pub async fn login(
        &self,
        req: v1::LoginRequest,
        peer: Option<std::net::SocketAddr>,
    ) -> ApiResult<v1::LoginResponse> {
        let ip = peer.map(|a| a.ip());
        let now = tokio::time::Instant::now();
        if let Err(t) = self.throttle().check(&req.domain, &req.user, ip, now) {
            metrics::counter!("presence_logins_total", "result" => "throttled").increment(1);
            metrics::counter!(
                "presence_login_throttled_total",
                "by" => if t.account { "account" } else { "address" }
            )
            .increment(1);
            let secs = t.wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(ApiError::RetryLater {
                message: format!(
                    "too many failed logins for this account or address; retry after {secs} s"
                ),
                retry_after_secs: secs,
            });
        }
        let failed = |reason: &'static str| {
            self.throttle().failed(&req.domain, &req.user, ip, now);
            metrics::counter!("presence_logins_total", "result" => "failed").increment(1);
            // The names as given (bounded, control characters escaped by
            // Debug), never the password.
            let clip = |s: &str| s.chars().take(80).collect::<String>();
            tracing::warn!(
                domain = ?clip(&req.domain),
                user = ?clip(&req.user),
                peer = %peer.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                reason,
                "login failed"
            );
        };
        let parsed = DomainId::parse(&req.domain).and_then(|d| Ok((d, UserId::parse(&req.user)?)));
        let found = match &parsed {
            Ok((d, id)) => {
                let (dd, ii) = (d.clone(), id.clone());
                self.read(move |s| match s.user(&dd, &ii) {
                    Ok(u) => {
                        let c = s.credentials(&dd, &ii)?;
                        let session = session_of(s, &dd, &ii, c.session_epoch)?;
                        Ok(Some((u, c, session)))
                    }
                    Err(ApiError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                })
                .await?
            }
            Err(_) => None,
        };
        let (u, creds, mut session) = match found {
            Some((u, c, s)) if !c.password_hash.is_empty() => (u, c, s),
            _ => {
                self.verify(req.password.clone(), self.dummy_hash().to_owned())
                    .await?;
                failed("unknown user or no password");
                return Err(invalid_credentials());
            }
        };
        let Ok((d, id)) = parsed else {
            return Err(invalid_credentials());
        };
        if !self
            .verify(req.password.clone(), creds.password_hash.clone())
            .await?
        {
            failed("wrong password");
            return Err(invalid_credentials());
        }
        // The right password: the account's failures are forgiven.
        self.throttle().succeeded(&req.domain, &req.user);
        if kind_of(&u) != UserKind::Person || !scope_of(&u).has(Capability::Portal) {
            failed("no portal access");
            return Err(ApiError::denied(format!(
                "scope {} has no portal access",
                scope_of(&u).name()
            )));
        }
        match (creds.reset_required, req.new_password) {
            (false, None) => {}
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "new_password is only taken when a password reset is required; \
                     use ChangePassword",
                ));
            }
            (true, None) => {
                return Err(ApiError::FailedPrecondition(
                    "password reset required: log in again with new_password".into(),
                ));
            }
            (true, Some(new_pw)) => {
                text::check_password(&new_pw)?;
                if self
                    .verify(new_pw.clone(), creds.password_hash.clone())
                    .await?
                {
                    return Err(ApiError::invalid(
                        "new_password must differ from the current password",
                    ));
                }
                let hash = self.hash(new_pw).await?;
                let (dd, ii) = (d.clone(), id.clone());
                let inc = session.inc;
                session = self
                    .write(move |tx| {
                        // The account may have been deleted and created
                        // again since the password was checked.
                        let now = session_of(tx, &dd, &ii, 0)?;
                        if now.inc != inc {
                            return Err(invalid_credentials());
                        }
                        let mut c = tx.credentials(&dd, &ii)?;
                        let mut u = tx.user(&dd, &ii)?;
                        c.password_hash = hash.clone();
                        c.reset_required = false;
                        c.session_epoch += 1;
                        u.password_reset_required = false;
                        u.version += 1;
                        tx.put(key(keys::CREDENTIALS, &[dd.as_str(), ii.as_str()]), &c);
                        tx.put(key(keys::USER, &[dd.as_str(), ii.as_str()]), &u);
                        void_welcome(tx, &dd, &ii)?;
                        tx.emit(event(
                            &dd,
                            Ek::User,
                            Ck::Updated,
                            ii.as_str(),
                            u.version,
                            vec!["password".into()],
                        ));
                        Ok(Session {
                            epoch: c.session_epoch,
                            inc,
                        })
                    })
                    .await?;
            }
        }
        metrics::counter!("presence_logins_total", "result" => "ok").increment(1);
        tracing::info!(domain = %d, user = %id, "login");
        self.login_response(&d, &u, session)
    }

    /// Consumes a welcome token: sets the password (and PIN), clears a
    /// pending reset, ends other sessions and logs the user in.
    pub async fn accept_welcome(
        &self,
        req: v1::AcceptWelcomeRequest,
    ) -> ApiResult<v1::LoginResponse> {
        text::check_password(&req.password)?;
        if let Some(pin) = &req.voicemail_pin {
            text::check_pin(pin)?;
        }
        let pw_hash = self.hash(req.password).await?;
        let pin_hash = match req.voicemail_pin {
            Some(pin) => Some(self.hash(pin).await?),
            None => None,
        };
        let h = token_hash(req.welcome_token.trim());
        let UserSession { user: u, session } = self
            .write(move |tx| {
                let bad = || ApiError::Unauthenticated("invalid or expired welcome token".into());
                let wk = key(keys::WELCOME, &[&h]);
                let w: WelcomeRecord = tx.record(&wk)?.ok_or_else(bad)?;
                let d = DomainId::parse(&w.domain).map_err(|_| bad())?;
                let id = UserId::parse(&w.user).map_err(|_| bad())?;
                if w.expires_at_ms <= now_ms() {
                    return Err(bad());
                }
                let mut u = tx.user(&d, &id).map_err(|_| bad())?;
                let mut c = tx.credentials(&d, &id)?;
                c.password_hash = pw_hash.clone();
                c.reset_required = false;
                c.session_epoch += 1;
                if let Some(ph) = pin_hash.clone() {
                    c.pin_hash = ph;
                    let mut o = tx.options(&d, &id)?;
                    o.voicemail.get_or_insert_with(Default::default).pin_set = true;
                    o.version += 1;
                    tx.put(key(keys::OPTIONS, &[d.as_str(), id.as_str()]), &o);
                }
                u.has_password = true;
                u.password_reset_required = false;
                u.version += 1;
                tx.put(key(keys::CREDENTIALS, &[d.as_str(), id.as_str()]), &c);
                tx.put(key(keys::USER, &[d.as_str(), id.as_str()]), &u);
                tx.delete(wk);
                tx.delete(key(keys::WELCOME_BY_USER, &[d.as_str(), id.as_str()]));
                tx.emit(event(
                    &d,
                    Ek::User,
                    Ck::Updated,
                    id.as_str(),
                    u.version,
                    vec!["welcome:accepted".into()],
                ));
                let session = session_of(tx, &d, &id, c.session_epoch)?;
                Ok(UserSession {
                    user: Some(u),
                    session: Some(session),
                })
            })
            .await?;
        let (u, session) = (u.unwrap_or_default(), session.unwrap_or_default());
        let d = DomainId::parse(&u.domain)?;
        self.login_response(&d, &u, session)
    }

    /// Changes the caller's own password and returns a fresh token; every
    /// other session of the user ends.
    pub async fn change_password(
        &self,
        p: &Principal,
        req: v1::ChangePasswordRequest,
    ) -> ApiResult<v1::ChangePasswordResponse> {
        let Principal::User { domain, user, .. } = p else {
            return Err(ApiError::denied("only users have passwords"));
        };
        // The caller's token was checked against the current incarnation
        // when this call began; the write below checks it again.
        text::check_password(&req.new_password)?;
        let (d, id) = (domain.clone(), user.clone());
        let (dd, ii) = (d.clone(), id.clone());
        let (creds, inc) = self
            .read(move |s| {
                let c = s.credentials(&dd, &ii)?;
                let inc = session_of(s, &dd, &ii, 0)?.inc;
                Ok((c, inc))
            })
            .await?;
        if !self.verify(req.old_password, creds.password_hash).await? {
            return Err(invalid_credentials());
        }
        let hash = self.hash(req.new_password).await?;
        let (dd, ii) = (d.clone(), id.clone());
        let session = self
            .write(move |tx| {
                if session_of(tx, &dd, &ii, 0)?.inc != inc {
                    return Err(ApiError::Unauthenticated(
                        "session ended; log in again".into(),
                    ));
                }
                let mut c = tx.credentials(&dd, &ii)?;
                c.password_hash = hash.clone();
                c.reset_required = false;
                c.session_epoch += 1;
                tx.put(key(keys::CREDENTIALS, &[dd.as_str(), ii.as_str()]), &c);
                void_welcome(tx, &dd, &ii)?;
                tx.emit(event(
                    &dd,
                    Ek::Credentials,
                    Ck::Updated,
                    ii.as_str(),
                    0,
                    vec!["sessions:invalidated".into()],
                ));
                Ok(Session {
                    epoch: c.session_epoch,
                    inc,
                })
            })
            .await?;
        let (token, _) = self.user_token(&d, &id, session);
        Ok(v1::ChangePasswordResponse { token })
    }

    /// Issues a token for a service or a phone. The caller needs
    /// `tokens.issue` in every domain named, and cannot hand out a right
    /// it does not hold itself.
    pub async fn issue_token(
        &self,
        p: &Principal,
        req: v1::IssueTokenRequest,
    ) -> ApiResult<v1::IssueTokenResponse> {
        let ttl_ms = match req.ttl_seconds {
            0 => self.config().service_token_ttl.as_millis() as i64,
            s if s > 10 * 365 * 24 * 3600 => {
                return Err(ApiError::invalid(format!("ttl_seconds {s} above 10 years")));
            }
            s => (s * 1000) as i64,
        };
        let subject = match req.subject {
            None => return Err(ApiError::invalid("subject must be a service or a phone")),
            Some(v1::issue_token_request::Subject::Service(s)) => {
                let name = text::check("name", &s.name, text::MAX_NAME)?;
                if name.is_empty() {
                    return Err(ApiError::invalid("service name must be set"));
                }
                if RESERVED_SERVICE_NAMES.contains(&name.as_str()) {
                    return Err(ApiError::invalid(format!(
                        "service name {name:?} is reserved"
                    )));
                }
                let domains = DomainSet::parse(&s.domains)?;
                let wanted = parse_rights(&s.rights)?;
                authorize_issue(p, &domains, &wanted)?;
                // Bind the token to each domain's current incarnation; a
                // domain that does not exist gets no token.
                let incs = match &domains {
                    DomainSet::All => Vec::new(),
                    DomainSet::Some(ds) => {
                        let ds = ds.clone();
                        self.read(move |s| {
                            ds.iter()
                                .map(|d| {
                                    s.domain(d)?;
                                    s.incarnation(&incarnation::domain_key(d.as_str()))
                                })
                                .collect::<ApiResult<Vec<u64>>>()
                        })
                        .await?
                    }
                };
                Subject::Service {
                    name,
                    domains: domains.to_strings(),
                    rights: wanted,
                    incs,
                }
            }
            Some(v1::issue_token_request::Subject::Phone(ph)) => {
                let d = DomainId::parse(&ph.domain)?;
                let mac = Mac::parse(&ph.mac)?;
                p.require_domain(&d)?;
                if !p.has_right(&d, rights::TOKENS_ISSUE) {
                    return Err(ApiError::denied("not allowed to issue tokens"));
                }
                let dd = d.clone();
                let (phone, inc) = self
                    .read(move |s| {
                        let ph = s.phone(&dd, &mac)?;
                        let inc = s.incarnation(&incarnation::phone_key(dd.as_str(), &ph.mac))?;
                        Ok((ph, inc))
                    })
                    .await?;
                // A token names the owner it is for: one asked for another
                // user is refused, never bound to the real owner.
                if !ph.user.is_empty() && ph.user != phone.user {
                    return Err(ApiError::invalid(format!(
                        "phone {} does not belong to user {}",
                        phone.mac, ph.user
                    )));
                }
                Subject::Phone {
                    domain: d.to_string(),
                    user: phone.user,
                    mac: phone.mac,
                    inc,
                }
            }
        };
        let (trails, user, about) = token_trails(&subject);
        let (token, claims) = self.signer().issue(subject, ttl_ms);
        let token_id = presence_auth::token::token_id(&token);
        let audit = crate::audit::Auditor::new(p);
        let after = format!(
            "{about} token_id={token_id} key={} expires_at_ms={}",
            presence_auth::token::key_id_of(&token).unwrap_or("-"),
            claims.exp
        );
        self.write(move |tx| {
            for d in &trails {
                audit.record(
                    tx,
                    d.as_ref(),
                    &user,
                    "token.issue",
                    String::new(),
                    after.clone(),
                );
            }
            Ok(())
        })
        .await?;
        tracing::info!(by = %p.describe(), %token_id, "token issued");
        Ok(v1::IssueTokenResponse {
            token,
            expires_at_ms: claims.exp,
            token_id,
        })
    }

    /// Revokes one token (see `RevokeToken` in auth.proto). `own` is the
    /// id of the token the caller presented: revoking it is a logout,
    /// always allowed.
    pub async fn revoke_token(
        &self,
        p: &Principal,
        own: Option<&str>,
        req: v1::RevokeTokenRequest,
    ) -> ApiResult<v1::RevokeTokenResponse> {
        use presence_auth::token::{is_token_id, token_id};
        // Where the revocation is recorded: the trails of the domains the
        // token names (by id alone: deployment-wide).
        let mut trails: Vec<Option<DomainId>> = vec![None];
        let mut about = (String::new(), String::from("token"));
        let (id, exp) = match (req.token.is_empty(), req.token_id.is_empty()) {
            (false, true) => {
                let claims = self
                    .signer()
                    .verify_signature(&req.token)
                    .map_err(|_| ApiError::invalid("token is not a token of this deployment"))?;
                let id = token_id(&req.token);
                if own != Some(id.as_str()) {
                    authorize_revoke(p, &claims.sub)?;
                }
                let (t, user, what) = token_trails(&claims.sub);
                trails = t;
                about = (user, what);
                if claims.exp <= presence_auth::token::now_ms() {
                    return Ok(v1::RevokeTokenResponse {
                        token_id: id,
                        revoked: false,
                    });
                }
                (id, claims.exp)
            }
            (true, false) => {
                if !is_token_id(&req.token_id) {
                    return Err(ApiError::invalid(format!(
                        "token_id {} is not 32 lowercase hex digits",
                        text::shown(&req.token_id)
                    )));
                }
                if own != Some(req.token_id.as_str()) && !p.has_global_right(rights::TOKENS_ISSUE) {
                    return Err(ApiError::denied(
                        "revoking a token by id alone needs tokens.issue for every domain",
                    ));
                }
                let exp = match req.expires_at_ms {
                    0 => presence_auth::token::now_ms() + TEN_YEARS_MS,
                    e => e,
                };
                (req.token_id, exp)
            }
            _ => return Err(ApiError::invalid("give token or token_id, not both")),
        };
        let k = key(keys::REVOKED, &[id.as_str()]);
        let audit = crate::audit::Auditor::new(p);
        let id2 = id.clone();
        self.write(move |tx| {
            tx.put(
                k.clone(),
                &crate::records::RevokedRecord { expires_at_ms: exp },
            );
            for d in &trails {
                audit.record(
                    tx,
                    d.as_ref(),
                    &about.0,
                    "token.revoke",
                    format!("{} token_id={id2}", about.1),
                    "revoked".into(),
                );
            }
            Ok(())
        })
        .await?;
        tracing::info!(by = %p.describe(), token_id = %id, "token revoked");
        Ok(v1::RevokeTokenResponse {
            token_id: id,
            revoked: true,
        })
    }
}

/// The longest a token lives (IssueToken's limit), for revocations by id.
const TEN_YEARS_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// Whether `p` may revoke another's token of `sub`: the right to issue
/// tokens for every domain it names.
fn authorize_revoke(p: &Principal, sub: &Subject) -> ApiResult<()> {
    let ok = match sub {
        Subject::User { domain, .. } | Subject::Phone { domain, .. } => {
            DomainId::parse(domain).is_ok_and(|d| p.has_right(&d, rights::TOKENS_ISSUE))
        }
        Subject::Service { domains, .. } => match DomainSet::parse(domains) {
            Ok(DomainSet::All) | Err(_) => p.has_global_right(rights::TOKENS_ISSUE),
            Ok(DomainSet::Some(ds)) => ds.iter().all(|d| p.has_right(d, rights::TOKENS_ISSUE)),
        },
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::denied(
            "not allowed to revoke tokens for these domains",
        ))
    }
}

/// Service names no issued token may take: the bootstrap administrator's
/// token is written by the server itself.
pub const RESERVED_SERVICE_NAMES: &[&str] = &["bootstrap-admin"];

fn authorize_issue(p: &Principal, domains: &DomainSet, wanted: &[String]) -> ApiResult<()> {
    let holds = |right: &str| -> bool {
        match domains {
            DomainSet::All => p.has_global_right(right),
            DomainSet::Some(ds) => ds.iter().all(|d| p.has_right(d, right)),
        }
    };
    if !holds(rights::TOKENS_ISSUE) {
        return Err(ApiError::denied(
            "not allowed to issue tokens for these domains",
        ));
    }
    for r in wanted {
        if !holds(r) {
            return Err(ApiError::denied(format!(
                "cannot hand out right {r} it does not hold"
            )));
        }
    }
    Ok(())
}

/// Validates token claims against the current directory: a user session
/// is valid while the same incarnation of the user exists with the same
/// session epoch and a portal scope; a phone token while the same
/// incarnation of the phone belongs to the same user; a service token
/// keeps its rights in each named domain while that domain's incarnation
/// is the one it was issued for.
pub struct StoreValidator {
    store: Arc<Store>,
}

impl StoreValidator {
    /// Returns a validator reading `store`, which holds the directory
    /// (every node does: over NATS, every node replicates it).
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl SessionValidator for StoreValidator {
    fn revoked(&self, token_id: &str) -> ApiResult<bool> {
        Ok(self
            .store
            .get_raw(&key(keys::REVOKED, &[token_id]))?
            .is_some())
    }

    fn validate(&self, claims: &Claims) -> ApiResult<Principal> {
        let expired = || ApiError::Unauthenticated("session ended; log in again".into());
        match &claims.sub {
            Subject::User {
                domain,
                user,
                epoch,
                inc,
            } => {
                let d = DomainId::parse(domain).map_err(|_| expired())?;
                let id = UserId::parse(user).map_err(|_| expired())?;
                let u = self.store.user(&d, &id).map_err(|_| expired())?;
                let c = self.store.credentials(&d, &id)?;
                let now = session_of(self.store.as_ref(), &d, &id, c.session_epoch)?;
                if now.inc != *inc || c.session_epoch != *epoch || c.reset_required {
                    return Err(expired());
                }
                let scope = scope_of(&u);
                if !scope.has(Capability::Portal) {
                    return Err(ApiError::denied(format!(
                        "scope {} has no portal access",
                        scope.name()
                    )));
                }
                Ok(Principal::User {
                    domain: d,
                    user: id,
                    scope,
                    site: if u.site.is_empty() {
                        None
                    } else {
                        SiteId::parse(&u.site).ok()
                    },
                })
            }
            Subject::Phone {
                domain,
                user,
                mac,
                inc,
            } => {
                let d = DomainId::parse(domain).map_err(|_| expired())?;
                let m = Mac::parse(mac).map_err(|_| expired())?;
                let ph = self.store.phone(&d, &m).map_err(|_| expired())?;
                let now = self
                    .store
                    .incarnation(&incarnation::phone_key(d.as_str(), m.as_str()))?;
                if ph.user != *user || now != *inc {
                    return Err(expired());
                }
                Ok(Principal::Phone {
                    domain: d,
                    user: UserId::parse(user).map_err(|_| expired())?,
                    mac: m,
                })
            }
            Subject::Service {
                name,
                domains,
                rights,
                incs,
            } => {
                let set = match DomainSet::parse(domains).map_err(|_| expired())? {
                    DomainSet::Some(ds) => {
                        DomainSet::Some(live_domains(self.store.as_ref(), ds, incs)?)
                    }
                    DomainSet::All => DomainSet::All,
                };
                if matches!(&set, DomainSet::Some(ds) if ds.is_empty()) {
                    return Err(ApiError::Unauthenticated(
                        "token ended: every domain it was issued for was deleted".into(),
                    ));
                }
                Ok(Principal::Service {
                    name: name.clone(),
                    domains: set,
                    rights: rights.clone(),
                })
            }
        }
    }
}

/// Returns the domains of `ds` that still exist with the incarnation of
/// the same position in `incs` (0 for tokens and domains from before
/// incarnations).
fn live_domains(r: &impl Read, ds: Vec<DomainId>, incs: &[u64]) -> ApiResult<Vec<DomainId>> {
    let mut out = Vec::with_capacity(ds.len());
    for (i, d) in ds.into_iter().enumerate() {
        let want = incs.get(i).copied().unwrap_or(0);
        let exists = r.raw(&key(keys::DOMAIN, &[d.as_str()]))?.is_some();
        if exists && r.incarnation(&incarnation::domain_key(d.as_str()))? == want {
            out.push(d);
        }
    }
    Ok(out)
}

/// The audit trails a token belongs in (`None`: deployment-wide), the
/// user it is about (phones: the owner) and a short description.
fn token_trails(sub: &Subject) -> (Vec<Option<DomainId>>, String, String) {
    match sub {
        Subject::User { domain, user, .. } => (
            vec![DomainId::parse(domain).ok()],
            user.clone(),
            format!("session of user {domain}/{user}"),
        ),
        Subject::Phone {
            domain, user, mac, ..
        } => (
            vec![DomainId::parse(domain).ok()],
            user.clone(),
            format!("phone {mac}"),
        ),
        Subject::Service {
            name,
            domains,
            rights,
            ..
        } => {
            let trails = match DomainSet::parse(domains) {
                Ok(DomainSet::Some(ds)) => ds.into_iter().map(Some).collect(),
                _ => vec![None],
            };
            (
                trails,
                String::new(),
                format!(
                    "service {name} domains={} rights={}",
                    crate::audit::list(domains),
                    crate::audit::list(rights)
                ),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::admin;

    fn d(s: &str) -> DomainId {
        DomainId::parse(s).unwrap()
    }

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    /// A directory with acme (site hq; users 1001 basic at hq, 1002
    /// simple; phone aa:bb of 1001) and globex.
    async fn setup(dir: &std::path::Path) -> (Directory, Arc<Store>) {
        let (dirc, store) = crate::testing::directory(dir);
        let p = admin();
        for id in ["acme", "globex"] {
            dirc.create_domain(
                &p,
                v1::CreateDomainRequest {
                    id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        dirc.create_site(
            &p,
            v1::CreateSiteRequest {
                domain: "acme".into(),
                id: "hq".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for (id, scope, site) in [
            ("1001", v1::Scope::BasicUser, "hq"),
            ("1002", v1::Scope::SimpleUser, ""),
        ] {
            dirc.create_user(
                &p,
                v1::CreateUserRequest {
                    domain: "acme".into(),
                    id: id.into(),
                    scope: scope as i32,
                    site: site.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        dirc.add_phone(
            &p,
            v1::AddPhoneRequest {
                domain: "acme".into(),
                user: "1001".into(),
                mac: "00:04:f2:aa:bb:cc".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        (dirc, store)
    }

    fn user_claims(store: &Store, user: &str, epoch_delta: i64, inc_delta: i64) -> Claims {
        let (dd, uu) = (d("acme"), u(user));
        let c = store.credentials(&dd, &uu).unwrap();
        let inc = store
            .incarnation(&incarnation::user_key("acme", user))
            .unwrap();
        Claims {
            sub: Subject::User {
                domain: "acme".into(),
                user: user.into(),
                epoch: c.session_epoch.wrapping_add_signed(epoch_delta),
                inc: inc.wrapping_add_signed(inc_delta),
            },
            iat: 0,
            exp: i64::MAX,
        }
    }

    fn ended() -> ApiError {
        ApiError::Unauthenticated("session ended; log in again".into())
    }

    #[tokio::test]
    async fn test_user_sessions_hold_only_for_the_same_life_epoch_and_a_portal_scope() {
        let tmp = tempfile::tempdir().unwrap();
        let (dirc, store) = setup(tmp.path()).await;
        let v = StoreValidator::new(store.clone());
        let p = v.validate(&user_claims(&store, "1001", 0, 0)).unwrap();
        assert_eq!(
            p,
            Principal::User {
                domain: d("acme"),
                user: u("1001"),
                scope: presence_core::Scope::BasicUser,
                site: Some(SiteId::parse("hq").unwrap()),
            }
        );
        for (epoch, inc) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
            assert_eq!(
                v.validate(&user_claims(&store, "1001", epoch, inc)),
                Err(ended())
            );
        }
        // No portal for simple users.
        let e = v.validate(&user_claims(&store, "1002", 0, 0)).unwrap_err();
        assert!(matches!(e, ApiError::PermissionDenied(_)), "{e:?}");
        // A forced reset ends the session until the new password is set.
        dirc.force_password_reset(
            &admin(),
            v1::ForcePasswordResetRequest {
                domain: "acme".into(),
                user: "1001".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(v.validate(&user_claims(&store, "1001", 0, 0)), Err(ended()));
        // Unknown or malformed names.
        for (dom, user) in [
            ("acme", "9999"),
            ("nowhere", "1001"),
            ("Bad Domain", "1001"),
            ("acme", "bad user"),
        ] {
            let c = Claims {
                sub: Subject::User {
                    domain: dom.into(),
                    user: user.into(),
                    epoch: 1,
                    inc: 0,
                },
                iat: 0,
                exp: i64::MAX,
            };
            assert_eq!(v.validate(&c), Err(ended()), "{dom}/{user}");
        }
    }

    #[tokio::test]
    async fn test_phone_and_service_tokens_hold_for_the_same_life_of_what_they_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (_dirc, store) = setup(tmp.path()).await;
        let v = StoreValidator::new(store.clone());
        let inc = store
            .incarnation(&incarnation::phone_key("acme", "0004f2aabbcc"))
            .unwrap();
        let phone = |domain: &str, user: &str, mac: &str, inc: u64| Claims {
            sub: Subject::Phone {
                domain: domain.into(),
                user: user.into(),
                mac: mac.into(),
                inc,
            },
            iat: 0,
            exp: i64::MAX,
        };
        assert_eq!(
            v.validate(&phone("acme", "1001", "0004f2aabbcc", inc))
                .unwrap(),
            Principal::Phone {
                domain: d("acme"),
                user: u("1001"),
                mac: Mac::parse("0004f2aabbcc").unwrap(),
            }
        );
        for c in [
            phone("acme", "1002", "0004f2aabbcc", inc),
            phone("acme", "1001", "0004f2aabbcc", inc + 1),
            phone("acme", "1001", "0004f2aabbcd", inc),
            phone("globex", "1001", "0004f2aabbcc", inc),
            phone("acme", "1001", "not a mac", inc),
            phone("Bad", "1001", "0004f2aabbcc", inc),
        ] {
            assert_eq!(v.validate(&c), Err(ended()), "{c:?}");
        }

        let dinc = |id: &str| store.incarnation(&incarnation::domain_key(id)).unwrap();
        let service = |domains: &[&str], incs: Vec<u64>| Claims {
            sub: Subject::Service {
                name: "gw".into(),
                domains: domains.iter().map(|d| d.to_string()).collect(),
                rights: vec!["presence.watch".into()],
                incs,
            },
            iat: 0,
            exp: i64::MAX,
        };
        let domains_of = |p: Principal| match p {
            Principal::Service { domains, .. } => domains,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            domains_of(v.validate(&service(&["*"], vec![])).unwrap()),
            DomainSet::All
        );
        assert_eq!(
            domains_of(
                v.validate(&service(
                    &["acme", "globex"],
                    vec![dinc("acme"), dinc("globex")]
                ))
                .unwrap()
            ),
            DomainSet::Some(vec![d("acme"), d("globex")])
        );
        // One domain of another life (or of none): only the other holds.
        assert_eq!(
            domains_of(
                v.validate(&service(
                    &["acme", "globex"],
                    vec![dinc("acme") + 1, dinc("globex")]
                ))
                .unwrap()
            ),
            DomainSet::Some(vec![d("globex")])
        );
        assert_eq!(
            domains_of(
                v.validate(&service(&["acme", "initech"], vec![dinc("acme"), 0]))
                    .unwrap()
            ),
            DomainSet::Some(vec![d("acme")])
        );
        let none = v
            .validate(&service(&["acme"], vec![dinc("acme") + 1]))
            .unwrap_err();
        assert!(none.message().contains("every domain"), "{none:?}");
        // A token without incarnations (issued before them) names life 0.
        assert!(v.validate(&service(&["acme"], vec![])).is_err());
        assert!(v.validate(&service(&["Bad Domain"], vec![0])).is_err());
    }

    #[tokio::test]
    async fn test_revocations_are_seen_by_id() {
        let tmp = tempfile::tempdir().unwrap();
        let (dirc, store) = setup(tmp.path()).await;
        let v = StoreValidator::new(store);
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(v.revoked(id), Ok(false));
        dirc.revoke_token(
            &admin(),
            None,
            v1::RevokeTokenRequest {
                token_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(v.revoked(id), Ok(true));
        assert_eq!(v.revoked("ffffffffffffffffffffffffffffffff"), Ok(false));
    }

    #[test]
    fn test_issuing_and_revoking_need_the_rights_for_every_domain() {
        let acme_only = Principal::Service {
            name: "t".into(),
            domains: DomainSet::Some(vec![d("acme")]),
            rights: vec![rights::TOKENS_ISSUE.into(), rights::PRESENCE_WATCH.into()],
        };
        let acme = DomainSet::Some(vec![d("acme")]);
        let both = DomainSet::Some(vec![d("acme"), d("globex")]);
        let watch = vec![rights::PRESENCE_WATCH.to_string()];
        assert!(authorize_issue(&acme_only, &acme, &watch).is_ok());
        assert!(authorize_issue(&acme_only, &both, &watch).is_err());
        assert!(authorize_issue(&acme_only, &DomainSet::All, &watch).is_err());
        let more = vec![rights::DIRECTORY_WRITE.to_string()];
        let e = authorize_issue(&acme_only, &acme, &more).unwrap_err();
        assert!(e.message().contains("directory.write"), "{e:?}");
        assert!(authorize_issue(&admin(), &DomainSet::All, &more).is_ok());
        let user_sub = |domain: &str| Subject::User {
            domain: domain.into(),
            user: "1001".into(),
            epoch: 1,
            inc: 0,
        };
        let svc_sub = |domains: &[&str]| Subject::Service {
            name: "x".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            rights: vec![],
            incs: vec![],
        };
        assert!(authorize_revoke(&acme_only, &user_sub("acme")).is_ok());
        assert!(authorize_revoke(&acme_only, &user_sub("globex")).is_err());
        assert!(authorize_revoke(&acme_only, &user_sub("Bad")).is_err());
        assert!(authorize_revoke(&acme_only, &svc_sub(&["acme"])).is_ok());
        assert!(authorize_revoke(&acme_only, &svc_sub(&["acme", "globex"])).is_err());
        assert!(authorize_revoke(&acme_only, &svc_sub(&["*"])).is_err());
        assert!(authorize_revoke(&admin(), &svc_sub(&["*"])).is_ok());
        assert!(authorize_revoke(&admin(), &svc_sub(&["Bad"])).is_ok());
        assert!(authorize_revoke(&acme_only, &svc_sub(&["Bad"])).is_err());
    }
}
