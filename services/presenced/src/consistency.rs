//! Read-your-writes across nodes: the `presence-log-sequence` response
//! header and the `presence-min-sequence` request header.
//!
//! On a node that keeps the replicated directory, every answer carries
//! the directory log entry the node had applied when it answered (for a
//! write: at least the write's own entry). A client that sends that
//! number as `presence-min-sequence` with a later request — to any node —
//! is answered only once that node has applied the log up to it, so it
//! reads its own write (or anything newer) wherever it lands. A node
//! that cannot get there within [`WAIT`] answers `UNAVAILABLE` (try
//! another node); a number past the end of the log is `INVALID_ARGUMENT`.

use presence_directory::replica::Replica;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The request header: the least log entry the answer must reflect.
pub const MIN_SEQUENCE: &str = "presence-min-sequence";

/// The response header: the log entry the node had applied.
pub const LOG_SEQUENCE: &str = "presence-log-sequence";

/// How long a request waits for its node to reach its minimum sequence.
pub const WAIT: Duration = Duration::from_secs(5);

/// Adds [`Consistent`] around the gRPC routes.
#[derive(Clone)]
pub struct ConsistencyLayer {
    replica: Option<Replica>,
}

impl ConsistencyLayer {
    /// The layer of a node with (or without) the replicated directory.
    pub fn new(replica: Option<Replica>) -> Self {
        Self { replica }
    }
}

impl<S> tower::Layer<S> for ConsistencyLayer {
    type Service = Consistent<S>;
    fn layer(&self, inner: S) -> Consistent<S> {
        Consistent {
            inner,
            replica: self.replica.clone(),
        }
    }
}

/// Waits for a request's minimum sequence and stamps the answer's.
#[derive(Clone)]
pub struct Consistent<S> {
    inner: S,
    replica: Option<Replica>,
}

type Resp = http::Response<tonic::body::Body>;

fn refuse(status: tonic::Status) -> Resp {
    status.into_http()
}

/// The request's minimum sequence: `Ok(None)` without the header.
fn min_sequence<B>(req: &http::Request<B>) -> Result<Option<u64>, tonic::Status> {
    let Some(v) = req.headers().get(MIN_SEQUENCE) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "{MIN_SEQUENCE} must be a decimal log sequence (as {LOG_SEQUENCE} returned)"
            ))
        })
}

/// Waits until `replica` has applied `min`.
async fn reach(replica: &Replica, min: u64) -> Result<(), tonic::Status> {
    if replica.applied() >= min {
        return Ok(());
    }
    let last = replica
        .last_sequence()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    if min > last {
        return Err(tonic::Status::invalid_argument(format!(
            "{MIN_SEQUENCE} {min} is past the end of the directory log ({last}): \
             it must come from a {LOG_SEQUENCE} answer of this deployment"
        )));
    }
    replica
        .wait_applied(min, WAIT)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e}; try another node")))
}

impl<S, B> tower::Service<http::Request<B>> for Consistent<S>
where
    S: tower::Service<http::Request<B>, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let min = match min_sequence(&req) {
            Ok(m) => m,
            Err(s) => return Box::pin(async move { Ok(refuse(s)) }),
        };
        let Some(replica) = self.replica.clone() else {
            if min.is_some_and(|m| m > 0) {
                let s = tonic::Status::failed_precondition(format!(
                    "{MIN_SEQUENCE}: this node does not keep the replicated directory; \
                     send it to a directory or policy node"
                ));
                return Box::pin(async move { Ok(refuse(s)) });
            }
            return Box::pin(self.inner.call(req));
        };
        // The service that was made ready runs this call; a fresh clone
        // waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if let Some(m) = min
                && let Err(s) = reach(&replica, m).await
            {
                return Ok(refuse(s));
            }
            let mut resp = inner.call(req).await?;
            resp.headers_mut()
                .insert(LOG_SEQUENCE, http::HeaderValue::from(replica.applied()));
            Ok(resp)
        })
    }
}
