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

pub mod coverage;
pub mod drift;
pub mod fingerprint;
pub mod margin;
pub mod policy;
pub mod prada;
pub mod sanity;
pub mod shapiro;

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
    /// PRADA: Shapiro–Wilk W when a test ran on this query.
    pub prada_w: Option<f64>,
    /// PRADA: the client's current alarm (last W below delta).
    pub prada_alarm: bool,
    /// Differs from a nearby earlier query by a perturbation of one common step size.
    pub structured: bool,
    /// The answer's top-1/top-2 margin is in the normal traffic's low tail.
    pub low_margin: bool,
    /// Features outside normal traffic's range.
    pub out_count: u32,
    /// `out_count` beyond what normal queries show.
    pub out_of_range: bool,
    /// Features outside the schema's valid domain.
    pub domain_violations: u32,
    /// Feature-space cell of the query.
    pub cell: Option<u64>,
}

/// A detector with per-client state `State`.
pub trait Detector: Send + Sync {
    /// Per-client state, created on the client's first query.
    type State: Send;
    /// Name used in evidence and logs.
    fn name(&self) -> &'static str;
    /// A fresh per-client state.
    fn new_state(&self) -> Self::State;
    /// Observes one query, updating `state` and writing findings into `sig`.
    fn observe(&self, q: &Query<'_>, m: &ModelView<'_>, state: &mut Self::State, sig: &mut Signals);
}
