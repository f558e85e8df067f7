//! Phones: MAC unique within a domain, owned by one user.
//!
//! MACs are keyed per domain, so one tenant can neither squat nor detect
//! a phone of another: adding a MAC that another domain uses is answered
//! exactly as for a free MAC.

use crate::authz::role;
use crate::records::{Read, check_version, event, incarnation};
use crate::service::{Directory, key, page_size};
use crate::store::keys;
use crate::users::scope_of;
use presence_auth::Principal;
use presence_auth::token::now_ms;
use presence_core::text::{self, MAX_LINE_KEYS, MAX_NAME};
use presence_core::{ApiError, ApiResult, DomainId, Mac, UserId};
use presence_proto::v1::{self, ChangeKind as Ck, EntityKind as Ek};

/// Kinds of line keys a phone may have.
pub const LINE_KEY_KINDS: &[&str] = &["line", "blf", "speed_dial", "park"];

fn check_line_keys(keys_in: Vec<v1::LineKey>) -> ApiResult<Vec<v1::LineKey>> {
    if keys_in.len() > MAX_LINE_KEYS {
        return Err(ApiError::invalid(format!(
            "too many line keys: {}, at most {MAX_LINE_KEYS}",
            keys_in.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(keys_in.len());
    for k in keys_in {
        if k.index == 0 || k.index as usize > MAX_LINE_KEYS {
            return Err(ApiError::invalid(format!(
                "line key index {} out of range 1..{MAX_LINE_KEYS}",
                k.index
            )));
        }
        if !seen.insert(k.index) {
            return Err(ApiError::invalid(format!(
                "line key index {} used twice",
                k.index
            )));
        }
        if !LINE_KEY_KINDS.contains(&k.kind.as_str()) {
            return Err(ApiError::invalid(format!(
                "line key {}: kind {:?} is not one of {}",
                k.index,
                k.kind,
                LINE_KEY_KINDS.join(", ")
            )));
        }
        let value = text::check("line key value", &k.value, MAX_NAME)?;
        if k.kind == "blf" {
            UserId::parse(&value)?;
        }
        out.push(v1::LineKey {
            index: k.index,
            kind: k.kind,
            value,
            label: text::check("line key label", &k.label, MAX_NAME)?,
        });
    }
    out.sort_by_key(|k| k.index);
    Ok(out)
}

impl Directory {
    /// Adds a phone to a user. The MAC is unique within the domain.
    pub async fn add_phone(&self, p: &Principal, req: v1::AddPhoneRequest) -> ApiResult<v1::Phone> {
        let d = DomainId::parse(&req.domain)?;
        let owner = UserId::parse(&req.user)?;
        let mac = Mac::parse(&req.mac)?;
        let r = role(p, &d)?;
        let model = text::check("model", &req.model, MAX_NAME)?;
        let label = text::check("label", &req.label, MAX_NAME)?;
        let line_keys = check_line_keys(req.line_keys)?;
        let inc = incarnation::fresh();
        self.write(move |tx| {
            tx.domain(&d)?;
            let u = tx.user(&d, &owner)?;
            r.require_manage(
                &u.site,
                scope_of(&u),
                &format!("add phones to user {owner}"),
            )?;
            let k = key(keys::PHONE, &[d.as_str(), mac.as_str()]);
            if tx.exists(&k)? {
                return Err(ApiError::AlreadyExists(format!(
                    "phone {mac} already exists in domain {d}"
                )));
            }
            let now = now_ms();
            let ph = v1::Phone {
                mac: mac.to_string(),
                domain: d.to_string(),
                user: owner.to_string(),
                model: model.clone(),
                label: label.clone(),
                line_keys: line_keys.clone(),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
            };
            tx.put(k, &ph);
            tx.put_raw(
                incarnation::phone_key(d.as_str(), mac.as_str()),
                inc.to_be_bytes().to_vec(),
            );
            tx.put_raw(
                key(
                    keys::PHONE_BY_USER,
                    &[d.as_str(), owner.as_str(), mac.as_str()],
                ),
                Vec::new(),
            );
            tx.emit(event(
                &d,
                Ek::Phone,
                Ck::Created,
                mac.as_str(),
                1,
                vec![format!("user:{owner}")],
            ));
            Ok(ph)
        })
        .await
    }

    /// Returns a phone of the domain.
    pub async fn get_phone(&self, p: &Principal, req: v1::GetPhoneRequest) -> ApiResult<v1::Phone> {
        let d = DomainId::parse(&req.domain)?;
        let mac = Mac::parse(&req.mac)?;
        let r = role(p, &d)?;
        self.read(move |s| {
            s.domain(&d)?;
            let ph = s.phone(&d, &mac)?;
            let owner = s.user(&d, &UserId::parse(&ph.user)?)?;
            r.require_read_user(&owner.id, &owner.site, scope_of(&owner))?;
            Ok(ph)
        })
        .await
    }

    /// Edits a phone; may move it to another user of the same domain.
    pub async fn update_phone(
        &self,
        p: &Principal,
        req: v1::UpdatePhoneRequest,
    ) -> ApiResult<v1::Phone> {
        let d = DomainId::parse(&req.domain)?;
        let mac = Mac::parse(&req.mac)?;
        let r = role(p, &d)?;
        let model = req
            .model
            .as_deref()
            .map(|v| text::check("model", v, MAX_NAME))
            .transpose()?;
        let label = req
            .label
            .as_deref()
            .map(|v| text::check("label", v, MAX_NAME))
            .transpose()?;
        let line_keys = if req.replace_line_keys {
            Some(check_line_keys(req.line_keys)?)
        } else {
            None
        };
        let new_owner = req.user.as_deref().map(UserId::parse).transpose()?;
        let inc = incarnation::fresh();
        self.write(move |tx| {
            tx.domain(&d)?;
            let mut ph = tx.phone(&d, &mac)?;
            let owner = tx.user(&d, &UserId::parse(&ph.user)?)?;
            r.require_manage(&owner.site, scope_of(&owner), &format!("edit phone {mac}"))?;
            check_version(&format!("phone {mac}"), ph.version, req.expected_version)?;
            let mut facts = Vec::new();
            if let Some(no) = new_owner.clone()
                && no.as_str() != ph.user
            {
                let nu = tx.user(&d, &no)?;
                r.require_manage(
                    &nu.site,
                    scope_of(&nu),
                    &format!("give phones to user {no}"),
                )?;
                tx.delete(key(
                    keys::PHONE_BY_USER,
                    &[d.as_str(), &ph.user, mac.as_str()],
                ));
                tx.put_raw(
                    key(
                        keys::PHONE_BY_USER,
                        &[d.as_str(), no.as_str(), mac.as_str()],
                    ),
                    Vec::new(),
                );
                // Another owner, another identity: the phone's tokens end
                // and do not come back if it is moved back.
                tx.put_raw(
                    incarnation::phone_key(d.as_str(), mac.as_str()),
                    inc.to_be_bytes().to_vec(),
                );
                facts.push(format!("moved_from:{}", ph.user));
                ph.user = no.to_string();
            }
            if let Some(v) = model.clone() {
                ph.model = v;
            }
            if let Some(v) = label.clone() {
                ph.label = v;
            }
            if let Some(v) = line_keys.clone() {
                ph.line_keys = v;
            }
            ph.version += 1;
            ph.updated_at_ms = now_ms();
            facts.push(format!("user:{}", ph.user));
            tx.put(key(keys::PHONE, &[d.as_str(), mac.as_str()]), &ph);
            tx.emit(event(
                &d,
                Ek::Phone,
                Ck::Updated,
                mac.as_str(),
                ph.version,
                facts,
            ));
            Ok(ph)
        })
        .await
    }

    /// Deletes a phone.
    pub async fn delete_phone(
        &self,
        p: &Principal,
        req: v1::DeletePhoneRequest,
    ) -> ApiResult<v1::DeleteResponse> {
        let d = DomainId::parse(&req.domain)?;
        let mac = Mac::parse(&req.mac)?;
        let r = role(p, &d)?;
        self.write(move |tx| {
            tx.domain(&d)?;
            let ph = tx.phone(&d, &mac)?;
            let owner = tx.user(&d, &UserId::parse(&ph.user)?)?;
            r.require_manage(
                &owner.site,
                scope_of(&owner),
                &format!("delete phone {mac}"),
            )?;
            check_version(&format!("phone {mac}"), ph.version, req.expected_version)?;
            tx.delete(key(keys::PHONE, &[d.as_str(), mac.as_str()]));
            tx.delete(incarnation::phone_key(d.as_str(), mac.as_str()));
            tx.delete(key(
                keys::PHONE_BY_USER,
                &[d.as_str(), &ph.user, mac.as_str()],
            ));
            tx.emit(event(
                &d,
                Ek::Phone,
                Ck::Deleted,
                mac.as_str(),
                ph.version,
                vec![format!("user:{}", ph.user)],
            ));
            Ok(v1::DeleteResponse {})
        })
        .await
    }

    /// Lists the phones of one user, or of the whole domain (for callers
    /// that may read every user it covers), ordered by owner then MAC.
    pub async fn list_phones(
        &self,
        p: &Principal,
        req: v1::ListPhonesRequest,
    ) -> ApiResult<v1::ListPhonesResponse> {
        let d = DomainId::parse(&req.domain)?;
        let owner = if req.user.is_empty() {
            None
        } else {
            Some(UserId::parse(&req.user)?)
        };
        let r = role(p, &d)?;
        let n = page_size(req.page_size);
        self.read(move |s| {
            s.domain(&d)?;
            let prefix = match &owner {
                Some(o) => {
                    let u = s.user(&d, o)?;
                    r.require_read_user(&u.id, &u.site, scope_of(&u))?;
                    keys::prefix(keys::PHONE_BY_USER, &[d.as_str(), o.as_str()])
                }
                None => {
                    r.require_browse()?;
                    keys::prefix(keys::PHONE_BY_USER, &[d.as_str()])
                }
            };
            // Page token: "<user>/<mac>" of the last phone returned.
            let after = match req.page_token.split_once('/') {
                Some((u, m)) => Some(key(keys::PHONE_BY_USER, &[d.as_str(), u, m])),
                None if req.page_token.is_empty() => None,
                None => return Err(ApiError::invalid("invalid page_token")),
            };
            let mut phones = Vec::new();
            let mut more = false;
            let mut owners: std::collections::HashMap<String, bool> = Default::default();
            for row in s.scan(&prefix, after.as_deref()) {
                let (k, _) = row?;
                let Some(mac) = crate::service::last_component(&k) else {
                    continue;
                };
                let Ok(mac) = Mac::parse(&mac) else { continue };
                let Ok(ph) = s.phone(&d, &mac) else { continue };
                let visible = match owners.get(&ph.user) {
                    Some(v) => *v,
                    None => {
                        let v = match s.user(&d, &UserId::parse(&ph.user)?) {
                            Ok(u) => r.reads_user(&u.id, &u.site, scope_of(&u)),
                            Err(_) => false,
                        };
                        owners.insert(ph.user.clone(), v);
                        v
                    }
                };
                if !visible {
                    continue;
                }
                if phones.len() == n {
                    more = true;
                    break;
                }
                phones.push(ph);
            }
            let next_page_token = match (more, phones.last()) {
                (true, Some(ph)) => format!("{}/{}", ph.user, ph.mac),
                _ => String::new(),
            };
            Ok(v1::ListPhonesResponse {
                phones,
                next_page_token,
            })
        })
        .await
    }
}
