//! The `idempotency-key` request header.
//!
//! A client that may retry a write through another node (its node died
//! before answering) sends the same `idempotency-key` metadata with each
//! attempt. This layer puts the key, scoped by the method and the caller's
//! credentials, into the directory's task-local
//! [`presence_directory::replicated::REQUEST`]; a replicated write derives
//! its transaction id from it, so the retry is answered with the original
//! outcome and the change is applied once.

use presence_directory::replicated::REQUEST;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The metadata key clients set.
pub const HEADER: &str = "idempotency-key";

/// Adds [`Idempotent`] around the gRPC routes.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyLayer;

impl<S> tower::Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;
    fn layer(&self, inner: S) -> Idempotent<S> {
        Idempotent(inner)
    }
}

/// Runs each request inside the idempotency scope its headers name.
#[derive(Debug, Clone)]
pub struct Idempotent<S>(S);

/// The scope of a request: empty without a key.
fn scope<B>(req: &http::Request<B>) -> String {
    let Some(key) = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    else {
        return String::new();
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    format!("{}\0{key}\0{auth}", req.uri().path())
}

impl<S, B> tower::Service<http::Request<B>> for Idempotent<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let scope = scope(&req);
        Box::pin(REQUEST.scope(scope, self.0.call(req)))
    }
}
