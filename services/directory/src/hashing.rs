//! The bounded pool of threads that compute password hashes.
//!
//! A login needs no token, and one argon2 hash holds 19 MiB while it
//! runs; hashing on the general blocking pool let a storm of failed
//! logins grow the process by gigabytes (one thread and one allocator
//! arena per concurrent hash, kept afterwards). Here a fixed number of
//! threads take jobs from a bounded queue: memory stays at most
//! `threads × hash cost`, and a caller finding the queue full is answered
//! `ResourceExhausted` at once, before any hashing.

use presence_core::{ApiError, ApiResult};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of hashing threads behind a bounded queue. The threads
/// end when the pool is dropped.
pub struct HashPool {
    jobs: SyncSender<Job>,
}

impl HashPool {
    /// Starts `threads` hashing threads (at least one) taking jobs from a
    /// queue of `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> ApiResult<Self> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || work(&rx))
                .map_err(|e| ApiError::Internal(format!("start hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `f` on a hashing thread and returns its result, or
    /// `ResourceExhausted` when every thread is busy and the queue full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have gone away meanwhile: nothing to tell.
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("presence_password_hashes_refused_total").increment(1);
                return Err(ApiError::ResourceExhausted(
                    "too many password checks in progress; retry later".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::Unavailable("password hashing stopped".into()));
            }
        }
        rx.await
            .map_err(|_| ApiError::Internal("a password hash failed".into()))
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let next = match rx.lock() {
            Ok(g) => g.recv(),
            Err(p) => p.into_inner().recv(),
        };
        match next {
            // A panicking hash must not take the thread with it.
            Ok(job) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a password hash panicked");
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_full_queue_is_resource_exhausted_and_jobs_run() -> ApiResult<()> {
        let pool = HashPool::new(1, 1)?;
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        // One job runs (and blocks until released), one waits.
        let running = pool.run(move || {
            let _ = started_tx.send(());
            let _ = block_rx.recv();
            1
        });
        tokio::pin!(running);
        tokio::select! {
            _ = &mut running => panic!("the blocked job finished"),
            r = started_rx => r.map_err(|_| ApiError::Internal("not started".into()))?,
        }
        let waiting = pool.run(|| 2);
        tokio::pin!(waiting);
        // The queue (one slot) is now taken by `waiting` once it is polled.
        tokio::select! {
            biased;
            _ = &mut waiting => panic!("the waiting job ran while the thread was busy"),
            r = pool.run(|| 3) => assert!(matches!(r, Err(ApiError::ResourceExhausted(_))), "{r:?}"),
        }
        block_tx
            .send(())
            .map_err(|_| ApiError::Internal("release".into()))?;
        assert_eq!(running.await?, 1);
        assert_eq!(waiting.await?, 2);
        Ok(())
    }
}
