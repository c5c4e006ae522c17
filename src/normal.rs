//! The model's learned normal: what its genuine traffic looks like, learned from the stream
//! itself.
//!
//! - [`reservoir`]: the bounded, per-client-capped sample of queries normal is learned from;
//! - [`baseline`]: the normal profile computed from it (per-feature fences and scales,
//!   margin quantile, event base rates, value lattice), refreshed as traffic comes;
//! - [`manifold`]: the joint fit of normal inputs (for off-manifold queries);
//! - [`grid`]: the byte grid per-client history is stored on.

pub mod baseline;
pub mod grid;
pub mod manifold;
pub mod reservoir;
