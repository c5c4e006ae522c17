//! The concurrent map of client states, with a global cap.
//!
//! When a new client would exceed `max_clients`, 1/64 of the clients are evicted at once: a
//! segmented LRU, as caches protect entries that proved themselves. Event time is the
//! sender's to choose, so a flood of fresh ids stamped with the latest time would otherwise
//! push out every slow client with evidence (a campaign member at a query a minute); instead
//! the flood churns through its own states. Candidates are kept in two queues in the order
//! they entered ([`Queues`]): *probation* for clients not yet *established*, *protected* for
//! the rest, which are evicted only once probation is empty. A candidate seen since it was
//! queued gets a second chance at the back (CLOCK), so each eviction costs a few queue pops
//! instead of a scan of every client: under a flood of new ids at the cap the scan had made
//! each new client cost a pass over the whole table's states. Clients idle past
//! `idle_ttl_ms` are dropped by [`ClientStore::sweep_idle`]. Both are counted. Eviction loses
//! that client's evidence, never an open alert silently: the caller resolves open alerts of
//! evicted clients.

use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Queue entries past twice the clients tracked, plus this, and the queues are compacted:
/// clients removed by other paths (idle sweeps) leave entries behind.
const COMPACT_SLACK: usize = 1024;

/// Key of a client's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub model: Arc<str>,
    pub client: Arc<str>,
}

/// What the store needs to know of a client's state to choose whom to evict.
pub trait LastSeen {
    /// Event time of the client's latest query.
    fn last_seen_ms(&self) -> i64;
    /// Whether the state has proved itself (enough queries, or an open alert): evicted only
    /// after every state that has not.
    fn established(&self) -> bool;
}

/// A client queued for eviction, with the event time of its last query when queued.
#[derive(Debug)]
struct Candidate {
    key: ClientKey,
    seen: i64,
}

/// The eviction order: clients not yet established, then the established ones, each in the
/// order they were queued.
#[derive(Debug, Default)]
struct Queues {
    probation: VecDeque<Candidate>,
    protected: VecDeque<Candidate>,
}

impl Queues {
    fn len(&self) -> usize {
        self.probation.len() + self.protected.len()
    }

    fn push(&mut self, c: Candidate, established: bool) {
        if established {
            self.protected.push_back(c);
        } else {
            self.probation.push_back(c);
        }
    }

    /// The next candidate, and whether it came from probation.
    fn pop(&mut self) -> Option<(Candidate, bool)> {
        if let Some(c) = self.probation.pop_front() {
            return Some((c, true));
        }
        self.protected.pop_front().map(|c| (c, false))
    }
}

/// What became of a candidate.
enum Fate {
    /// Its client is gone, or queued again under the same key: nothing to do.
    Stale,
    Evicted,
    /// Seen since it was queued: back of the queue its state belongs in.
    Again {
        seen: i64,
        established: bool,
    },
}

/// All client states.
#[derive(Debug)]
pub struct ClientStore<V> {
    map: DashMap<ClientKey, V>,
    max_clients: usize,
    queues: Mutex<Queues>,
}

impl<V: LastSeen> ClientStore<V> {
    /// An empty store holding at most `max_clients`.
    pub fn new(max_clients: usize) -> Self {
        Self {
            map: DashMap::new(),
            max_clients,
            queues: Mutex::new(Queues::default()),
        }
    }

    /// Queues a client for eviction; call it before inserting the client's state, and
    /// never while holding a lock of the map.
    pub fn enrol(&self, key: &ClientKey, seen: i64, established: bool) {
        let mut q = self.queues.lock();
        q.push(
            Candidate {
                key: key.clone(),
                seen,
            },
            established,
        );
        if q.len() > 2 * self.map.len() + COMPACT_SLACK {
            self.compact(&mut q);
        }
    }

    /// Inserts a state whole (a restored one), queued for eviction.
    pub fn insert(&self, key: ClientKey, v: V) {
        self.enrol(&key, v.last_seen_ms(), v.established());
        self.map.insert(key, v);
    }

    /// Drops the entries of clients that left, and all but the latest entry of a key.
    fn compact(&self, q: &mut Queues) {
        let mut seen = HashSet::new();
        for queue in [&mut q.protected, &mut q.probation] {
            let kept: VecDeque<Candidate> = std::mem::take(queue)
                .into_iter()
                .rev()
                .filter(|c| self.map.contains_key(&c.key) && seen.insert(c.key.clone()))
                .collect();
            *queue = kept.into_iter().rev().collect();
        }
    }

    /// The underlying map.
    pub fn map(&self) -> &DashMap<ClientKey, V> {
        &self.map
    }

    /// Clients tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether a new client needs room made first.
    pub fn is_full(&self) -> bool {
        self.map.len() >= self.max_clients
    }

    /// Makes room for one more client if the store is full; returns the evicted states.
    pub fn make_room(&self) -> Vec<V> {
        if self.map.len() < self.max_clients {
            return Vec::new();
        }
        let want = (self.max_clients / 64).max(1);
        let mut gone = Vec::with_capacity(want);
        // Every candidate can earn one second chance per call, so twice the queues bound it.
        let mut budget = 2 * self.queues.lock().len() + 2;
        while gone.len() < want && budget > 0 {
            budget -= 1;
            let Some((c, probation)) = self.queues.lock().pop() else {
                break;
            };
            let mut fate = Fate::Stale;
            let removed = self.map.remove_if(&c.key, |_, v| {
                let (seen, established) = (v.last_seen_ms(), v.established());
                fate = if seen > c.seen || (probation && established) {
                    Fate::Again { seen, established }
                } else {
                    Fate::Evicted
                };
                matches!(fate, Fate::Evicted)
            });
            match (removed, fate) {
                (Some((_, v)), _) => gone.push(v),
                (None, Fate::Again { seen, established }) => self
                    .queues
                    .lock()
                    .push(Candidate { key: c.key, seen }, established),
                _ => {}
            }
        }
        if gone.is_empty() {
            // A state inserted without `enrol`: the queues cannot see it, a scan can.
            gone = self.evict_by_scan(want);
        }
        gone
    }

    /// The idlest `batch` clients, not yet established first, by a scan of every state.
    fn evict_by_scan(&self, batch: usize) -> Vec<V> {
        let mut ages: Vec<((bool, i64), ClientKey)> = self
            .map
            .iter()
            .map(|e| {
                (
                    (e.value().established(), e.value().last_seen_ms()),
                    e.key().clone(),
                )
            })
            .collect();
        let batch = batch.min(ages.len());
        if batch == 0 {
            return Vec::new();
        }
        ages.select_nth_unstable_by_key(batch - 1, |(t, _)| *t);
        ages.truncate(batch);
        ages.into_iter()
            .filter_map(|(_, k)| self.map.remove(&k).map(|(_, v)| v))
            .collect()
    }

    /// Removes clients whose last query is older than `before_ms`.
    pub fn sweep_idle(&self, before_ms: i64) -> Vec<V> {
        self.sweep_idle_by(|_| Some(before_ms))
    }

    /// Removes clients whose last query is older than the cut-off `before(key)` gives
    /// (`None`: keep).
    pub fn sweep_idle_by(&self, before: impl Fn(&ClientKey) -> Option<i64>) -> Vec<V> {
        let idle = |k: &ClientKey, v: &V| before(k).is_some_and(|b| v.last_seen_ms() < b);
        let keys: Vec<ClientKey> = self
            .map
            .iter()
            .filter(|e| idle(e.key(), e.value()))
            .map(|e| e.key().clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.map.remove_if(&k, |k, v| idle(k, v)).map(|(_, v)| v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug)]
    struct St {
        seen: i64,
        queries: u32,
    }

    impl LastSeen for St {
        fn last_seen_ms(&self) -> i64 {
            self.seen
        }
        fn established(&self) -> bool {
            self.queries >= 3
        }
    }

    fn key(i: u64) -> ClientKey {
        ClientKey {
            model: "m".into(),
            client: format!("c{i}").into(),
        }
    }

    /// A query of client `i` at `t`, making room first as the pipeline does.
    fn query(s: &ClientStore<St>, i: u64, t: i64) -> Vec<St> {
        let k = key(i);
        if let Some(mut v) = s.map().get_mut(&k) {
            v.seen = t;
            v.queries += 1;
            return Vec::new();
        }
        let gone = s.make_room();
        s.enrol(&k, t, false);
        s.map().insert(
            k,
            St {
                seen: t,
                queries: 1,
            },
        );
        gone
    }

    #[test]
    fn a_flood_of_new_ids_evicts_its_own_states_not_established_ones() {
        let s = ClientStore::new(128);
        for t in 0..4 {
            query(&s, 0, t);
        }
        for i in 1..10_000 {
            query(&s, i, 100 + i as i64);
            assert!(s.len() <= 128);
        }
        assert!(
            s.map().contains_key(&key(0)),
            "the established client stays"
        );
    }

    #[test]
    fn a_client_seen_since_it_was_queued_gets_a_second_chance() {
        let s = ClientStore::new(64);
        for i in 0..64 {
            query(&s, i, i as i64);
        }
        // Client 0 queries again: it is no longer the idlest, client 1 is.
        query(&s, 0, 1_000);
        let gone = query(&s, 1_000, 1_001);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].seen, 1, "the idlest unseen client goes first");
        assert!(s.map().contains_key(&key(0)));
    }

    #[test]
    fn entries_of_clients_removed_elsewhere_are_compacted() {
        let s = ClientStore::new(1 << 20);
        for round in 0..20 {
            for i in 0..1_000 {
                query(&s, round * 1_000 + i, round as i64);
            }
            s.sweep_idle(round as i64);
        }
        let queued = s.queues.lock().len();
        assert!(
            queued <= 2 * s.len() + COMPACT_SLACK + 1,
            "{queued} queued for {} clients",
            s.len()
        );
    }

    #[test]
    fn a_state_inserted_without_a_queue_entry_is_still_evicted() {
        let s = ClientStore::new(4);
        for i in 0..4 {
            s.map().insert(
                key(i),
                St {
                    seen: i as i64,
                    queries: 1,
                },
            );
        }
        let gone = s.make_room();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].seen, 0);
    }

    proptest! {
        /// Whatever the order of queries, the store never holds more than its cap (one
        /// insertion at a time, as the pipeline's), never evicts an established client while
        /// one that is not established is tracked, and loses no state it did not return.
        #[test]
        fn the_cap_holds_and_established_clients_go_last(
            ops in proptest::collection::vec((0u64..64, 0i64..8), 1..600),
        ) {
            let s: ClientStore<St> = ClientStore::new(16);
            let mut t = 0;
            let mut inserted = 0usize;
            let mut evicted = 0usize;
            for (i, dt) in ops {
                t += dt;
                let was = s.map().contains_key(&key(i));
                let before: Vec<bool> = s.map().iter().map(|e| e.value().established()).collect();
                let gone = query(&s, i, t);
                inserted += usize::from(!was);
                evicted += gone.len();
                prop_assert!(s.len() <= 16);
                if gone.iter().any(|g| g.established()) {
                    let fresh = before.iter().filter(|e| !**e).count();
                    let fresh_gone = gone.iter().filter(|g| !g.established()).count();
                    prop_assert_eq!(fresh, fresh_gone, "an established client went first");
                }
            }
            prop_assert_eq!(inserted, s.len() + evicted);
        }
    }
}
