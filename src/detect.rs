//! Detectors: one module each, one interface.
//!
//! Every accepted query goes through the detectors in a fixed order; each reads the query,
//! the model's learned normal ([`ModelView`]) and its own per-client state, and writes its
//! findings into [`Signals`]. The [`policy`] turns a client's signals into alerts.
//!
//! | detector | catches | per-client state |
//! | --- | --- | --- |
//! | [`fingerprint`] | near-duplicates (Blacklight), retries, cross-account probing | recent top-N hashes |
//! | [`prada`] | PRADA's distance-distribution test, structured perturbations | bounded growing set |
//! | [`margin`] | answers concentrated on the decision boundary | none (window histograms) |
//! | [`drift`] | inputs outside the model's normal traffic (uniform, out-of-domain sets) | none |
//! | [`sanity`] | values outside the schema's valid domain | none |
//! | [`coverage`] | feature-space cells visited (random projections) | none (window bitmaps) |
//! | [`campaign`] | low-volume accounts that started together, pooled | onset, campaign |
//! | [`llm`] | logit-bias sweeps, logprob harvesting, distillation over accounts (LLM APIs) | epoch counts, an HLL of bias ids, template values |

pub mod campaign;
pub mod coverage;
pub mod drift;
pub mod fingerprint;
pub mod llm;
pub mod margin;
pub mod policy;
pub mod prada;
pub mod sanity;

use crate::config::DetectConfig;
use crate::normal::baseline::Baseline;
use crate::record::Answer;
use crate::schema::Schema;

/// What a detector sees of one accepted query.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub ts_ms: i64,
    /// The raw feature vector.
    pub input: &'a [f32],
    /// The vector detectors compare: the raw input, or its random projection to at most
    /// [`crate::sketch::SKETCH_DIM`] dimensions for wide inputs.
    pub sketch: &'a [f32],
    pub answer: Answer,
    /// Stable 64-bit tag of (model, client).
    pub client_tag: u64,
    /// The client's id in model-wide state that other replicas' echoes feed too (campaign
    /// cohorts): its fleet pseudonym when the pipeline is one of several, so that a client
    /// is one member whether its queries land here or elsewhere; else `client_tag`.
    pub member: u64,
    /// A language-model exchange's summary ([`llm`] judges it; the detectors of dense
    /// inputs do not see such queries).
    pub llm: Option<&'a crate::proto::v1::LlmQuery>,
}

/// The model-wide context detectors read.
#[derive(Debug, Clone, Copy)]
pub struct ModelView<'a> {
    pub baseline: &'a Baseline,
    pub schema: Option<&'a Schema>,
}

/// Findings about one query, filled in by the detectors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Bit-identical to one of the client's recent queries (a retry).
    pub exact_dup: bool,
    /// Matches one of the client's recent queries on most fingerprint hashes.
    pub near_dup: bool,
    /// `near_dup` and the model answered a different class than for the match.
    pub flip: bool,
    /// Matches a recent query of *another* client.
    pub global_near_dup: bool,
    /// Hash matches with the best earlier query, out of the hashes kept. Exact when it is
    /// over the near-duplicate threshold; below it, earlier queries that cannot reach the
    /// threshold are not compared and it may be an underestimate.
    pub best_match: u32,
    /// PRADA: minimum L2 distance to the growing set of the predicted class.
    pub prada_distance: Option<f32>,
    /// Within the normal near-neighbour radius of one of the client's own earlier queries
    /// (consecutive frames, small edits): not a new observation of where it queries.
    pub near_own: bool,
    /// PRADA: Shapiro–Wilk W when a test ran on this query.
    pub prada_w: Option<f64>,
    /// PRADA: the client's current alarm (last W below delta).
    pub prada_alarm: bool,
    /// Differs from a nearby earlier query by a perturbation of one common step size.
    pub structured: bool,
    /// The answer's top-1/top-2 margin is in the normal traffic's low tail.
    pub low_margin: bool,
    /// Features outside normal traffic's range (evidence only).
    pub out_count: u32,
    /// Off the region where normal inputs live (past normal's 99th percentile).
    pub out_of_range: bool,
    /// In the region's tail (past normal's 90th percentile).
    pub off_tail: bool,
    /// The query's distance to the region relative to its off threshold.
    pub off_score: f32,
    /// Past the excursions from the schema's bounds that normal queries make.
    pub excursion: bool,
    /// How far the input left the schema's bounds, in widths (`None` without a schema).
    pub excursion_value: Option<f32>,
    /// Invalid on its own: past a hard bound, or grossly past an observed one (or, counted
    /// by the pipeline, not finite). Counted as the number of such features.
    pub domain_violations: u32,
    /// Feature-space cell of the query.
    pub cell: Option<u64>,
    /// The campaign the client is a member of.
    pub campaign: Option<campaign::CampaignView>,
    /// The client behaves like the accounts of a campaign that shares its onset, without
    /// the evidence to be alerted as one: its queries leave the model's baseline sample.
    pub campaign_suspect: bool,
    /// The query was a language-model exchange: only the [`llm`] detector judged it.
    pub llm_query: bool,
    /// What the [`llm`] detector found.
    pub llm: Option<llm::Finding>,
}

/// What a detector's state must be: shared across the scoring threads, and serialised
/// whole into the pipeline's state snapshot, so that a restart restores it.
pub trait DetectorState:
    Send + Sync + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned
{
}

impl<T> DetectorState for T where
    T: Send + Sync + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned
{
}

/// A detector: what it keeps per client and per model, and what it finds in one query.
///
/// Adding a detector is one file (a type implementing this trait) and one line in
/// `detector_set!`'s invocation below; the pipeline, the client state and the model state
/// pick it up from there.
pub trait Detector: Send + Sync + Sized {
    /// Per-client state, created on the client's first query.
    type Client: DetectorState;
    /// Model-wide state, shared by every client of one model (e.g. a cross-account table);
    /// a snapshot copies it out under its lock.
    type Model: DetectorState + Clone;
    /// The detector with its settings.
    fn from_config(cfg: &DetectConfig) -> Self;
    /// A fresh per-client state.
    fn new_client(&self) -> Self::Client;
    /// A fresh model-wide state.
    fn new_model(&self) -> Self::Model;
    /// Observes one query, updating its state and writing findings into `sig`.
    fn observe(
        &self,
        q: &Query<'_>,
        m: &ModelView<'_>,
        model: &Self::Model,
        client: &mut Self::Client,
        sig: &mut Signals,
    );
    /// Heap bytes one client's state holds (the per-client memory budget).
    fn client_heap_bytes(_client: &Self::Client) -> usize {
        0
    }
}

/// Declares the detector set: every detector in the order each query goes through them, the
/// per-client and per-model state of all of them, and the loop that runs them.
macro_rules! detector_set {
    ($($field:ident: $ty:ty),+ $(,)?) => {
        /// Every detector, in the order each query goes through them (later ones may read
        /// what earlier ones found: PRADA skips the retries fingerprinting found).
        #[derive(Debug)]
        pub struct Detectors {
            $(#[allow(missing_docs)] pub $field: $ty,)+
        }

        /// One client's state of every detector.
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        pub struct ClientDetectors {
            $(#[allow(missing_docs)] pub $field: <$ty as Detector>::Client,)+
        }

        /// One model's state of every detector.
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub struct ModelDetectors {
            $(#[allow(missing_docs)] pub $field: <$ty as Detector>::Model,)+
        }

        impl Detectors {
            /// Every detector with its settings.
            pub fn new(cfg: &DetectConfig) -> Self {
                Self { $($field: <$ty as Detector>::from_config(cfg),)+ }
            }

            /// A new client's state.
            pub fn new_client(&self) -> ClientDetectors {
                ClientDetectors { $($field: self.$field.new_client(),)+ }
            }

            /// A new model's state.
            pub fn new_model(&self) -> ModelDetectors {
                ModelDetectors { $($field: self.$field.new_model(),)+ }
            }

            /// Runs every detector on one query.
            pub fn observe(
                &self,
                q: &Query<'_>,
                m: &ModelView<'_>,
                model: &ModelDetectors,
                client: &mut ClientDetectors,
                sig: &mut Signals,
            ) {
                $(self.$field.observe(q, m, &model.$field, &mut client.$field, sig);)+
            }
        }

        impl ClientDetectors {
            /// Heap bytes held by the client's detector states.
            pub fn heap_bytes(&self) -> usize {
                0 $(+ <$ty as Detector>::client_heap_bytes(&self.$field))+
            }
        }
    };
}

detector_set! {
    fingerprint: fingerprint::Fingerprint,
    prada: prada::Prada,
    margin: margin::Margin,
    drift: drift::Drift,
    sanity: sanity::Sanity,
    coverage: coverage::Coverage,
    campaign: campaign::Campaign,
    llm: llm::Llm,
}
