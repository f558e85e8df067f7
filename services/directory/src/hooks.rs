//! Extension points for services that keep their own records in the
//! directory store (the policy service): they run inside the directory's
//! transactions, so cascades are atomic with the change that causes them.

use crate::store::Tx;
use presence_core::{ApiResult, DomainId, SiteId, UserId};

/// Called by the directory inside its write transactions.
pub trait DirectoryHooks: Send + Sync + 'static {
    /// A user is being deleted: remove every record about it or naming
    /// it.
    fn user_deleted(&self, tx: &mut Tx<'_>, domain: &DomainId, user: &UserId) -> ApiResult<()>;

    /// A site is being deleted (it has no users any more).
    fn site_deleted(&self, tx: &mut Tx<'_>, domain: &DomainId, site: &SiteId) -> ApiResult<()>;

    /// A whole domain is being deleted.
    fn domain_deleted(&self, tx: &mut Tx<'_>, domain: &DomainId) -> ApiResult<()>;

    /// Something that can widen or narrow who sees whom changed: a user
    /// was created, changed scope or site, or a queue's members changed.
    /// `users` are the users concerned.
    fn access_changed(
        &self,
        tx: &mut Tx<'_>,
        domain: &DomainId,
        users: &[String],
        reason: &str,
    ) -> ApiResult<()>;
}
