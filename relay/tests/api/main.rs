//! Integration tests of the HTTP API against a real PostgreSQL (see helpers.rs).

mod admin;
mod auth;
mod checks;
mod consultation_room;
mod documents;
mod eligibility;
mod fallbacks;
mod health;
mod helpers;
mod idempotency;
mod lifecycle;
mod outages;
mod outbox;
mod prescriptions;
mod presends;
mod receive;
mod robustness;
mod smtp;
