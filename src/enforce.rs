//! Query management: acting on what is detected.
//!
//! Detection alone leaves a caught extractor with full answers until a person acts. This
//! layer turns alerts (and operators' decisions) into a per-client [`table::Decision`] that
//! an enforcing proxy filter reads once per request, with no detector on that path, and
//! rewrites the answers of clients the policy degrades ([`degrade`]).
//!
//! - [`table`]: the bounded, expiring decision table, its token buckets and allow list;
//! - [`degrade`]: schema-keeping rewrites of OIP v2, KServe v1 and OpenAI answers;
//! - [`audit`]: the durable log of operators' actions;
//! - [`persist`]: the table saved across restarts.
//!
//! The policy itself is `[enforce]` ([`crate::config::enforce`]); its default is `observe`.

pub mod audit;
pub mod degrade;
pub mod persist;
pub mod table;
