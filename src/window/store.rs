//! The concurrent map of client states, with a global cap.
//!
//! When a new client would exceed `max_clients`, 1/64 of the clients are evicted in one
//! sweep, so the O(n) scan is paid once per n/64 insertions: the idlest (by event time of
//! their last query) of those not yet *established*, then, only if there are too few of
//! those, the idlest established ones. A segmented LRU, as caches protect entries that proved
//! themselves: event time is the sender's to choose, so a flood of fresh ids stamped with the
//! latest time would otherwise push out every slow client with evidence (a campaign member
//! at a query a minute); now the flood churns through its own states. Clients idle past `idle_ttl_ms` are dropped by [`ClientStore::sweep_idle`].
//! Both are counted. Eviction loses that client's evidence, never an open alert silently:
//! the caller resolves open alerts of evicted clients.

use dashmap::DashMap;
use std::sync::Arc;

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

/// All client states.
#[derive(Debug)]
pub struct ClientStore<V> {
    map: DashMap<ClientKey, V>,
    max_clients: usize,
}

impl<V: LastSeen> ClientStore<V> {
    /// An empty store holding at most `max_clients`.
    pub fn new(max_clients: usize) -> Self {
        Self {
            map: DashMap::new(),
            max_clients,
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
        let batch = (self.max_clients / 64).max(1);
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
