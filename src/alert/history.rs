//! Recent alert events in memory, for the SOC API's queries and its live stream.
//!
//! Bounded (`api.alert_history` events, oldest out); the durable record is the spool and
//! the sinks. Live subscribers get every event through a bounded broadcast channel; one that
//! falls behind is told how many it missed rather than slowing anyone down.

use super::Alert;
use crate::vocab::{Kind, Severity};
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events buffered per live subscriber before it starts missing some.
pub const LIVE_BUFFER: usize = 1024;

/// Filters of an alert query (all optional).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertFilter {
    pub model: Option<String>,
    pub client: Option<String>,
    pub kind: Option<Kind>,
    /// At least this severity.
    pub severity: Option<Severity>,
    /// `open` (latest event not resolved) or `resolved`.
    pub state: Option<String>,
    /// Event time range of the query that produced the event, in ms.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<usize>,
    /// Only each alert's latest event (a queue: one row per alert).
    #[serde(default)]
    pub latest: bool,
}

/// The history.
#[derive(Debug)]
pub struct AlertHistory {
    cap: usize,
    events: RwLock<VecDeque<Arc<Alert>>>,
    live: broadcast::Sender<Arc<Alert>>,
}

impl AlertHistory {
    /// A history of at most `cap` events.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            events: RwLock::new(VecDeque::new()),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Records an event and sends it to live subscribers.
    pub fn push(&self, a: Arc<Alert>) {
        {
            let mut e = self.events.write();
            if e.len() == self.cap {
                e.pop_front();
            }
            e.push_back(a.clone());
        }
        let _ = self.live.send(a);
    }

    /// Events matching `f`, newest first.
    pub fn query(&self, f: &AlertFilter) -> Vec<Arc<Alert>> {
        let events = self.events.read();
        // The state of an alert is that of its latest event.
        let resolved: std::collections::HashSet<&str> = events
            .iter()
            .filter(|a| a.event == super::Event::Resolved)
            .map(|a| a.id.as_str())
            .collect();
        let mut seen = std::collections::HashSet::new();
        events
            .iter()
            .rev()
            .filter(|a| !f.latest || seen.insert(a.id.as_str()))
            .filter(|a| f.model.as_deref().is_none_or(|m| a.model == m))
            .filter(|a| f.client.as_deref().is_none_or(|c| a.client == c))
            .filter(|a| f.kind.is_none_or(|k| a.kind == k))
            .filter(|a| f.severity.is_none_or(|s| a.severity >= s))
            .filter(|a| f.since_ms.is_none_or(|t| a.ts_ms >= t))
            .filter(|a| f.until_ms.is_none_or(|t| a.ts_ms <= t))
            .filter(|a| match f.state.as_deref() {
                Some("open") => !resolved.contains(a.id.as_str()),
                Some("resolved") => resolved.contains(a.id.as_str()),
                _ => true,
            })
            .take(f.limit.unwrap_or(100))
            .cloned()
            .collect()
    }

    /// The latest event of alert `id`, if it is still held.
    pub fn latest(&self, id: &str) -> Option<Arc<Alert>> {
        self.events
            .read()
            .iter()
            .rev()
            .find(|a| a.id == id)
            .cloned()
    }

    /// A live feed of new events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Alert>> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_filtered_newest_first() {
        let h = AlertHistory::new(3);
        for i in 0..5 {
            let mut a = Alert::example(&format!("pw-{i}"));
            a.ts_ms = i;
            h.push(Arc::new(a));
        }
        let all = h.query(&AlertFilter::default());
        let ids: Vec<&str> = all.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["pw-4", "pw-3", "pw-2"]);
        let f = AlertFilter {
            since_ms: Some(3),
            ..Default::default()
        };
        assert_eq!(h.query(&f).len(), 2);
        let mut r = Alert::example("pw-4");
        r.event = super::super::Event::Resolved;
        h.push(Arc::new(r));
        let open = AlertFilter {
            state: Some("open".into()),
            ..Default::default()
        };
        assert!(h.query(&open).iter().all(|a| a.id != "pw-4"));
        let latest = AlertFilter {
            latest: true,
            ..Default::default()
        };
        let l = h.query(&latest);
        assert_eq!(l.iter().filter(|a| a.id == "pw-4").count(), 1);
        assert_eq!(l[0].event, super::super::Event::Resolved);
    }
}
