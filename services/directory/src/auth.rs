//! AuthService: logins, welcome acceptance, password changes, token
//! issuance, and the session validator every server's interceptor uses.

use crate::records::{Read, WelcomeRecord, event};
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

impl Directory {
    fn user_token(&self, d: &DomainId, u: &UserId, epoch: u64) -> (String, i64) {
        let ttl = self.config().session_ttl.as_millis() as i64;
        let (t, c) = self.signer().issue(
            Subject::User {
                domain: d.to_string(),
                user: u.to_string(),
                epoch,
            },
            ttl,
        );
        (t, c.exp)
    }

    fn login_response(
        &self,
        d: &DomainId,
        u: &v1::User,
        epoch: u64,
    ) -> ApiResult<v1::LoginResponse> {
        let uid = UserId::parse(&u.id)?;
        let (token, expires_at_ms) = self.user_token(d, &uid, epoch);
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
    pub async fn login(&self, req: v1::LoginRequest) -> ApiResult<v1::LoginResponse> {
        let d = DomainId::parse(&req.domain).map_err(|_| invalid_credentials())?;
        let id = UserId::parse(&req.user).map_err(|_| invalid_credentials())?;
        let (dd, ii) = (d.clone(), id.clone());
        let found = self
            .read(move |s| match s.user(&dd, &ii) {
                Ok(u) => Ok(Some((u, s.credentials(&dd, &ii)?))),
                Err(ApiError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
        let (u, creds) = match found {
            Some((u, c)) if !c.password_hash.is_empty() => (u, c),
            _ => {
                self.verify(req.password, self.dummy_hash().to_owned())
                    .await?;
                metrics::counter!("presence_logins_total", "result" => "failed").increment(1);
                return Err(invalid_credentials());
            }
        };
        if !self
            .verify(req.password, creds.password_hash.clone())
            .await?
        {
            metrics::counter!("presence_logins_total", "result" => "failed").increment(1);
            return Err(invalid_credentials());
        }
        if kind_of(&u) != UserKind::Person || !scope_of(&u).has(Capability::Portal) {
            return Err(ApiError::denied(format!(
                "scope {} has no portal access",
                scope_of(&u).name()
            )));
        }
        let mut epoch = creds.session_epoch;
        if creds.reset_required {
            let Some(new_pw) = req.new_password else {
                return Err(ApiError::FailedPrecondition(
                    "password reset required: log in again with new_password".into(),
                ));
            };
            text::check_password(&new_pw)?;
            let hash = self.hash(new_pw).await?;
            let (dd, ii) = (d.clone(), id.clone());
            epoch = self
                .write(move |tx| {
                    let mut c = tx.credentials(&dd, &ii)?;
                    let mut u = tx.user(&dd, &ii)?;
                    c.password_hash = hash;
                    c.reset_required = false;
                    c.session_epoch += 1;
                    u.password_reset_required = false;
                    u.version += 1;
                    tx.put(key(keys::CREDENTIALS, &[dd.as_str(), ii.as_str()]), &c);
                    tx.put(key(keys::USER, &[dd.as_str(), ii.as_str()]), &u);
                    tx.emit(event(
                        &dd,
                        Ek::User,
                        Ck::Updated,
                        ii.as_str(),
                        u.version,
                        vec!["password".into()],
                    ));
                    Ok(c.session_epoch)
                })
                .await?;
        }
        metrics::counter!("presence_logins_total", "result" => "ok").increment(1);
        tracing::info!(domain = %d, user = %id, "login");
        self.login_response(&d, &u, epoch)
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
        let (u, epoch) = self
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
                c.password_hash = pw_hash;
                c.reset_required = false;
                c.session_epoch += 1;
                if let Some(ph) = pin_hash {
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
                Ok((u, c.session_epoch))
            })
            .await?;
        let d = DomainId::parse(&u.domain)?;
        self.login_response(&d, &u, epoch)
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
        text::check_password(&req.new_password)?;
        let (d, id) = (domain.clone(), user.clone());
        let (dd, ii) = (d.clone(), id.clone());
        let creds = self.read(move |s| s.credentials(&dd, &ii)).await?;
        if !self.verify(req.old_password, creds.password_hash).await? {
            return Err(invalid_credentials());
        }
        let hash = self.hash(req.new_password).await?;
        let (dd, ii) = (d.clone(), id.clone());
        let epoch = self
            .write(move |tx| {
                let mut c = tx.credentials(&dd, &ii)?;
                c.password_hash = hash;
                c.reset_required = false;
                c.session_epoch += 1;
                tx.put(key(keys::CREDENTIALS, &[dd.as_str(), ii.as_str()]), &c);
                tx.emit(event(
                    &dd,
                    Ek::Credentials,
                    Ck::Updated,
                    ii.as_str(),
                    0,
                    vec!["sessions:invalidated".into()],
                ));
                Ok(c.session_epoch)
            })
            .await?;
        let (token, _) = self.user_token(&d, &id, epoch);
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
                let domains = DomainSet::parse(&s.domains)?;
                let wanted = parse_rights(&s.rights)?;
                authorize_issue(p, &domains, &wanted)?;
                Subject::Service {
                    name,
                    domains: domains.to_strings(),
                    rights: wanted,
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
                let phone = self.read(move |s| s.phone(&dd, &mac)).await?;
                Subject::Phone {
                    domain: d.to_string(),
                    user: phone.user,
                    mac: phone.mac,
                }
            }
        };
        let (token, claims) = self.signer().issue(subject, ttl_ms);
        tracing::info!(by = %p.describe(), "token issued");
        Ok(v1::IssueTokenResponse {
            token,
            expires_at_ms: claims.exp,
        })
    }
}

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
/// is valid while the user exists with the same session epoch and a
/// portal scope; a phone token while the phone belongs to the same user.
pub struct StoreValidator {
    store: Arc<Store>,
}

impl StoreValidator {
    /// Returns a validator reading `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl SessionValidator for StoreValidator {
    fn validate(&self, claims: &Claims) -> ApiResult<Principal> {
        let expired = || ApiError::Unauthenticated("session ended; log in again".into());
        match &claims.sub {
            Subject::User {
                domain,
                user,
                epoch,
            } => {
                let d = DomainId::parse(domain).map_err(|_| expired())?;
                let id = UserId::parse(user).map_err(|_| expired())?;
                let u = self.store.user(&d, &id).map_err(|_| expired())?;
                let c = self.store.credentials(&d, &id)?;
                if c.session_epoch != *epoch || c.reset_required {
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
            Subject::Phone { domain, user, mac } => {
                let d = DomainId::parse(domain).map_err(|_| expired())?;
                let m = Mac::parse(mac).map_err(|_| expired())?;
                let ph = self.store.phone(&d, &m).map_err(|_| expired())?;
                if ph.user != *user {
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
            } => Ok(Principal::Service {
                name: name.clone(),
                domains: DomainSet::parse(domains).map_err(|_| expired())?,
                rights: rights.clone(),
            }),
        }
    }
}
