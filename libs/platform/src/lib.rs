//! Shared plumbing for Shepherd's services, written once: configuration
//! helpers, telemetry, the PostgreSQL pool with versioned migrations, and a
//! gRPC server that always serves reflection, health and graceful shutdown.

pub mod audit;
pub mod auth;
pub mod backoff;
pub mod batch;
pub mod columns;
pub mod config;
pub mod db;
pub mod error;
pub mod failpoint;
pub mod hardening;
pub mod limits;
pub mod memory;
pub mod notify;
pub mod paging;
pub mod server;
pub mod session_lock;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod timer;
pub mod tls;
pub mod validate;
