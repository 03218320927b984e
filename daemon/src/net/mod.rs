//! The metadata service over TCP: `xfused meta` runs [`server::serve`];
//! clients reach it through [`RemoteMeta`]. The wire format is in
//! [`proto`].
//!
//! The service is stateless: every request is one metadata transaction on
//! the shared engine, and a client's identity (its id, whose lease and
//! open-file sessions live in the store) travels with each request, so any
//! number of services can run against one engine and a client may talk to
//! any of them.

pub mod client;
pub mod proto;
pub mod server;

pub use client::RemoteMeta;
