//! Cascades run inside directory transactions: nothing the policy keeps
//! may outlive the user, site or domain it names, and every change that
//! can alter who sees whom bumps the domain's policy epoch.

use crate::records::{
    self, DOMAIN_SCOPED, GRANTS, GRANTS_BY_SITE, GRANTS_BY_USER, LINES, SETTINGS, bump_epoch,
    put_grants,
};
use presence_core::{ApiResult, DomainId, SiteId, UserId};
use presence_directory::DirectoryHooks;
use presence_directory::records::Read;
use presence_directory::store::{Tx, keys};
use presence_proto::v1::{self, grantee::Kind as G};

/// The policy's directory hooks.
pub struct PolicyHooks;

fn last(k: &[u8]) -> String {
    k.rsplit(|b| *b == keys::SEP)
        .next()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// Removes grantees matching `pred` from the grants of every target in
/// `targets`.
fn drop_grantees(
    tx: &mut Tx<'_>,
    d: &DomainId,
    targets: Vec<String>,
    pred: impl Fn(&v1::Grantee) -> bool,
) -> ApiResult<()> {
    for t in targets {
        let old = records::grants(tx, d, &t)?;
        let mut new = old.clone();
        new.see.retain(|g| !pred(g));
        new.pickup.retain(|g| !pred(g));
        if new != old {
            new.version = old.version + 1;
            put_grants(tx, d, &old, &new);
        }
    }
    Ok(())
}

impl DirectoryHooks for PolicyHooks {
    fn user_deleted(&self, tx: &mut Tx<'_>, d: &DomainId, u: &UserId) -> ApiResult<()> {
        let (ds, us) = (d.as_str(), u.as_str());
        // Its own settings, grants (with their reverse entries) and lines.
        let own = records::grants(tx, d, us)?;
        put_grants(
            tx,
            d,
            &own,
            &v1::Grants {
                target: us.into(),
                ..Default::default()
            },
        );
        tx.delete(keys::key(GRANTS, &[ds, us]));
        tx.delete(keys::key(SETTINGS, &[ds, us]));
        tx.delete(keys::key(LINES, &[ds, us]));
        // Grants that name it, found through the reverse index.
        let targets: Vec<String> = tx
            .keys_with_prefix(&keys::prefix(GRANTS_BY_USER, &[ds, us]))?
            .iter()
            .map(|k| last(k))
            .collect();
        drop_grantees(
            tx,
            d,
            targets,
            |g| matches!(&g.kind, Some(G::User(x)) if x == us),
        )?;
        // Other watchers' saved lines that show it.
        for k in tx.keys_with_prefix(&keys::prefix(LINES, &[ds]))? {
            if let Some(mut m) = tx.record::<v1::MonitoredLines>(&k)?
                && m.lines.iter().any(|l| l.target == us)
            {
                m.lines.retain(|l| l.target != us);
                m.version += 1;
                tx.put(k, &m);
            }
        }
        bump_epoch(tx, d, vec![us.into()], vec![us.into()], "user deleted")?;
        Ok(())
    }

    fn site_deleted(&self, tx: &mut Tx<'_>, d: &DomainId, s: &SiteId) -> ApiResult<()> {
        let targets: Vec<String> = tx
            .keys_with_prefix(&keys::prefix(GRANTS_BY_SITE, &[d.as_str(), s.as_str()]))?
            .iter()
            .map(|k| last(k))
            .collect();
        drop_grantees(
            tx,
            d,
            targets,
            |g| matches!(&g.kind, Some(G::Site(x)) if x == s.as_str()),
        )?;
        bump_epoch(tx, d, vec![], vec![], "site deleted")?;
        Ok(())
    }

    fn domain_deleted(&self, tx: &mut Tx<'_>, d: &DomainId) -> ApiResult<()> {
        let epoch = records::domain_policy(tx, d)?.epoch;
        for tag in DOMAIN_SCOPED {
            tx.delete_prefix(&keys::prefix(tag, &[d.as_str()]))?;
        }
        // The epoch survives the domain: a domain re-created with the
        // same id continues above it, so no cache entry of the old one
        // can ever match again.
        let fresh = v1::DomainPolicy {
            epoch,
            ..records::default_domain_policy(d.as_str())
        };
        tx.put(keys::key(records::DOMAIN_POLICY, &[d.as_str()]), &fresh);
        bump_epoch(tx, d, vec![], vec![], "domain deleted")?;
        Ok(())
    }

    fn access_changed(
        &self,
        tx: &mut Tx<'_>,
        d: &DomainId,
        users: &[String],
        reason: &str,
    ) -> ApiResult<()> {
        bump_epoch(tx, d, users.to_vec(), users.to_vec(), reason)?;
        Ok(())
    }
}
