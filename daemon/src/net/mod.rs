//! The metadata service: `xfused meta` serves [`service::MetaService`]
//! over the service layer ([`crate::rpc`]); mounts reach it through
//! [`RemoteMeta`]. The messages are the namespace API's own
//! ([`crate::meta::Call`], [`crate::meta::Answer`]) inside the envelope
//! below.
//!
//! The service is stateless: every call is one metadata transaction on the
//! shared engine, and a client's session (its id, whose lease and
//! open-file sessions live in the store) is bound to its connection, so
//! any number of services can run against one engine and a client may
//! move to any of them, proving the session is its own with the token it
//! was given.
//!
//! One exception: a service on a store only it can open (the embedded
//! engine) keeps its clients' open handles in memory
//! ([`crate::meta::local`], one table for all of them), so an open and a
//! close through it write nothing. That state is soft. Started again, the
//! service answers the `Resume` of each client whose lease was live with
//! [`MetaReply::Reclaim`], and the client tells its open handles
//! ([`MetaRequest::Reopen`]); until every such client has (or the lease
//! time has passed), a file that loses its last link is kept as an orphan
//! held by the service's own client, and those are closed at the end of
//! this grace period. The model is NFSv4's reclaim after a server reboot.

pub mod client;
pub mod service;

pub use client::RemoteMeta;
pub use service::MetaService;

use crate::meta::{Answer, Call};

/// Most outcomes one change may forget.
pub const FORGET_MAX: u64 = 64;

/// Most deferred releases one request carries ([`MetaRequest::Batch`]).
pub const RELEASES_MAX: usize = 64;

/// A close the client deferred, to send with its next request
/// ([`MetaRequest::Batch`]): the change `Call::Release`, numbered like
/// any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// The client's number for this change.
    pub seq: u64,
    /// Sent before (its outcome may be recorded).
    pub resent: bool,
    /// The inode.
    pub ino: u64,
    /// The session handle.
    pub handle: u64,
}

/// Most handles one [`MetaRequest::Reopen`] carries.
pub const REOPEN_MAX: usize = 4096;

/// Bytes of a session token.
pub const TOKEN_LEN: usize = 32;

/// A request to the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetaRequest {
    /// Registers a new client and binds its session to this connection.
    Hello,
    /// Binds the session of `client` to this connection, proven by the
    /// token its `Hello` returned (after a reconnection).
    Resume {
        /// The client id.
        client: u64,
        /// Its token.
        token: [u8; TOKEN_LEN],
    },
    /// A namespace call in this connection's session that changes
    /// nothing (`Call::is_change` false).
    Call(Call),
    /// A change, numbered by the client, run exactly once however often it
    /// is sent ([`crate::meta::Meta::exactly_once`]).
    Change {
        /// The client's number for it (the same when sent again).
        seq: u64,
        /// The outcomes of the changes numbered `forget.0..forget.1` may
        /// go (their replies arrived); at most [`FORGET_MAX`] of them, all
        /// below `seq`. Deleted in this change's transaction.
        forget: (u64, u64),
        /// Sent before (its reply was lost): the service looks for its
        /// outcome first.
        resent: bool,
        /// The change.
        call: Call,
    },
    /// About the storage cluster; needs no session
    /// ([`crate::cluster::ClusterCall`]).
    Cluster(crate::cluster::ClusterCall),
    /// Deferred closes (at most [`RELEASES_MAX`]), each run exactly once in
    /// its own transaction, then a request (not another batch), if any.
    /// A close costs no round trip of its own this way.
    Batch {
        /// The closes, in the order they happened.
        releases: Vec<Release>,
        /// The request they came with.
        then: Option<Box<MetaRequest>>,
    },
    /// This client's open handles (inode, handle), at most [`REOPEN_MAX`],
    /// told again when a `Resume` answered [`MetaReply::Reclaim`]; from a
    /// client the service is not waiting for, ignored (`Reopened(0)`).
    Reopen {
        /// Some of them.
        handles: Vec<(u64, u64)>,
        /// These are the last.
        last: bool,
    },
}

/// A reply of the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MetaReply {
    /// The session `Hello` made.
    Session {
        /// The client id.
        client: u64,
        /// The token that proves the session (keep it secret).
        token: [u8; TOKEN_LEN],
    },
    /// `Resume` bound the session.
    Resumed,
    /// `Resume` bound the session, and the service (restarted since the
    /// client last spoke to it) asks for the client's open handles: a
    /// service on a store of its own keeps them in its memory
    /// ([`crate::meta::local`]). Send them with [`MetaRequest::Reopen`].
    Reclaim,
    /// How many handles a `Reopen` kept (the others' files are gone).
    Reopened(u64),
    /// What a call returned.
    Answer(Answer),
    /// What a change returned, and the records of the directories it
    /// wrote, as committed ([`crate::meta::take_changed_dirs`]).
    Changed {
        /// What it returned.
        answer: Answer,
        /// Directory inode numbers and their records.
        dirs: Vec<(u64, crate::meta::schema::InodeRec)>,
    },
    /// What a cluster call returned.
    Cluster(crate::cluster::ClusterAnswer),
    /// What a [`MetaRequest::Batch`]'s closes and request returned.
    Batch {
        /// Each close's number and outcome: the file to delete, or an
        /// errno.
        released: Vec<(u64, Result<Option<crate::meta::Reclaim>, i32>)>,
        /// The request's reply, or its errno.
        then: Option<Result<Box<MetaReply>, i32>>,
    },
}
