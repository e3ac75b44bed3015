//! medrelay's runtime: everything between a connector handing over an appointment and a WhatsApp
//! message going out (and a patient's answer going back).
//!
//! - [`store`]: the durable store (SQLite), the only place with SQL.
//! - [`ingest`]: the door for connectors; returns only after a commit.
//! - [`schedule`]: plans message steps into the outbox.
//! - [`send`]: sends due steps, re-checking validity and consent at send time.
//! - [`whatsapp`]: Cloud API bodies, error taxonomy, webhooks and the built-in simulator.
//! - [`inbound`]: statuses, taps, STOP/START, emergency phrases, staff queue.
//! - [`writeback`]: answers back to the EHR, exactly once.
//! - [`service`]: one object wiring them, with a `tick` the CLI's loops call.
//! - [`http`]: the webhook endpoint and the HTTP face of the simulator (`medrelay simulate`).

pub mod accounts;
pub mod alerts;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod costs;
pub mod http;
pub mod inbound;
pub mod inbox;
pub mod ingest;
pub mod instruments;
pub mod keys;
pub mod metrics;
pub mod oidc;
pub mod schedule;
pub mod send;
pub mod service;
pub mod silence;
pub mod store;
pub mod watch;
pub mod whatsapp;
pub mod writeback;
