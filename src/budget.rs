//! One memory budget, in bytes, for everything the sidecar holds in flight: decoded ingest
//! batches, mirrored exchanges being buffered, KServe halves waiting for their pair, and the
//! scoring queue.
//!
//! Each holder takes a [`Grant`] before it keeps bytes and the grant gives them back when it
//! is dropped, so the budget follows the data wherever it moves (a buffered exchange's grant
//! travels with it into the scoring queue). When the budget is spent, new work is refused
//! and the holder counts the refusal by reason: memory in flight never grows past the limit,
//! whatever arrives. The default fits the shipped pods' 1 GiB limit beside the client
//! states (see `deploy/kubernetes` and `tests/deploy_config.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Default budget: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET_BYTES: usize = 256 << 20;

/// The shared budget.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// An unlimited budget (tests and tools that bound memory otherwise).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// Takes `bytes`, or `None` (counted) when they would pass the limit.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Grant> {
        if self.reserve(bytes) {
            Some(Grant {
                budget: self.clone(),
                bytes,
            })
        } else {
            None
        }
    }

    fn reserve(&self, bytes: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes).filter(|n| *n <= self.limit) else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Bytes taken from a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Grant {
    /// Takes `more` bytes into this grant; false (counted, nothing taken) past the limit.
    pub fn try_grow(&mut self, more: usize) -> bool {
        let ok = self.budget.reserve(more);
        if ok {
            self.bytes += more;
        }
        ok
    }

    /// Bytes held by this grant.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grants_come_back_and_the_limit_holds() {
        let b = MemoryBudget::new(100);
        let mut g = b.try_take(60).unwrap();
        assert!(b.try_take(50).is_none());
        assert!(!g.try_grow(41));
        assert!(g.try_grow(40));
        assert_eq!(b.used(), 100);
        drop(g);
        assert_eq!(b.used(), 0);
        assert_eq!(b.refused(), 2);
        assert!(b.try_take(usize::MAX).is_none(), "no overflow");
    }

    proptest! {
        /// Under any interleaving of takes, grows and drops the budget never passes its
        /// limit and returns to zero.
        #[test]
        fn never_over_the_limit(ops in proptest::collection::vec((0usize..3, 0usize..70), 1..200)) {
            let b = MemoryBudget::new(256);
            let mut held: Vec<Grant> = Vec::new();
            for (op, n) in ops {
                match op {
                    0 => if let Some(g) = b.try_take(n) { held.push(g) },
                    1 => if let Some(g) = held.last_mut() { g.try_grow(n); },
                    _ => { held.pop(); }
                }
                prop_assert!(b.used() <= 256);
                prop_assert_eq!(b.used(), held.iter().map(Grant::bytes).sum::<usize>());
            }
            held.clear();
            prop_assert_eq!(b.used(), 0);
        }
    }
}
