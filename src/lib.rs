//! Capsule's shared kernel.
//!
//! Everything the four services have in common: the generated contracts
//! ([`proto`]), configuration from the environment ([`config`]), the
//! database pool, migrations and health supervisor ([`db`]), the gRPC server
//! bootstrap ([`server`]), logs, metrics and trace export ([`telemetry`]),
//! the spans of a trace and their context across calls ([`trace`]) and signal
//! handling ([`shutdown`]), the audit trail each service keeps
//! ([`audit`]) and the one guard of outbound addresses ([`guard`]).

pub mod audit;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod db;
pub mod guard;
pub mod handoff;
pub mod migrate;
pub mod proto;
pub mod rpc;
pub mod rules;
pub mod schedule;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod trace;

/// What a database says about itself (`capsule db stats`, the admin API).
pub use db::stats;

/// `google.api` messages the contracts use (`HttpBody`), where the
/// generated code looks for them.
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}
