//! What the pipeline shows of its state to the API and the dashboard: typed, read-only
//! views of clients and models. The API pages, filters and adds alert history; it never
//! reaches into client windows itself.

use super::{ClientState, Pipeline};
use crate::vocab::{Kind, Severity};
use crate::window::{distinct_cells, Counts};
use serde::Serialize;
use std::collections::BTreeMap;

/// An alert open on a client.
#[derive(Debug, Clone, Serialize)]
pub struct OpenAlertView {
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub since_ms: i64,
}

/// Query counts of a client.
#[derive(Debug, Clone, Serialize)]
pub struct QueriesView {
    pub total: u64,
    pub window: u32,
}

/// One client, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    pub model: String,
    pub client: String,
    /// Strongest sequential test relative to the alert threshold (1.0 raises an alert).
    pub risk: f64,
    /// The risk on a bounded scale: the strongest evidence now as a percentage of what
    /// raises an alert, capped at 100 (100 also while an alert is open).
    pub score: u8,
    /// The highest score the client ever had (an old peak, when above `score`: evidence
    /// that decayed, or an alert that resolved).
    pub peak_score: u8,
    /// It was alerted and has no alert open now: its evidence is an old peak.
    pub resolved: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub queries: QueriesView,
    pub open_alerts: Vec<OpenAlertView>,
}

/// One window bucket of a client.
#[derive(Debug, Clone, Serialize)]
pub struct BucketView {
    pub start_ms: i64,
    pub queries: u32,
    pub low_margin: u32,
    pub near_duplicates: u32,
    pub exact_repeats: u32,
    pub class_flips: u32,
    pub out_of_range: u32,
    pub structured: u32,
    pub invalid: u32,
    pub distinct_cells: f64,
    pub margin_histogram: Vec<u16>,
    /// Highest evidence of each sequential test in the bucket, relative to the alert
    /// threshold (1.0 raises an alert).
    pub scores: Scores,
}

/// Detector scores of one bucket.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    pub low_margin: f64,
    pub out_of_range: f64,
    pub structured: f64,
    pub invalid: f64,
}

/// One client in full: its summary, window totals, per-bucket series and detector state.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    #[serde(flatten)]
    pub summary: ClientSummary,
    pub window: Counts,
    pub series: Vec<BucketView>,
    pub detectors: serde_json::Value,
}

/// Traffic of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelTraffic {
    pub model: String,
    pub clients: u64,
    pub records: u64,
    pub open_alerts: u64,
}

/// A campaign of one model, with the (pseudonymised) clients alerted as its members.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CampaignSummary {
    pub model: String,
    #[serde(flatten)]
    pub campaign: crate::detect::campaign::CampaignView,
    /// Clients alerted as members (a member whose state was evicted is no longer listed).
    pub members: Vec<String>,
    /// For an LLM campaign, its technique (`logit_bias_sweep`, `logprob_harvest`,
    /// `distillation`); an onset cohort has none. Its `pooled_events` is the pooled figure
    /// (distinct bias ids, soft-labelled tokens, queries) and `llr` the strength over 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub technique: Option<String>,
}

impl Pipeline {
    /// The LLM campaigns, from their members' last findings: one per (model, group id), its
    /// figures those of the member that saw it last.
    fn llm_campaigns(&self) -> Vec<CampaignSummary> {
        use crate::detect::campaign::CampaignView;
        let mut by: std::collections::BTreeMap<(String, u64), CampaignSummary> = Default::default();
        for e in self.store.map().iter() {
            let st = e.value();
            let Some(ev) = &st.detectors.llm.last else {
                continue;
            };
            let Some(g) = &ev.group else {
                continue;
            };
            let Some(id) =
                g.id.strip_prefix("pc-")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let technique = serde_json::to_value(ev.technique)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            let s = by
                .entry((st.model.to_string(), id))
                .or_insert_with(|| CampaignSummary {
                    model: st.model.to_string(),
                    campaign: CampaignView {
                        id,
                        members: 0,
                        accounts: 0,
                        pooled_queries: 0,
                        pooled_events: 0,
                        normal_rate: 0.0,
                        llr: 0.0,
                        threshold: 1.0,
                        first_ms: i64::MAX,
                        last_ms: i64::MIN,
                    },
                    members: Vec::new(),
                    technique,
                });
            let c = &mut s.campaign;
            if st.last_seen_ms >= c.last_ms {
                c.accounts = g.members;
                c.pooled_queries = g.queries;
                c.pooled_events = g.pooled.max(0.0) as u64;
                c.llr = ev.strength;
            }
            c.members += 1;
            c.first_ms = c.first_ms.min(st.first_seen_ms);
            c.last_ms = c.last_ms.max(st.last_seen_ms);
            s.members.push(self.client_label(&st.client));
        }
        by.into_values().collect()
    }

    /// Every tracked client of `model` (all models when `None`), unordered.
    pub fn client_summaries(&self, model: Option<&str>) -> Vec<ClientSummary> {
        self.store
            .map()
            .iter()
            .filter(|e| model.is_none_or(|m| &*e.key().model == m))
            .map(|e| self.summary(e.value()))
            .collect()
    }

    /// The clients of `model` (all models when `None`) ranked by risk, highest first: the
    /// `limit` from `offset`, and how many there are. Only the page is summarised (its
    /// window totals and labels), so a page of a million clients costs a scan of their
    /// evidence, not a million summaries.
    pub fn ranked_clients(
        &self,
        model: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (Vec<ClientSummary>, usize) {
        let mut ranked: Vec<(f64, crate::window::store::ClientKey)> = self
            .store
            .map()
            .iter()
            .filter(|e| model.is_none_or(|m| &*e.key().model == m))
            .map(|e| (self.risk(e.value()), e.key().clone()))
            .collect();
        let total = ranked.len();
        let end = offset.saturating_add(limit).min(total);
        // Highest risk first; ties in a fixed order, so that pages neither repeat nor skip.
        let order = |a: &(f64, crate::window::store::ClientKey),
                     b: &(f64, crate::window::store::ClientKey)| {
            b.0.total_cmp(&a.0)
                .then_with(|| (&*a.1.model, &*a.1.client).cmp(&(&*b.1.model, &*b.1.client)))
        };
        if end > 0 && end < total {
            ranked.select_nth_unstable_by(end - 1, order);
            ranked.truncate(end);
        }
        ranked.sort_by(order);
        let page = ranked
            .into_iter()
            .skip(offset)
            .filter_map(|(_, k)| self.store.map().get(&k).map(|e| self.summary(e.value())))
            .collect();
        (page, total)
    }

    /// A client's strongest sequential test relative to the alert threshold.
    fn risk(&self, st: &ClientState) -> f64 {
        let c = &st.policy.cusum;
        c.low_margin
            .max(c.out_of_range)
            .max(c.structured)
            .max(c.invalid)
            / self.threshold()
    }

    /// One client of `model`, addressed as the API shows it (a pseudonym is matched by scan).
    pub fn client_report(&self, model: &str, label: &str) -> Option<ClientReport> {
        let entry =
            self.store.map().iter().find(|e| {
                &*e.key().model == model && self.client_label(&e.key().client) == label
            })?;
        let st = entry.value();
        let bucket_ms = st.window.bucket_ms();
        let series = st
            .window
            .buckets()
            .iter()
            .map(|b| bucket_view(b, bucket_ms))
            .collect();
        let prada = &st.detectors.prada;
        Some(ClientReport {
            summary: self.summary(st),
            window: st.window.total_counts(),
            series,
            detectors: serde_json::json!({
                "cusum": st.policy.cusum,
                "threshold": self.threshold(),
                "prada_w": prada.last_w,
                "prada_alarm": prada.alarm,
            }),
        })
    }

    /// Every model's campaigns now, with their members' labels: `(model, campaign, members)`.
    pub fn campaigns(&self) -> Vec<CampaignSummary> {
        let mut out: Vec<CampaignSummary> = Vec::new();
        for m in self.models.iter() {
            for c in m.detectors.campaign.campaigns() {
                out.push(CampaignSummary {
                    model: m.name.to_string(),
                    campaign: c,
                    members: Vec::new(),
                    technique: None,
                });
            }
        }
        // Both onset grids may report one group under one id: keep the larger view.
        out.sort_by(|a, b| {
            (&a.model, a.campaign.id, b.campaign.members).cmp(&(
                &b.model,
                b.campaign.id,
                a.campaign.members,
            ))
        });
        out.dedup_by(|a, b| a.campaign.id == b.campaign.id && a.model == b.model);
        for e in self.store.map().iter() {
            let st = e.value();
            let Some(c) = st.detectors.campaign.campaign else {
                continue;
            };
            if let Some(s) = out
                .iter_mut()
                .find(|s| s.campaign.id == c.id && *s.model == *st.model)
            {
                s.members.push(self.client_label(&st.client));
            }
        }
        out.extend(self.llm_campaigns());
        for s in &mut out {
            s.members.sort();
        }
        out.retain(|s| !s.members.is_empty());
        out.sort_by(|a, b| (&a.model, a.campaign.first_ms).cmp(&(&b.model, b.campaign.first_ms)));
        out
    }

    /// Each tracked client's closest approach to each alert threshold (1.0 alerts), for
    /// diagnostics: `(model, client, queries, peaks)`.
    pub fn peaks(&self) -> Vec<(String, String, u64, crate::detect::policy::Cusums)> {
        self.store
            .map()
            .iter()
            .map(|e| {
                let st = e.value();
                (
                    st.model.to_string(),
                    self.client_label(&st.client),
                    st.total,
                    st.policy.peak,
                )
            })
            .collect()
    }

    /// Clients, records and open alerts per model, by model name.
    pub fn model_traffic(&self) -> Vec<ModelTraffic> {
        let mut models: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for e in self.store.map().iter() {
            let m = models.entry(e.key().model.to_string()).or_default();
            m.0 += 1;
            m.1 += e.value().total;
            m.2 += e.value().policy.open.len() as u64;
        }
        models
            .into_iter()
            .map(|(model, (clients, records, open_alerts))| ModelTraffic {
                model,
                clients,
                records,
                open_alerts,
            })
            .collect()
    }

    fn summary(&self, st: &ClientState) -> ClientSummary {
        let c = &st.policy.cusum;
        let risk = self.risk(st);
        let (h, h2) = (self.policy.threshold(), self.policy.threshold2());
        let now = [
            c.low_margin / h2,
            c.out_of_range / h2,
            c.tail / h2,
            c.structured / h2,
            c.invalid / h,
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let p = &st.policy.peak;
        let peak = [
            p.low_margin,
            p.out_of_range,
            p.tail,
            p.structured,
            p.invalid,
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let pct = |x: f64| (100.0 * x).clamp(0.0, 100.0).round() as u8;
        // 100 is an open alert. Evidence at the threshold without one is either not yet
        // corroborated (too small a share of the window) or what is left of an alert that
        // resolved for want of new evidence (a CUSUM only decays on new queries): 99.
        let score = if st.policy.open.is_empty() {
            pct(now).min(99)
        } else {
            100
        };
        let ever_llm = st.detectors.llm.last.is_some();
        let peak_score = score.max(pct(peak)).max(if ever_llm { 100 } else { 0 });
        ClientSummary {
            model: st.model.to_string(),
            client: self.client_label(&st.client),
            risk,
            score,
            peak_score,
            resolved: st.policy.open.is_empty() && st.contributed == u32::MAX,
            first_seen_ms: st.first_seen_ms,
            last_seen_ms: st.last_seen_ms,
            queries: QueriesView {
                total: st.total,
                window: st.window.total_counts().queries,
            },
            open_alerts: st
                .policy
                .open
                .iter()
                .map(|a| OpenAlertView {
                    id: a.id.clone(),
                    kind: a.kind,
                    severity: a.severity,
                    since_ms: a.first_ts_ms,
                })
                .collect(),
        }
    }
}

fn bucket_view(b: &crate::window::Bucket, bucket_ms: i64) -> BucketView {
    let c = &b.counts;
    let score = |i: usize| f64::from(b.scores[i]) / 1000.0;
    BucketView {
        start_ms: b.index * bucket_ms,
        queries: c.queries,
        low_margin: c.low_margin,
        near_duplicates: c.near_dups,
        exact_repeats: c.exact_dups,
        class_flips: c.flips,
        out_of_range: c.out_of_range,
        structured: c.structured,
        invalid: c.invalid,
        distinct_cells: distinct_cells(&b.cells).round(),
        margin_histogram: b.margin_hist.to_vec(),
        scores: Scores {
            low_margin: score(0),
            out_of_range: score(1),
            structured: score(2),
            invalid: score(3),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::proto::v1::LlmQuery;
    use crate::record::RawRecord;

    #[test]
    fn llm_campaigns_are_listed_with_their_technique_and_members() {
        let p = super::Pipeline::new(
            std::sync::Arc::new(crate::config::Config::default()),
            None,
            std::sync::Arc::new(crate::clock::ManualClock::new(0)),
        );
        let mut alerts = Vec::new();
        // Eight accounts each sweep their own 40 ids, taking turns: a sweep spread over
        // accounts.
        for i in 0..8u32 {
            for a in 0..8u32 {
                let base = a * 1000 + i * 5;
                let rec = RawRecord {
                    client_id: format!("acct-{a}"),
                    model: "chat".into(),
                    ts_ms: 1_000 + i64::from(i * 8 + a) * 1000,
                    input: vec![1.0; 8],
                    llm: Some(Box::new(LlmQuery {
                        bias_ids: (base..base + 5).collect(),
                        bias_entries: 5,
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                p.submit(rec, &mut alerts).unwrap();
            }
        }
        let c = p.campaigns();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].technique.as_deref(), Some("logit_bias_sweep"));
        assert!(c[0].members.len() >= 5, "{:?}", c[0].members);
        assert!(c[0].campaign.pooled_events >= 64);
        let v = serde_json::to_value(&c[0]).unwrap();
        assert_eq!(v["id"], c[0].campaign.id_label());
    }
}
