//! The model's learned normal: what its genuine traffic looks like, learned from the stream
//! itself.
//!
//! - [`reservoir`]: the bounded, per-client-capped sample of queries normal is learned from;
//! - [`baseline`]: the normal profile computed from it (per-feature fences and scales,
//!   margin quantile, event base rates, value lattice), refreshed as traffic comes;
//! - [`region`]: where normal inputs live, learned robustly in rank space ([`copula`],
//!   [`gauss`]) with out-of-sample thresholds (for off-manifold queries);
//! - [`grid`]: the byte grid per-client history is stored on.

pub mod baseline;
pub mod copula;
pub mod gauss;
pub mod grid;
pub mod region;
pub mod reservoir;
