//! A full consistency check of a namespace: the invariants listed in the
//! module docs of [`super`], over every key of the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::kv::KvEngine;
use super::schema::{self, tag, CounterRec, DentryRec, InodeRec, ListingRec, ROOT_INO};

/// Every violated invariant, described; empty if the namespace is sound.
pub fn check_namespace(engine: &dyn KvEngine) -> Result<Vec<String>, super::MetaError> {
    let all = engine.scan(&[], &[0xff; 12], usize::MAX)?;
    let mut problems = Vec::new();
    let mut inodes: BTreeMap<u64, InodeRec> = BTreeMap::new();
    let mut dentries: Vec<(u64, Vec<u8>, DentryRec)> = Vec::new();
    let mut listings: BTreeMap<(u64, u64), ListingRec> = BTreeMap::new();
    let mut sessions: HashMap<u64, usize> = HashMap::new();
    let mut by_client: BTreeSet<(u64, u64, u64)> = BTreeSet::new();
    let mut by_inode: BTreeSet<(u64, u64, u64)> = BTreeSet::new();
    let mut orphans: BTreeSet<u64> = BTreeSet::new();
    let mut counters = CounterRec::default();
    let mut xattrs: HashMap<u64, u32> = HashMap::new();
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    for p in &all {
        let k = &p.key;
        match k.first() {
            Some(&tag::INODE) if k.len() == 10 => {
                inodes.insert(be(&k[2..10]), InodeRec::decode(&p.value)?);
            }
            Some(&tag::DENTRY) if k.len() > 10 => {
                dentries.push((be(&k[2..10]), k[10..].to_vec(), DentryRec::decode(&p.value)?));
            }
            Some(&tag::LISTING) if k.len() == 18 => {
                listings.insert((be(&k[2..10]), be(&k[10..18])), ListingRec::decode(&p.value)?);
            }
            Some(&tag::OPEN) if k.len() == 26 => {
                let ino = be(&k[2..10]);
                *sessions.entry(ino).or_default() += 1;
                by_inode.insert((be(&k[10..18]), ino, be(&k[18..26])));
            }
            Some(&tag::CLIENT_OPEN) => {
                let (ino, handle) = schema::parse_client_open_key(k)?;
                by_client.insert((be(&k[1..9]), ino, handle));
            }
            Some(&tag::ORPHAN) if k.len() == 9 => {
                orphans.insert(be(&k[1..9]));
            }
            Some(&tag::COUNTER) => {
                let c = CounterRec::decode(&p.value)?;
                // Saturating, as the counters themselves (ops.rs).
                counters.inodes = counters.inodes.saturating_add(c.inodes);
                counters.bytes = counters.bytes.saturating_add(c.bytes);
            }
            Some(&tag::XATTR) if k.len() > 10 => {
                *xattrs.entry(be(&k[2..10])).or_default() += 1;
            }
            Some(&tag::ALLOC)
            | Some(&tag::CLIENT_ALLOC)
            | Some(&tag::HANDLE_ALLOC)
            | Some(&tag::CLIENT)
            | Some(&tag::SERVICE) => {}
            Some(&tag::DONE) if k.len() == 17 => {}
            _ => problems.push(format!("unknown key {k:?}")),
        }
    }
    for (ino, n) in &xattrs {
        match inodes.get(ino) {
            None => problems.push(format!("{n} xattrs of missing inode {ino}")),
            Some(rec) if rec.xattrs != *n => {
                problems.push(format!("inode {ino}: xattrs {} but {n} found", rec.xattrs))
            }
            _ => {}
        }
    }
    if by_client != by_inode {
        problems.push(format!(
            "open sessions by client {by_client:?} differ from by inode {by_inode:?}"
        ));
    }
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut entries: HashMap<u64, u64> = HashMap::new();
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut dir_entry: HashMap<u64, Vec<u64>> = HashMap::new();
    for (parent, name, d) in &dentries {
        let shown = String::from_utf8_lossy(name);
        *entries.entry(*parent).or_default() += 1;
        let Some(parent_rec) = inodes.get(parent) else {
            problems.push(format!("entry {parent}/{shown} in missing directory"));
            continue;
        };
        if !parent_rec.is_dir() {
            problems.push(format!("entry {parent}/{shown} in a non-directory"));
        }
        if d.cookie >= parent_rec.cookie_next {
            problems.push(format!(
                "entry {parent}/{shown} has cookie {} >= next {}",
                d.cookie, parent_rec.cookie_next
            ));
        }
        match listings.get(&(*parent, d.cookie)) {
            Some(l) if l.ino == d.ino && l.kind == d.kind && l.name == *name => {}
            other => problems.push(format!(
                "entry {parent}/{shown} cookie {}: listing {other:?}",
                d.cookie
            )),
        }
        let Some(rec) = inodes.get(&d.ino) else {
            problems.push(format!("entry {parent}/{shown} names missing inode {}", d.ino));
            continue;
        };
        if rec.kind() != d.kind {
            problems.push(format!(
                "entry {parent}/{shown} type {:o} but inode {} is {:o}",
                d.kind,
                d.ino,
                rec.kind()
            ));
        }
        *links.entry(d.ino).or_default() += 1;
        children.entry(*parent).or_default().push(d.ino);
        if rec.is_dir() {
            *subdirs.entry(*parent).or_default() += 1;
            dir_entry.entry(d.ino).or_default().push(*parent);
        }
    }
    if listings.len() != dentries.len() {
        problems.push(format!(
            "{} listing keys for {} entries",
            listings.len(),
            dentries.len()
        ));
    }
    let mut regular_bytes = 0i64;
    for (ino, rec) in &inodes {
        if rec.kind() == libc::S_IFREG {
            regular_bytes = regular_bytes.saturating_add(rec.size as i64);
        }
        if rec.xattrs != 0 && !xattrs.contains_key(ino) {
            problems.push(format!("inode {ino}: xattrs {} but none found", rec.xattrs));
        }
        let n = links.get(ino).copied().unwrap_or(0);
        if rec.is_dir() {
            let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
            if rec.nlink != want {
                problems.push(format!(
                    "directory {ino}: nlink {} but {want} expected",
                    rec.nlink
                ));
            }
            if rec.entries != entries.get(ino).copied().unwrap_or(0) {
                problems.push(format!(
                    "directory {ino}: entries {} but {} found",
                    rec.entries,
                    entries.get(ino).copied().unwrap_or(0)
                ));
            }
            let parents = dir_entry.get(ino).cloned().unwrap_or_default();
            if *ino == ROOT_INO {
                if !parents.is_empty() {
                    problems.push("the root has an entry".into());
                }
            } else if parents != vec![rec.parent] {
                problems.push(format!(
                    "directory {ino}: parent {} but entries in {parents:?}",
                    rec.parent
                ));
            }
        } else if rec.nlink != n {
            problems.push(format!("inode {ino}: nlink {} but {n} entries", rec.nlink));
        }
        if rec.nlink == 0 && (!orphans.contains(ino) || sessions.get(ino).copied().unwrap_or(0) == 0) {
            problems.push(format!("inode {ino} has no links and is not an open orphan"));
        }
    }
    for ino in &orphans {
        if inodes.get(ino).is_none_or(|r| r.nlink != 0) {
            problems.push(format!("orphan mark on inode {ino}, which is missing or linked"));
        }
    }
    // Reachability from the root (which also rules out cycles: a directory
    // in a cycle has its only entry inside the cycle, so it is unreachable).
    let mut seen = BTreeSet::from([ROOT_INO]);
    let mut todo = vec![ROOT_INO];
    while let Some(dir) = todo.pop() {
        for child in children.get(&dir).into_iter().flatten() {
            if seen.insert(*child) && inodes.get(child).is_some_and(InodeRec::is_dir) {
                todo.push(*child);
            }
        }
    }
    for (ino, rec) in &inodes {
        if !seen.contains(ino) && rec.nlink != 0 {
            problems.push(format!("inode {ino} is not reachable from the root"));
        }
    }
    if counters.inodes != inodes.len() as i64 {
        problems.push(format!(
            "inode counter {} but {} inodes",
            counters.inodes,
            inodes.len()
        ));
    }
    if counters.bytes != regular_bytes {
        problems.push(format!(
            "byte counter {} but files hold {regular_bytes}",
            counters.bytes
        ));
    }
    Ok(problems)
}
