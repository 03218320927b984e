//! The xfuse daemon's library: the distributed filesystem's pieces, used by
//! the `xfused` binary and by the tests and benches.
//!
//! - [`meta`]: the namespace on a transactional KV engine;
//! - [`chunk`]: the local chunk store holding file data;
//! - [`fs`]: the `FileSystem` a client mounts, over the two;
//! - [`net`]: the metadata service and its client;
//! - [`rpc`]: the service layer: authentication, frames, multiplexed
//!   connections and bounds, for every network service;
//! - [`private_state`]: the modes that keep on-disk state private.
#![warn(missing_docs)]

pub mod chunk;
pub mod fs;
pub mod meta;
pub mod net;
pub mod private_state;
pub mod rpc;
