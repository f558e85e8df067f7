//! The tonic interceptor: bearer token → [`Principal`] in the request
//! extensions.

use crate::principal::Principal;
use crate::token::{Claims, TokenSigner};
use presence_core::{ApiError, ApiResult};
use presence_proto::status::to_status;
use std::sync::Arc;
use tonic::{Request, Status};

/// Turns verified claims into the current principal, or refuses them
/// (user deleted, session invalidated, phone removed…). Implemented by
/// the directory, which knows the current state; it must be fast and
/// must not block for long (it runs on the request path).
pub trait SessionValidator: Send + Sync + 'static {
    /// Returns the principal the claims stand for now.
    fn validate(&self, claims: &Claims) -> ApiResult<Principal>;

    /// Returns whether the token with this [`crate::token::token_id`] was
    /// revoked (never, unless the validator keeps a revocation list).
    fn revoked(&self, _token_id: &str) -> ApiResult<bool> {
        Ok(false)
    }
}

/// The [`crate::token::token_id`] of the current request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId(pub String);

/// When the token of the current request expires (unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiry(pub i64);

/// A tonic interceptor that authenticates every request.
#[derive(Clone)]
pub struct AuthInterceptor {
    signer: TokenSigner,
    validator: Arc<dyn SessionValidator>,
    optional: bool,
}

impl AuthInterceptor {
    /// Returns an interceptor that refuses requests without a valid token
    /// with `Unauthenticated`.
    pub fn required(signer: TokenSigner, validator: Arc<dyn SessionValidator>) -> Self {
        Self {
            signer,
            validator,
            optional: false,
        }
    }

    /// Returns an interceptor that lets requests without a token through
    /// (for login RPCs) but still refuses an invalid one.
    pub fn optional(signer: TokenSigner, validator: Arc<dyn SessionValidator>) -> Self {
        Self {
            signer,
            validator,
            optional: true,
        }
    }

    /// Returns an optional-token copy of `other` (same key and validator).
    pub fn optional_from(other: AuthInterceptor) -> Self {
        Self {
            optional: true,
            ..other
        }
    }

    /// Authenticates one bearer token and returns the principal and the
    /// token's expiry (unix milliseconds).
    pub fn authenticate(&self, token: &str) -> ApiResult<(Principal, TokenExpiry)> {
        self.authenticate_with_id(token).map(|(p, e, _)| (p, e))
    }

    /// [`AuthInterceptor::authenticate`], with the token's id.
    pub fn authenticate_with_id(
        &self,
        token: &str,
    ) -> ApiResult<(Principal, TokenExpiry, TokenId)> {
        let claims = self.signer.verify(token)?;
        let id = crate::token::token_id(token);
        if self.validator.revoked(&id)? {
            return Err(ApiError::Unauthenticated("token revoked".into()));
        }
        Ok((
            self.validator.validate(&claims)?,
            TokenExpiry(claims.exp),
            TokenId(id),
        ))
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = match req.metadata().get("authorization") {
            None if self.optional => return Ok(req),
            None => {
                return Err(to_status(ApiError::Unauthenticated(
                    "missing bearer token".into(),
                )));
            }
            Some(h) => h,
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                to_status(ApiError::Unauthenticated(
                    "authorization must be \"Bearer <token>\"".into(),
                ))
            })?;
        let (principal, exp, id) = self.authenticate_with_id(token.trim()).map_err(to_status)?;
        req.extensions_mut().insert(principal);
        req.extensions_mut().insert(exp);
        req.extensions_mut().insert(id);
        Ok(req)
    }
}

/// Returns the principal the interceptor attached, or `Unauthenticated`.
pub fn principal_of<T>(req: &Request<T>) -> ApiResult<Principal> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))
}
