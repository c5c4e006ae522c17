//! Baseline recomputation off the record path, with the same result every run.
//!
//! Relearning a model's normal (copula fits over four client folds, trimming passes) costs
//! milliseconds; inline, every record that happened to trigger it waited, and the scoring
//! thread spent a sixth of its time there. Here a refresh requested at a model's record `n`
//! is computed on the learner thread from a snapshot of the sample, and lands when the
//! model's record `n + lag` has been processed, waiting for it only if it is not done by
//! then. Where a refresh lands depends on record counts alone, never on thread timing, so
//! replay stays deterministic and the live sidecar gives the same alerts as a replay of
//! its records. `lag` is the refresh interval: each refresh lands as the next one starts,
//! so a relearn has a whole interval of records to finish in.
//!
//! The job queue holds one job per model at most ([`crate::pipeline::MAX_MODELS`]); if it
//! is full, or the thread is gone, the job runs inline, so a refresh is never lost.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// The learner thread and its bounded job queue.
#[derive(Debug)]
pub struct Learner {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// A result that lands at record `due` of its model.
#[derive(Debug)]
pub struct Pending<T> {
    /// The model's record count at which the result is installed.
    pub due: u64,
    rx: Receiver<T>,
}

impl<T> Pending<T> {
    /// A result already computed, due at `due` (a restored snapshot's refresh).
    pub fn ready(due: u64, value: T) -> Self {
        let (tx, rx) = sync_channel(1);
        // The channel has room for the one value, and `rx` is alive.
        let _ = tx.send(value);
        Self { due, rx }
    }

    /// Waits for the result; `None` if its job died (it panicked), which keeps the
    /// baseline it had.
    pub fn wait(self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl Learner {
    /// Starts the learner thread, whose queue holds `capacity` jobs.
    pub fn spawn(capacity: usize) -> Self {
        let (tx, rx) = sync_channel::<Job>(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("probewatch-learner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A job that panics (a bug) loses its own result, not the thread: the
                    // jobs queued behind it still run.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a baseline job panicked");
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no learner thread: baselines refresh inline"))
            .ok();
        Self {
            jobs: thread.is_some().then_some(tx),
            thread,
        }
    }

    /// Runs `f` on the learner thread (inline when the queue is full or there is no
    /// thread), for a result due at `due`.
    pub fn run<T: Send + 'static>(
        &self,
        due: u64,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = sync_channel(1);
        let job: Job = Box::new(move || {
            // The receiver is gone when its model was dropped meanwhile.
            let _ = tx.send(f());
        });
        let left = match &self.jobs {
            Some(jobs) => match jobs.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Some(job),
            },
            None => Some(job),
        };
        if let Some(job) = left {
            job();
        }
        Pending { due, rx }
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_whether_run_on_the_thread_or_past_a_full_queue() {
        let l = Learner::spawn(1);
        let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
        let g = gate.clone();
        // Holds the thread until the queue has been filled and overflowed.
        let first = l.run(1, move || {
            g.wait();
            1
        });
        let queued = l.run(2, || 2);
        let overflow = l.run(3, || 3);
        assert_eq!(overflow.wait(), Some(3));
        gate.wait();
        assert_eq!((first.due, first.wait()), (1, Some(1)));
        assert_eq!(queued.wait(), Some(2));
    }

    #[test]
    fn a_job_that_panics_yields_none_and_the_thread_goes_on() {
        let l = Learner::spawn(4);
        let bad = l.run(1, || -> u32 { panic!("boom") });
        let next = l.run(2, || 7);
        assert_eq!(bad.wait(), None);
        assert_eq!(next.wait(), Some(7));
        let on = l.run(3, || std::thread::current().name().map(String::from));
        assert_eq!(on.wait().flatten().as_deref(), Some("probewatch-learner"));
    }
}
