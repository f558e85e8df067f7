//! Authentication and authorization primitives of the presence broker.
//!
//! Modules:
//! - [`principal`]: who is calling ([`Principal`]) and the service rights;
//! - [`token`]: signed bearer tokens ([`TokenSigner`], [`Claims`]);
//! - [`password`]: salted slow hashes (argon2id) for passwords and PINs;
//! - [`interceptor`]: the tonic interceptor that turns a bearer token into
//!   a [`Principal`] in the request extensions.

pub mod interceptor;
pub mod password;
pub mod principal;
pub mod token;

pub use interceptor::{AuthInterceptor, SessionValidator, TokenExpiry, principal_of};
pub use principal::{DomainSet, Principal, rights};
pub use token::{Claims, TokenSigner};
