//! One thread that decodes and scores the exchanges the mirroring sources complete.
//!
//! Handing each exchange to tokio's blocking pool and awaiting it cost two thread wake-ups per
//! exchange, and wake-ups were most of the sidecar's CPU per mirrored request (perf on
//! `benches/sources.rs`: 55% in the kernel, mostly context switches). A dedicated thread fed
//! by a bounded queue takes exchanges back to back under load without being woken for each,
//! and the source's task ends at once instead of waiting.
//!
//! The queue is bounded in exchanges and in body bytes. When it is full the newest exchange
//! is refused and the source counts it (`scoring_queue_full`). At shutdown the queue is
//! drained before alerts are flushed, so nothing accepted is lost.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Exchanges waiting to be scored, at most.
pub const DEFAULT_QUEUE_EXCHANGES: usize = 4096;
/// Body bytes waiting to be scored, at most (request and response bodies together).
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

type Job = Box<dyn FnOnce() + Send>;

/// The scoring thread and its queue.
pub struct Scorer {
    tx: Mutex<Option<SyncSender<(Job, usize)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    queued_bytes: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("queued_bytes", &self.queued_bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl Scorer {
    /// Starts the thread with a queue of `exchanges` and `bytes` at most.
    pub fn start(exchanges: usize, bytes: usize) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = sync_channel::<(Job, usize)>(exchanges.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let (qb, q) = (queued_bytes.clone(), queued.clone());
        let thread = std::thread::Builder::new()
            .name("probewatch-scorer".into())
            .spawn(move || {
                for (job, size) in rx {
                    // A bug in scoring one exchange must not stop scoring for good.
                    let run = std::panic::AssertUnwindSafe(job);
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("scoring a mirrored exchange panicked; it was dropped");
                    }
                    qb.fetch_sub(size, Ordering::Relaxed);
                    q.fetch_sub(1, Ordering::Release);
                }
            })?;
        Ok(Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            queued_bytes,
            queued,
            max_bytes: bytes,
        }))
    }

    /// The default-sized scorer (start-up: a thread that cannot start is fatal).
    pub fn start_default() -> Arc<Self> {
        Self::start(DEFAULT_QUEUE_EXCHANGES, DEFAULT_QUEUE_BYTES)
            .expect("the scoring thread starts")
    }

    /// Queues `job`, an exchange with `bytes` of bodies; `false` when the queue is full or
    /// the scorer has been drained (the caller counts the drop).
    pub fn submit(&self, bytes: usize, job: impl FnOnce() + Send + 'static) -> bool {
        let guard = self.tx.lock();
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before + bytes > self.max_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send((Box::new(job), bytes)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.queued.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Exchanges queued or being scored.
    pub fn pending(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Waits until every queued exchange has been scored (tests, tools); panics after 30 s
    /// rather than hang a test.
    pub fn wait_idle(&self) {
        let t0 = std::time::Instant::now();
        while self.pending() > 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "scoring queue not drained"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Refuses new exchanges, scores the queued ones and stops the thread.
    pub fn drain(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn scores_in_order_refuses_when_full_and_drains() {
        let s = Scorer::start(2, 100).unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(std::sync::Barrier::new(2));
        // Hold the thread on the first job so that the queue fills behind it.
        let g = gate.clone();
        let (started_tx, started) = std::sync::mpsc::channel();
        assert!(s.submit(10, move || {
            let _ = started_tx.send(());
            g.wait();
        }));
        started.recv().unwrap();
        let mut accepted = 0;
        for _ in 0..10 {
            let d = done.clone();
            if s.submit(10, move || {
                d.fetch_add(1, Ordering::Relaxed);
            }) {
                accepted += 1;
            }
        }
        // The running job has left the queue: its two slots fill, the rest is refused.
        assert_eq!(accepted, 2);
        gate.wait();
        s.wait_idle();
        assert_eq!(done.load(Ordering::Relaxed), accepted);
        s.drain();
        assert!(!s.submit(1, || {}), "a drained scorer refuses work");
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_thread() {
        let s = Scorer::start(4, 100).unwrap();
        assert!(s.submit(1, || panic!("boom")));
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        assert!(s.submit(1, move || {
            d.fetch_add(1, Ordering::Relaxed);
        }));
        s.wait_idle();
        assert_eq!(done.load(Ordering::Relaxed), 1);
        s.drain();
    }

    #[test]
    fn byte_budget_refuses_large_backlogs_but_never_a_lone_exchange() {
        let s = Scorer::start(100, 50).unwrap();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let g = gate.clone();
        // Larger than the budget, but alone: taken (an empty queue always takes one).
        assert!(s.submit(80, move || {
            g.wait();
        }));
        assert!(!s.submit(10, || {}), "over the byte budget");
        gate.wait();
        s.wait_idle();
        assert!(s.submit(10, || {}));
        s.drain();
    }
}
