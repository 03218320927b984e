//! The service layer every network service of xfused is built on.
//!
//! - [`auth`]: the cluster credential, roles, and mutual TLS built from
//!   them: every connection to every service is authenticated, and every
//!   frame integrity-protected (and encrypted: TLS 1.3 has no other mode);
//! - [`frame`]: frames on the stream: a request id, a kind, the encoded
//!   message, and a bulk payload carried as is (file data, not re-encoded);
//! - [`codec`]: messages are serde types, encoded once, by postcard;
//! - [`stream`]: one connection's bytes, readable and writable by
//!   different threads at once;
//! - [`client`]: a multiplexed connection: many calls in flight, replies
//!   matched by id;
//! - [`server`]: accept, authenticate, read, run, reply, within bounds;
//! - [`rdma`]: bulk payloads moved by RDMA READ and WRITE, the frames
//!   still on the connection.
//!
//! A service defines its messages as Rust enums and a
//! [`server::Handler`]; its clients call through [`client::Conn`]. The
//! metadata service ([`crate::net`]) is the first.

pub mod auth;
pub mod client;
pub mod codec;
pub mod frame;
pub mod rdma;
pub mod record;
pub mod server;
pub mod stream;
