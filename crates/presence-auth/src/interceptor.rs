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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::principal::DomainSet;
    use crate::token::Subject;
    use tonic::service::Interceptor as _;

    /// Accepts every token as a service principal named after the token's
    /// subject, except the revoked id and refused names.
    struct Fake {
        revoked: String,
    }

    impl SessionValidator for Fake {
        fn validate(&self, claims: &Claims) -> ApiResult<Principal> {
            match &claims.sub {
                Subject::Service { name, .. } if name == "gone" => {
                    Err(ApiError::Unauthenticated("session ended".into()))
                }
                Subject::Service { name, .. } => Ok(Principal::Service {
                    name: name.clone(),
                    domains: DomainSet::All,
                    rights: Vec::new(),
                }),
                _ => Err(ApiError::Unauthenticated("not a service".into())),
            }
        }

        fn revoked(&self, token_id: &str) -> ApiResult<bool> {
            Ok(token_id == self.revoked)
        }
    }

    fn service(name: &str) -> Subject {
        Subject::Service {
            name: name.into(),
            domains: vec!["*".into()],
            rights: Vec::new(),
            incs: Vec::new(),
        }
    }

    fn request(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    fn setup() -> (TokenSigner, String, String, Arc<Fake>) {
        let s = TokenSigner::new(TokenSigner::generate_key()).unwrap();
        let (good, _) = s.issue(service("pbx"), 60_000);
        // Another subject: two tokens of one subject issued in the same
        // millisecond are the same token.
        let (revoked, _) = s.issue(service("pbx-old"), 60_000);
        let fake = Arc::new(Fake {
            revoked: crate::token::token_id(&revoked),
        });
        (s, good, revoked, fake)
    }

    #[test]
    fn test_a_valid_token_attaches_principal_expiry_and_id() {
        let (s, good, _, fake) = setup();
        let mut i = AuthInterceptor::required(s.clone(), fake);
        for header in [
            format!("Bearer {good}"),
            format!("bearer {good}"),
            format!("Bearer  {good} "),
        ] {
            let r = i.call(request(Some(&header))).unwrap();
            let p = principal_of(&r).unwrap();
            assert_eq!(p.describe(), "service pbx");
            let exp = r.extensions().get::<TokenExpiry>().unwrap().0;
            assert_eq!(exp, s.verify(&good).unwrap().exp);
            let id = r.extensions().get::<TokenId>().unwrap();
            assert_eq!(id.0, crate::token::token_id(&good));
        }
    }

    #[test]
    fn test_missing_malformed_revoked_and_refused_tokens_are_unauthenticated() {
        let (s, good, revoked, fake) = setup();
        let mut required = AuthInterceptor::required(s.clone(), fake.clone());
        let mut optional = AuthInterceptor::optional_from(required.clone());
        let (gone, _) = s.issue(service("gone"), 60_000);
        let (expired, _) = s.issue(service("pbx"), -1);
        let cases: Vec<(Option<String>, &str)> = vec![
            (None, "missing bearer token"),
            (
                Some(good.clone()),
                "authorization must be \"Bearer <token>\"",
            ),
            (
                Some(format!("Basic {good}")),
                "authorization must be \"Bearer <token>\"",
            ),
            (Some("Bearer nonsense".into()), "invalid token"),
            (Some(format!("Bearer {revoked}")), "token revoked"),
            (Some(format!("Bearer {gone}")), "session ended"),
            (Some(format!("Bearer {expired}")), "token expired"),
        ];
        for (header, message) in cases {
            let e = required.call(request(header.as_deref())).unwrap_err();
            assert_eq!(
                (e.code(), e.message()),
                (tonic::Code::Unauthenticated, message),
                "{header:?}"
            );
            // Optional: only a missing header passes, without a principal.
            match optional.call(request(header.as_deref())) {
                Ok(r) => {
                    assert!(header.is_none(), "{header:?}");
                    assert!(principal_of(&r).is_err());
                }
                Err(e) => assert_eq!(e.message(), message),
            }
        }
        let r = optional.call(request(None)).unwrap();
        assert!(principal_of(&r).is_err(), "no token, no principal");
        // optional() is the same as optional_from(required()).
        let mut direct = AuthInterceptor::optional(s, fake);
        assert!(direct.call(request(None)).is_ok());
        assert!(direct.call(request(Some("Bearer x"))).is_err());
        let (p, _) = direct.authenticate(&good).unwrap();
        assert_eq!(p.describe(), "service pbx");
    }
}
