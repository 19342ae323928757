//! Integration tests: one binary, real PostgreSQL (a fresh database per test through
//! `#[sqlx::test]`), suppliers over real HTTP on loopback (the project's simulator), and a
//! manual clock so time-dependent rules are crossed without sleeping.

mod api;
mod binary;
mod canary;
mod console;
mod emis_adapter;
mod fuzz;
mod guard;
mod helpers;
mod hostile;
mod import;
mod keys;
mod layers;
mod lifecycle;
mod ops;
mod redaction;
mod roles;
mod safety;
mod simulator_control;
mod sweep;
mod tls;
mod tpp_adapter;
mod traces;
mod vision_adapter;
mod vision_signing;
mod wssec;
