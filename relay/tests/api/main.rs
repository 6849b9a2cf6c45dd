//! Integration tests of the HTTP API against a real PostgreSQL (see helpers.rs).

mod access_control;
mod access_log;
mod admin;
mod audit;
mod auth;
mod checks;
mod consultation_room;
mod documents;
mod eligibility;
mod fallbacks;
mod health;
mod helpers;
mod idempotency;
mod interleavings;
mod lifecycle;
mod outages;
mod outbox;
mod prescriptions;
mod presends;
mod receive;
mod robustness;
mod smtp;
