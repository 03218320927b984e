//! The measurement behind the embedded metadata engine's choice (fjall over
//! redb; numbers in `daemon/src/meta/mod.rs`): each engine runs the
//! metadata layer's write pattern. A create reads the parent inode and the
//! (absent) entry, then under a commit lock re-reads both (validation) and
//! writes inode, entry, listing entry and parent inode in one atomic batch;
//! a stat reads the entry and the inode. Each engine is measured with a
//! cheap commit (fjall: journal written to the OS; redb: Durability::None)
//! and with an fsync per commit, on 1 and 4 threads.
//!
//! ```sh
//! cargo run --release -p benches --bin kv-engines -- DIR [CREATES_PER_THREAD]
//! ```
use std::sync::{Arc, Mutex};
use std::time::Instant;

const VALUE_INODE: usize = 96;

trait Engine: Send + Sync {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Atomically writes `puts`; durable per the engine's mode.
    fn write(&self, puts: &[(Vec<u8>, Vec<u8>)]);
}

struct Fjall {
    ks: fjall::Keyspace,
    part: fjall::PartitionHandle,
    mode: fjall::PersistMode,
}
impl Engine for Fjall {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.part.get(key).unwrap().map(|v| v.to_vec())
    }
    fn write(&self, puts: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = self.ks.batch().durability(Some(self.mode));
        for (k, v) in puts {
            b.insert(&self.part, k.as_slice(), v.as_slice());
        }
        b.commit().unwrap();
    }
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");
struct Redb {
    db: redb::Database,
    durability: redb::Durability,
}
impl Engine for Redb {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let rt = self.db.begin_read().unwrap();
        let t = match rt.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return None,
            Err(e) => panic!("{e}"),
        };
        t.get(key).unwrap().map(|v| v.value().to_vec())
    }
    fn write(&self, puts: &[(Vec<u8>, Vec<u8>)]) {
        let mut wt = self.db.begin_write().unwrap();
        wt.set_durability(self.durability);
        {
            let mut t = wt.open_table(TABLE).unwrap();
            for (k, v) in puts {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        wt.commit().unwrap();
    }
}

fn inode_key(ino: u64) -> Vec<u8> {
    let mut k = vec![b'I', (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8];
    k.extend_from_slice(&ino.to_be_bytes());
    k
}
fn dentry_key(parent: u64, name: &str) -> Vec<u8> {
    let mut k = vec![b'D', (parent.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8];
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// One create as the metadata layer runs it: read the parent inode and the
/// (absent) entry, then under the commit lock validate both reads and write
/// inode, entry, listing entry and parent inode in one atomic batch.
fn run(engine: Arc<dyn Engine>, threads: usize, per_thread: usize) -> (f64, f64) {
    let lock = Arc::new(Mutex::new(()));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (engine, lock) = (engine.clone(), lock.clone());
            std::thread::spawn(move || {
                let parent = 1000 + t as u64;
                engine.write(&[(inode_key(parent), vec![7; VALUE_INODE])]);
                for i in 0..per_thread {
                    let ino = (t as u64 + 1) << 32 | i as u64;
                    let name = format!("file.{i}");
                    let p = engine.get(&inode_key(parent));
                    let d = engine.get(&dentry_key(parent, &name));
                    assert!(p.is_some() && d.is_none());
                    let _g = lock.lock().unwrap();
                    assert_eq!(engine.get(&inode_key(parent)), p);
                    assert!(engine.get(&dentry_key(parent, &name)).is_none());
                    let mut l = vec![b'L'];
                    l.extend_from_slice(&parent.to_be_bytes());
                    l.extend_from_slice(&(i as u64).to_be_bytes());
                    engine.write(&[
                        (inode_key(ino), vec![1; VALUE_INODE]),
                        (dentry_key(parent, &name), ino.to_be_bytes().to_vec()),
                        (l, name.into_bytes()),
                        (inode_key(parent), vec![(i % 251) as u8; VALUE_INODE]),
                    ]);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let create = (threads * per_thread) as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let parent = 1000 + t as u64;
                for i in 0..per_thread {
                    let d = engine.get(&dentry_key(parent, &format!("file.{i}"))).unwrap();
                    let ino = u64::from_be_bytes(d.try_into().unwrap());
                    assert!(engine.get(&inode_key(ino)).is_some());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let stat = (threads * per_thread) as f64 / t0.elapsed().as_secs_f64();
    (create, stat)
}

/// fjall against redb on the metadata layer's write pattern (creates and
/// stats, cheap commits and an fsync per commit, 1 and 4 threads): the
/// measurement behind the embedded metadata engine's choice.
#[derive(Debug, clap::Parser)]
#[command(name = "kv-engines")]
struct Args {
    /// Directory for the engines' files (default: the temporary directory).
    dir: Option<std::path::PathBuf>,
    /// Creates per thread with cheap commits (a twentieth of it with fsync).
    #[arg(default_value_t = 20_000)]
    creates_per_thread: usize,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let dir = args.dir.unwrap_or_else(std::env::temp_dir);
    let per_thread = args.creates_per_thread;
    println!(
        "engine durability threads creates/s stats/s (dir {})",
        dir.display()
    );
    for threads in [1usize, 4] {
        for (name, sync) in [("fast", false), ("fsync", true)] {
            let n = if sync { per_thread / 20 } else { per_thread };
            let d = tempfile::tempdir_in(&dir).unwrap();
            let ks = fjall::Config::new(d.path().join("fjall")).open().unwrap();
            let part = ks.open_partition("meta", Default::default()).unwrap();
            let mode = if sync {
                fjall::PersistMode::SyncData
            } else {
                fjall::PersistMode::Buffer
            };
            let (c, s) = run(Arc::new(Fjall { ks, part, mode }), threads, n);
            println!("fjall {name:5} {threads} {c:10.0} {s:10.0}");
            let db = redb::Database::create(d.path().join("redb")).unwrap();
            let durability = if sync {
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            };
            let (c, s) = run(Arc::new(Redb { db, durability }), threads, n);
            println!("redb  {name:5} {threads} {c:10.0} {s:10.0}");
        }
    }
}
