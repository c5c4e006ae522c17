//! # probewatch
//!
//! A sidecar that watches a model's mirrored query/response stream and raises alerts when a
//! client extracts the model or probes its decision boundary.
//!
//! # Layout
//!
//! The modules follow one record from the wire to an alert (see `ARCHITECTURE.md`):
//!
//! - [`ingest`]: the gRPC ingest service (`probewatch.v1.Ingest`), batch acks, backpressure;
//!   [`record::validate`] checks each record; mirrors from Envoy ext_proc
//!   ([`ingest::envoy`]) and the KServe logger ([`ingest::kserve`]) decode inference
//!   payloads ([`ingest::decode`]), identify clients ([`ingest::identity`]) and hand each
//!   exchange ([`ingest::source`]) to the scoring thread ([`ingest::scorer`]).
//! - [`pipeline`]: the per-record pipeline shared by the server and offline replay.
//! - [`window`]: per-client sliding-window sketches in a dashmap ([`window::store`]) and
//!   the model's learned normal traffic ([`window::baseline`]).
//! - [`detect`]: one module per detector, and the [`detect::policy`] that turns their
//!   signals into alerts.
//! - [`alert`]: the alert model, the durable [`alert::spool`], the per-sink
//!   [`alert::delivery`] loop and one file per sink format.
//! - [`api`]: the SOC query API (HTTP/JSON, bearer tokens, live SSE stream);
//!   [`telemetry::metrics`] serves Prometheus `/metrics`.
//! - [`server`]: `serve`: the gRPC server with health and reflection, graceful shutdown.
//! - [`replay`]: offline replay of a recorded trace, with scoring against labels;
//!   [`trace`] reads the trace format; [`send`] streams a trace to a running sidecar.
//! - [`config`], [`schema`], [`record`], [`clock`], [`telemetry`]: the supporting cast.
#![forbid(unsafe_code)]

pub mod alert;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod detect;
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
