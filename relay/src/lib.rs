//! The e-prescription relay as a library: the `relay` binary is a thin shell over [`cli`].
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - [`domain`]: the e-prescription vocabulary and its rules; no HTTP, no SQL.
//! - [`db`]: every SQL statement, one module per table; returns domain values.
//! - [`http`]: routes, extractors, JSON shapes and the only place that knows status codes.
//! - [`auth`]: signing keys, JWT minting and verification, JWKS.
//! - [`mail`]: delivery of the mail outbox (SMTP or files); [`jobs`]: periodic jobs.
//! - [`startup`], [`config`], [`telemetry`], [`cli`], [`seed`]: process plumbing;
//!   [`registry_import`], [`contraindication_import`]: the CSV imports behind the commands.

pub mod auth;
pub mod cli;
pub mod config;
pub mod contraindication_import;
pub mod db;
pub mod documents;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod mail;
pub mod registry_import;
pub mod reminders;
pub mod seed;
pub mod startup;
pub mod telemetry;
