//! # probewatch
//!
//! A sidecar that watches a model's mirrored query/response stream and raises alerts when a
//! client extracts the model or probes its decision boundary.
//!
//! # Layout
//!
//! Modules are layered; each uses only the layers below it (`ARCHITECTURE.md` has the rule,
//! and `tests/layers.rs` enforces it). From the bottom:
//!
//! 0. **Vocabulary.** [`proto`] (wire types), [`vocab`] (an alert, its kind, severity and
//!    ATLAS technique), [`clock`], [`hash`], [`stats`], [`pseudonym`] (keyed client pseudonyms),
//!    [`budget`] (one memory budget for data in flight), [`conn`] (connections bounded in
//!    number and idle time).
//! 1. **Payloads.** [`exchange`]: inference payloads decoded into queries (OIP v2, KServe
//!    v1, OpenAI; an OpenAI exchange also into the LLM summary that [`detect::llm`] reads).
//! 2. **Inputs.** [`config`], [`schema`] (what a model owner knows of inputs), [`record`]
//!    (a query and its [`record::validate`]ion), [`sketch`] (the vector detectors compare),
//!    [`trace`] (the recorded-traffic format: records, or whole exchanges).
//! 3. **State.** [`window`]: per-client sliding-window sketches in a bounded dashmap;
//!    [`normal`]: the model's learned normal traffic (reservoir, baseline, the region in
//!    rank space).
//! 4. **Detectors.** [`detect`]: one module per detector behind the [`detect::Detector`]
//!    trait (the [`detect::campaign`] detector pools accounts that started together,
//!    [`detect::llm`] judges LLM API clients), and the [`detect::policy`] that turns their
//!    signals into decisions.
//! 5. **Pipeline.** [`pipeline`]: a record's steps from admission to alert events, shared
//!    by the sidecar and offline replay.
//! 6. **Delivery.** [`alert`]: the durable spool, per-sink delivery, one file per format;
//!    [`enforce`]: what a flagged client gets (the decision table, degraded answers).
//! 7. **Edges.** [`ingest`]: the gRPC ingest API and the Envoy ext_proc and KServe logger
//!    mirrors; [`api`]: the SOC query API and dashboard; [`replay`]: offline replay;
//!    [`cluster`]: the Redis that replicas share (alert ownership, the learned normal).
//! 8. **Observers.** [`telemetry`]: logs, Prometheus `/metrics`, OTLP; [`send`]: streams
//!    a trace to a running sidecar.
//! 9. **Composition.** [`sidecar`]: builds and runs everything and drains it on SIGTERM.
//! 10. **Entry.** [`cli`]: arguments and exit codes (`main.rs` only calls it).
#![forbid(unsafe_code)]

pub mod alert;
pub mod api;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod detect;
pub mod enforce;
pub mod exchange;
pub mod hash;
pub mod ingest;
pub mod normal;
pub mod pipeline;
pub mod pseudonym;
pub mod record;
pub mod replay;
pub mod schema;
pub mod send;
pub mod sidecar;
pub mod sketch;
pub mod stats;
pub mod telemetry;
pub mod trace;
pub mod vocab;
pub mod window;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `probewatch.v1`.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("probewatch.v1");
    }
    /// Open Inference Protocol v2 messages (decoding mirrored gRPC inference).
    pub mod inference {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("inference");
    }
    /// Encoded file descriptors, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/probewatch_descriptor.bin"));
}
