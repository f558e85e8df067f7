//! User options (answering rules, voicemail) and the advanced actions:
//! reset, welcome, force password reset.

use crate::authz::role;
use crate::records::WelcomeRecord;
use crate::records::{Read, check_email, check_version, event, void_welcome};
use crate::service::{Directory, key, token_hash};
use crate::store::keys;
use crate::users::{default_options, kind_of, scope_of};
use base64::Engine;
use presence_auth::Principal;
use presence_auth::token::{now_ms, random_bytes};
use presence_bus::subjects;
use presence_core::text::{self, MAX_ANSWERING_RULES, MAX_TEXT};
use presence_core::{ApiError, ApiResult, Capability, DomainId, UserId, UserKind};
use presence_proto::v1::{self, ChangeKind as Ck, EntityKind as Ek, forward_target::Target};
use prost::Message;
use std::time::Duration;

/// Ring timeout used when a rule gives none.
pub const DEFAULT_RING_TIMEOUT: u32 = 20;

fn check_rules(
    d: &DomainId,
    owner: &str,
    rules: Vec<v1::AnsweringRule>,
    tx: &impl Read,
) -> ApiResult<Vec<v1::AnsweringRule>> {
    if rules.len() > MAX_ANSWERING_RULES {
        return Err(ApiError::invalid(format!(
            "too many answering rules: {}, at most {MAX_ANSWERING_RULES}",
            rules.len()
        )));
    }
    let mut out = Vec::with_capacity(rules.len());
    for (i, mut r) in rules.into_iter().enumerate() {
        let n = i + 1;
        match v1::RuleCondition::try_from(r.condition) {
            Ok(v1::RuleCondition::Unspecified) | Err(_) => {
                return Err(ApiError::invalid(format!(
                    "answering rule {n}: condition must be set"
                )));
            }
            Ok(_) => {}
        }
        r.ring_timeout_seconds = match r.ring_timeout_seconds {
            0 => DEFAULT_RING_TIMEOUT,
            t @ 5..=300 => t,
            t => {
                return Err(ApiError::invalid(format!(
                    "answering rule {n}: ring_timeout_seconds {t} out of range 5..300"
                )));
            }
        };
        let target = r.forward_to.as_ref().and_then(|f| f.target.clone());
        let target = match target {
            None => {
                return Err(ApiError::invalid(format!(
                    "answering rule {n}: forward_to must be set"
                )));
            }
            Some(Target::User(u)) => {
                let uid = UserId::parse(&u)?;
                if uid.as_str() == owner {
                    return Err(ApiError::invalid(format!(
                        "answering rule {n}: cannot forward to itself"
                    )));
                }
                tx.user(d, &uid)?;
                Target::User(u)
            }
            Some(Target::ExternalNumber(num)) => Target::ExternalNumber(text::check_number(&num)?),
            Some(Target::Voicemail(true)) => Target::Voicemail(true),
            Some(Target::Voicemail(false)) => {
                return Err(ApiError::invalid(format!(
                    "answering rule {n}: voicemail target must be true"
                )));
            }
        };
        r.forward_to = Some(v1::ForwardTarget {
            target: Some(target),
        });
        out.push(r);
    }
    Ok(out)
}

impl Directory {
    /// Returns a user's answering rules and voicemail options.
    pub async fn get_user_options(
        &self,
        p: &Principal,
        req: v1::GetUserOptionsRequest,
    ) -> ApiResult<v1::UserOptions> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.user)?;
        let r = role(p, &d)?;
        self.read(move |s| {
            s.domain(&d)?;
            let u = s.user(&d, &id)?;
            r.require_options(&u.id, &u.site, scope_of(&u), false)?;
            s.options(&d, &id)
        })
        .await
    }

    /// Replaces a user's ordered answering rules.
    pub async fn set_answering_rules(
        &self,
        p: &Principal,
        req: v1::SetAnsweringRulesRequest,
    ) -> ApiResult<v1::UserOptions> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.user)?;
        let r = role(p, &d)?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let u = tx.user(&d, &id)?;
            r.require_options(&u.id, &u.site, scope_of(&u), true)?;
            let mut o = tx.options(&d, &id)?;
            check_version(
                &format!("options of user {id}"),
                o.version,
                req.expected_version,
            )?;
            o.answering_rules = check_rules(&d, id.as_str(), req.answering_rules.clone(), tx)?;
            o.version += 1;
            tx.put(key(keys::OPTIONS, &[d.as_str(), id.as_str()]), &o);
            tx.emit(event(
                &d,
                Ek::UserOptions,
                Ck::Updated,
                id.as_str(),
                o.version,
                vec![],
            ));
            Ok(o)
        })
        .await
    }

    /// Updates voicemail options; a PIN is stored only as a salted slow
    /// hash.
    pub async fn update_voicemail(
        &self,
        p: &Principal,
        req: v1::UpdateVoicemailRequest,
    ) -> ApiResult<v1::UserOptions> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.user)?;
        let r = role(p, &d)?;
        let greeting = req
            .greeting
            .as_deref()
            .map(|g| text::check("greeting", g, MAX_TEXT))
            .transpose()?;
        let email = req
            .notification_email
            .as_deref()
            .map(check_email)
            .transpose()?;
        let pin_hash = match req.pin {
            Some(pin) => {
                text::check_pin(&pin)?;
                Some(self.hash(pin).await?)
            }
            None => None,
        };
        self.write(move |tx| {
            tx.domain(&d)?;
            let u = tx.user(&d, &id)?;
            r.require_options(&u.id, &u.site, scope_of(&u), true)?;
            let mut o = tx.options(&d, &id)?;
            check_version(
                &format!("options of user {id}"),
                o.version,
                req.expected_version,
            )?;
            let vm = o.voicemail.get_or_insert_with(Default::default);
            if let Some(en) = req.enabled {
                if en
                    && !(scope_of(&u).has(Capability::Voicemail) && kind_of(&u) == UserKind::Person)
                {
                    return Err(ApiError::FailedPrecondition(format!(
                        "user {id} has scope {} without voicemail",
                        scope_of(&u).name()
                    )));
                }
                vm.enabled = en;
            }
            if let Some(g) = greeting.clone() {
                vm.greeting = g;
            }
            if let Some(e) = email.clone() {
                vm.notification_email = e;
            }
            if let Some(h) = pin_hash.clone() {
                let mut c = tx.credentials(&d, &id)?;
                c.pin_hash = h;
                tx.put(key(keys::CREDENTIALS, &[d.as_str(), id.as_str()]), &c);
                vm.pin_set = true;
            }
            o.version += 1;
            tx.put(key(keys::OPTIONS, &[d.as_str(), id.as_str()]), &o);
            tx.emit(event(
                &d,
                Ek::UserOptions,
                Ck::Updated,
                id.as_str(),
                o.version,
                vec![],
            ));
            Ok(o)
        })
        .await
    }

    /// Puts answering rules and voicemail back to defaults (PIN cleared)
    /// and ends every session of the user.
    pub async fn reset_user(
        &self,
        p: &Principal,
        req: v1::ResetUserRequest,
    ) -> ApiResult<v1::User> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.user)?;
        let r = role(p, &d)?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let mut u = tx.user(&d, &id)?;
            r.require_manage(&u.site, scope_of(&u), &format!("reset user {id}"))?;
            let o = tx.options(&d, &id)?;
            tx.put(
                key(keys::OPTIONS, &[d.as_str(), id.as_str()]),
                &default_options(&d, &u, o.version + 1),
            );
            let mut c = tx.credentials(&d, &id)?;
            c.pin_hash.clear();
            c.session_epoch += 1;
            tx.put(key(keys::CREDENTIALS, &[d.as_str(), id.as_str()]), &c);
            void_welcome(tx, &d, &id)?;
            u.version += 1;
            u.updated_at_ms = now_ms();
            tx.put(key(keys::USER, &[d.as_str(), id.as_str()]), &u);
            tx.emit(event(
                &d,
                Ek::UserOptions,
                Ck::Updated,
                id.as_str(),
                o.version + 1,
                vec!["reset".into()],
            ));
            tx.emit(event(
                &d,
                Ek::User,
                Ck::Updated,
                id.as_str(),
                u.version,
                vec!["sessions:invalidated".into()],
            ));
            Ok(u)
        })
        .await
    }

    /// Issues a single-use, expiring welcome token (replacing any earlier
    /// one) and publishes a welcome mail request for a mailer.
    pub async fn send_welcome(
        &self,
        p: &Principal,
        req: v1::SendWelcomeRequest,
    ) -> ApiResult<v1::SendWelcomeResponse> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.user)?;
        let r = role(p, &d)?;
        let ttl = match req.ttl_seconds {
            0 => self.config().welcome_ttl,
            s if s > 30 * 24 * 3600 => {
                return Err(ApiError::invalid(format!("ttl_seconds {s} above 30 days")));
            }
            s => Duration::from_secs(s),
        };
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32));
        let hash = token_hash(&token);
        let expires_at_ms = now_ms() + ttl.as_millis() as i64;
        let tok = token.clone();
        let mail = self
            .write(move |tx| {
                tx.domain(&d)?;
                let u = tx.user(&d, &id)?;
                r.require_manage(
                    &u.site,
                    scope_of(&u),
                    &format!("send a welcome to user {id}"),
                )?;
                if kind_of(&u) != UserKind::Person || !scope_of(&u).has(Capability::Portal) {
                    return Err(ApiError::FailedPrecondition(format!(
                        "user {id} has no portal access; a welcome would be useless"
                    )));
                }
                let wu = key(keys::WELCOME_BY_USER, &[d.as_str(), id.as_str()]);
                if let Some(old) = tx.raw(&wu)? {
                    tx.delete(key(keys::WELCOME, &[&String::from_utf8_lossy(&old)]));
                }
                tx.put(
                    key(keys::WELCOME, &[&hash]),
                    &WelcomeRecord {
                        domain: d.to_string(),
                        user: id.to_string(),
                        expires_at_ms,
                    },
                );
                tx.put_raw(wu, hash.clone().into_bytes());
                tx.emit(event(
                    &d,
                    Ek::Credentials,
                    Ck::Updated,
                    id.as_str(),
                    u.version,
                    vec!["welcome".into()],
                ));
                Ok(v1::WelcomeMail {
                    domain: d.to_string(),
                    user: id.to_string(),
                    email: u.profile.map(|p| p.email).unwrap_or_default(),
                    welcome_token: tok.clone(),
                    expires_at_ms,
                })
            })
            .await?;
        if let Ok(domain) = DomainId::parse(&mail.domain)
            && let Err(e) = self
                .bus()
                .publish(subjects::mail(&domain), mail.encode_to_vec().into())
                .await
        {
            tracing::warn!(error = %e, domain = %domain, user = %mail.user, "welcome mail not published");
        }
        Ok(v1::SendWelcomeResponse {
            welcome_token: token,
            expires_at_ms,
        })
    }

    /// Ends every session of the user and requires a new password at the
    /// next login.
    pub async fn force_password_reset(
        &self,
        p: &Principal,
        req: v1::ForcePasswordResetRequest,
    ) -> ApiResult<v1::User> {
        let d = DomainId::parse(&req.domain)?;
        let id = UserId::parse(&req.user)?;
        let r = role(p, &d)?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let mut u = tx.user(&d, &id)?;
            r.require_manage(
                &u.site,
                scope_of(&u),
                &format!("force a password reset of user {id}"),
            )?;
            let mut c = tx.credentials(&d, &id)?;
            c.reset_required = true;
            c.session_epoch += 1;
            tx.put(key(keys::CREDENTIALS, &[d.as_str(), id.as_str()]), &c);
            void_welcome(tx, &d, &id)?;
            u.password_reset_required = true;
            u.version += 1;
            u.updated_at_ms = now_ms();
            tx.put(key(keys::USER, &[d.as_str(), id.as_str()]), &u);
            tx.emit(event(
                &d,
                Ek::User,
                Ck::Updated,
                id.as_str(),
                u.version,
                vec!["sessions:invalidated".into()],
            ));
            Ok(u)
        })
        .await
    }
}
