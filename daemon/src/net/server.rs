//! The `xfused meta` service: accepts connections, answers requests.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::proto::{self, Reply, Request};
use crate::meta::kv::KvEngine;
use crate::meta::{Clock, Meta, MetaConfig, MetaError};

/// Connections served at once; more are refused (closed at once).
pub const CONNECTIONS_MAX: usize = 512;
/// A connection idle this long is closed (clients reconnect).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The service's state: the engine, and a cache of per-client handles
/// (rebuilt on demand, so a restarted service serves existing clients).
pub struct MetaService {
    engine: Arc<dyn KvEngine>,
    config: MetaConfig,
    clock: Arc<dyn Clock>,
    /// The service's own client (reaping, client-less requests).
    own: Arc<Meta>,
    clients: Mutex<HashMap<u64, Arc<Meta>>>,
    connections: AtomicUsize,
}

impl std::fmt::Debug for MetaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaService")
            .field("engine", &self.engine)
            .finish()
    }
}

impl MetaService {
    /// A service over `engine` (creating the namespace if it is empty).
    pub fn new(
        engine: Arc<dyn KvEngine>,
        config: MetaConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<MetaService, MetaError> {
        let own = Arc::new(Meta::connect(engine.clone(), config.clone(), clock.clone())?);
        Ok(MetaService {
            engine,
            config,
            clock,
            own,
            clients: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
        })
    }

    /// The service's own metadata handle.
    pub fn own(&self) -> &Arc<Meta> {
        &self.own
    }

    /// The handle of client `id`, attached on first use; ESTALE if the
    /// store does not know the client (its lease expired and it was reaped).
    fn client(&self, id: u64) -> Result<Arc<Meta>, MetaError> {
        if let Some(meta) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(meta.clone());
        }
        let meta = Arc::new(Meta::attach(
            self.engine.clone(),
            self.config.clone(),
            self.clock.clone(),
            id,
        )?);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, meta.clone());
        Ok(meta)
    }

    fn forget_client(&self, id: u64) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Result<Reply, MetaError> {
        let own = &self.own;
        Ok(match req {
            Request::Hello => {
                let meta = Arc::new(Meta::connect(
                    self.engine.clone(),
                    self.config.clone(),
                    self.clock.clone(),
                )?);
                let id = meta.client_id();
                tracing::info!("client {id} registered");
                self.clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, meta);
                Reply::Client(id)
            }
            Request::Heartbeat { client } => {
                self.client(client)?.heartbeat()?;
                Reply::Unit
            }
            Request::Goodbye { client } => {
                let reclaimed = self.client(client)?.close_client()?;
                self.forget_client(client);
                tracing::info!("client {client} left");
                Reply::Reclaims(reclaimed)
            }
            Request::ReapExpired { client } => Reply::Reclaims(self.client(client)?.reap_expired()?),
            Request::Lookup {
                client: _,
                caller,
                parent,
                name,
            } => {
                let (ino, rec) = own.lookup(&caller, parent, &name)?;
                Reply::Entry { ino, rec }
            }
            Request::Getattr { ino } => Reply::Inode(own.getattr(ino)?),
            Request::Access { caller, ino, mask } => {
                own.access(&caller, ino, mask)?;
                Reply::Unit
            }
            Request::Setattr { caller, ino, set } => {
                let (rec, old_size) = own.setattr(&caller, ino, &set)?;
                Reply::Setattr { rec, old_size }
            }
            Request::Mknod {
                client,
                caller,
                parent,
                name,
                mode,
                rdev,
                target,
                open,
            } => {
                let (ino, rec, handle) = self
                    .client(client)?
                    .mknod(&caller, parent, &name, mode, rdev, &target, open)?;
                Reply::Created { ino, rec, handle }
            }
            Request::Readlink { ino } => Reply::Bytes(own.readlink(ino)?),
            Request::Link {
                caller,
                ino,
                newparent,
                newname,
            } => Reply::Inode(own.link(&caller, ino, newparent, &newname)?),
            Request::Unlink { caller, parent, name } => Reply::Reclaim(own.unlink(&caller, parent, &name)?),
            Request::Rmdir { caller, parent, name } => {
                own.rmdir(&caller, parent, &name)?;
                Reply::Unit
            }
            Request::Rename {
                caller,
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            } => Reply::Reclaim(own.rename(&caller, olddir, &oldname, newdir, &newname, flags)?),
            Request::Open {
                client,
                caller,
                ino,
                read,
                write,
            } => {
                let (rec, handle) = self.client(client)?.open(&caller, ino, read, write)?;
                Reply::Opened { rec, handle }
            }
            Request::Release { client, ino, handle } => {
                Reply::Reclaim(self.client(client)?.release(ino, handle)?)
            }
            Request::NoteWrite { ino, end } => Reply::Inode(own.note_write(ino, end)?),
            Request::Opendir { caller, ino } => {
                own.opendir(&caller, ino)?;
                Reply::Unit
            }
            Request::Readdir { ino, after, limit } => {
                Reply::Items(own.readdir(ino, after, limit as usize)?)
            }
            Request::Setxattr {
                caller,
                ino,
                name,
                value,
                flags,
            } => {
                own.setxattr(&caller, ino, &name, &value, flags)?;
                Reply::Unit
            }
            Request::Getxattr { ino, name } => Reply::Bytes(own.getxattr(ino, &name)?),
            Request::Listxattr { ino } => Reply::Names(own.listxattr(ino)?),
            Request::Removexattr { caller, ino, name } => {
                own.removexattr(&caller, ino, &name)?;
                Reply::Unit
            }
            Request::Usage => Reply::Usage(own.usage()?),
        })
    }

    /// Serves one connection until the peer closes it, it idles out, or
    /// its framing breaks (an oversized length cannot be skipped).
    fn connection(&self, stream: TcpStream) -> io::Result<()> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = BufWriter::new(stream);
        loop {
            let body = match proto::read_frame(&mut reader) {
                Ok(Some(body)) => body,
                Ok(None) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!("{peer}: {e}; closing the connection");
                    let _ = proto::write_frame(&mut writer, &proto::encode_response(&Err(libc::EPROTO)));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let result = match Request::decode(&body) {
                Ok(req) => self.handle(req).map_err(|e| {
                    if let MetaError::Kv(_) | MetaError::Schema(_) | MetaError::Corrupt(_) = e {
                        tracing::error!("{peer}: {e}");
                    }
                    e.errno()
                }),
                Err(e) => {
                    tracing::warn!("{peer}: refused a request: {e}");
                    Err(libc::EPROTO)
                }
            };
            proto::write_frame(&mut writer, &proto::encode_response(&result))?;
        }
    }
}

/// Accepts connections on `listener` forever, one thread each (at most
/// [`CONNECTIONS_MAX`]), and reaps expired clients every `reap_every`.
pub fn serve(listener: TcpListener, service: Arc<MetaService>, reap_every: Duration) -> io::Result<()> {
    {
        let service = service.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || loop {
                std::thread::sleep(reap_every);
                if let Err(e) = service.own.heartbeat() {
                    tracing::warn!("renewing the service's lease: {e}");
                }
                match service.own.reap_expired() {
                    Ok(r) if !r.is_empty() => {
                        tracing::info!("reaped {} files left open by dead clients", r.len())
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("reaping dead clients: {e}"),
                }
                // Drop the cached handles: a client reaped just now (by this
                // service or another) must get ESTALE from `attach` on its
                // next request, not keep opening sessions no lease covers.
                service.clients.lock().unwrap_or_else(|e| e.into_inner()).clear();
            })?;
    }
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        if service.connections.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            service.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("refusing a connection: {CONNECTIONS_MAX} already open");
            continue;
        }
        let worker = service.clone();
        let spawned = std::thread::Builder::new()
            .name("meta-conn".into())
            .spawn(move || {
                if let Err(e) = worker.connection(stream) {
                    tracing::debug!("connection ended: {e}");
                }
                worker.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            service.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}
