//! vehicle-state: which state was vehicle N in at instant T?
//!
//! The request path reads top to bottom: `routes` (HTTP only) → `service` (cache-aside, the one
//! place that decides HIT or MISS) → `db` (SQL) and `cache` (Redis). `domain` holds the types every
//! layer shares.

pub mod auth;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod connection;
pub mod context;
pub mod db;
pub mod domain;
pub mod error;
pub mod follow;
pub mod healthcheck;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod publish;
pub mod quota;
pub mod routes;
pub mod service;
pub mod startup;
pub mod task;
pub mod telemetry;
