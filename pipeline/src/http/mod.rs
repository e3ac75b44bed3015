//! HTTP faces of the pipeline (axum 0.8): the Cloud API webhook endpoint medrelay serves, the
//! health endpoints, the status page, and the simulator server `medrelay simulate` runs in place
//! of graph.facebook.com.

pub mod console;
pub mod health;
pub mod simulator;
pub mod status_page;
pub mod webhook;
