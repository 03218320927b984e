//! The host's half of the guest workload (guest/workload.sh): files the
//! host writes for the guest to check, and the check of everything the
//! guest left behind, derived from the same rules the script follows.
//!
//! Guest worker `k` creates `f0..f{n-1}` in `from-guest/wk`, then moves
//! every `i % 4 == 0` to `sub/r{i}`, hard-links every other `i % 5 == 1` to
//! `sub/l{i}`, and unlinks every other `i % 7 == 3`. File `i` holds
//! `worker k file i\n`, followed by a 1 KiB pattern line when `i % 3 == 0`.
//! Each worker also writes 1 MiB of random bytes to `big`, and finally a
//! `wk.sha256` list of its files as the guest read them.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

/// Sizes of the files the host writes (edges of pages and of the 64 KiB
/// and 1 MiB request sizes).
const HOST_SIZES: [usize; 9] = [0, 1, 4095, 4096, 4097, 65_535, 65_537, 1 << 20, (1 << 20) + 3];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Deterministic bytes for host file `i` (xorshift; no two files alike).
fn host_bytes(i: usize, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ (i as u64 + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `from-host/` under `share`: files of awkward sizes and their
/// `SHA256SUMS`, which the guest checks with `sha256sum -c`.
pub fn write_host_files(share: &Path) -> anyhow::Result<()> {
    let dir = share.join("from-host");
    fs::create_dir_all(&dir)?;
    let mut sums = String::new();
    for (i, len) in HOST_SIZES.iter().enumerate() {
        let name = format!("h{i}-{len}");
        let data = host_bytes(i, *len);
        fs::write(dir.join(&name), &data).with_context(|| format!("writing {name}"))?;
        sums.push_str(&format!("{}  {name}\n", sha256(&data)));
    }
    fs::write(dir.join("SHA256SUMS"), sums)?;
    Ok(())
}

/// The 1 KiB pattern line of the script: 64 copies of 0..f.
fn pattern() -> String {
    "0123456789abcdef".repeat(64)
}

/// What guest file `i` of worker `k` holds.
pub fn guest_file(k: u32, i: u32) -> Vec<u8> {
    if i.is_multiple_of(3) {
        format!("worker {k} file {i}\n{}\n", pattern()).into_bytes()
    } else {
        format!("worker {k} file {i}\n").into_bytes()
    }
}

/// Where a file lives at the end, and its link count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    /// Path relative to the worker's directory.
    path: String,
    nlink: u64,
    content: Vec<u8>,
}

fn expected(k: u32, n: u32) -> Vec<Expected> {
    let mut files = Vec::new();
    for i in 0..n {
        let content = guest_file(k, i);
        if i.is_multiple_of(4) {
            files.push(Expected {
                path: format!("sub/r{i}"),
                nlink: 1,
                content,
            });
            continue;
        }
        let linked = i % 5 == 1;
        let unlinked = i % 7 == 3;
        let nlink = if linked && !unlinked { 2 } else { 1 };
        if !unlinked {
            files.push(Expected {
                path: format!("f{i}"),
                nlink,
                content: content.clone(),
            });
        }
        if linked {
            files.push(Expected {
                path: format!("sub/l{i}"),
                nlink,
                content,
            });
        }
    }
    files
}

/// Entries the guest should have counted: (top level, sub/) of a worker's
/// directory. Top level: the f files, `big` and `sub`.
pub fn expected_counts(n: u32) -> (usize, usize) {
    let files = expected(0, n);
    let sub = files.iter().filter(|f| f.path.starts_with("sub/")).count();
    (files.len() - sub + 2, sub)
}

/// Checks what `workers` guest workers with `n` files each left in `share`.
/// Returns every problem found (empty: all as expected).
pub fn check_guest_files(share: &Path, n: u32, workers: u32) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for k in 0..workers {
        let dir = share.join("from-guest").join(format!("w{k}"));
        let files = expected(k, n);
        // Exactly the expected names, no more, no fewer.
        let mut want: BTreeSet<String> = files.iter().map(|f| f.path.clone()).collect();
        want.insert("big".into());
        want.insert("sub".into());
        let mut have = BTreeSet::new();
        for sub in ["", "sub"] {
            let d = dir.join(sub);
            let entries = fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                have.insert(if sub.is_empty() {
                    name
                } else {
                    format!("sub/{name}")
                });
            }
        }
        for missing in want.difference(&have) {
            problems.push(format!("w{k}/{missing}: missing"));
        }
        for extra in have.difference(&want) {
            problems.push(format!("w{k}/{extra}: should not exist"));
        }
        for f in &files {
            let path = dir.join(&f.path);
            let Ok(data) = fs::read(&path) else { continue };
            if data != f.content {
                problems.push(format!("w{k}/{}: content differs ({} bytes)", f.path, data.len()));
            }
            let nlink = fs::metadata(&path)?.nlink();
            if nlink != f.nlink {
                problems.push(format!("w{k}/{}: {nlink} links, want {}", f.path, f.nlink));
            }
        }
        match fs::metadata(dir.join("big")) {
            Ok(m) if m.len() == 1 << 20 => {}
            Ok(m) => problems.push(format!("w{k}/big: {} bytes, want 1 MiB", m.len())),
            Err(_) => {}
        }
        // The guest's view of its files (sha256sum over the mount) must
        // match what landed on the host, file by file.
        let list = share.join("from-guest").join(format!("w{k}.sha256"));
        let list = fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        let mut listed = BTreeSet::new();
        for line in list.lines() {
            let Some((sum, name)) = line.split_once("  ") else {
                problems.push(format!("w{k}.sha256: bad line {line:?}"));
                continue;
            };
            listed.insert(name.to_string());
            match fs::read(dir.join(name)) {
                Ok(data) if sha256(&data) == sum => {}
                Ok(_) => problems.push(format!(
                    "w{k}/{name}: the guest read other bytes than the host has"
                )),
                Err(e) => problems.push(format!(
                    "w{k}/{name}: listed by the guest, unreadable on the host: {e}"
                )),
            }
        }
        let want_listed: BTreeSet<String> = want.iter().filter(|n| *n != "sub").cloned().collect();
        if listed != want_listed {
            problems.push(format!(
                "w{k}.sha256 lists {} files, want {}",
                listed.len(),
                want_listed.len()
            ));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out what a correct guest run leaves, without a guest.
    fn simulate(share: &Path, n: u32, workers: u32) {
        for k in 0..workers {
            let dir = share.join("from-guest").join(format!("w{k}"));
            fs::create_dir_all(dir.join("sub")).unwrap();
            let files = expected(k, n);
            for f in files.iter().filter(|f| !f.path.starts_with("sub/l")) {
                fs::write(dir.join(&f.path), &f.content).unwrap();
            }
            for f in &files {
                let Some(i) = f.path.strip_prefix("sub/l") else {
                    continue;
                };
                let source = dir.join(format!("f{i}"));
                if source.exists() {
                    fs::hard_link(&source, dir.join(&f.path)).unwrap();
                } else {
                    fs::write(dir.join(&f.path), &f.content).unwrap();
                }
            }
            fs::write(dir.join("big"), vec![7u8; 1 << 20]).unwrap();
            let mut list = String::new();
            let mut names: Vec<String> = expected(k, n).into_iter().map(|f| f.path).collect();
            names.push("big".into());
            for name in names {
                list.push_str(&format!(
                    "{}  {name}\n",
                    sha256(&fs::read(dir.join(&name)).unwrap())
                ));
            }
            fs::write(share.join("from-guest").join(format!("w{k}.sha256")), list).unwrap();
        }
    }

    #[test]
    fn a_correct_tree_passes_and_each_kind_of_damage_is_found() {
        let share = tempfile::tempdir().unwrap();
        simulate(share.path(), 40, 2);
        assert_eq!(
            check_guest_files(share.path(), 40, 2).unwrap(),
            Vec::<String>::new()
        );

        let w1 = share.path().join("from-guest/w1");
        fs::write(w1.join("f1"), b"worker 1 file 1\nX").unwrap();
        fs::remove_file(w1.join("sub/r8")).unwrap();
        fs::write(w1.join("f3"), guest_file(1, 3)).unwrap(); // should have been unlinked
        fs::remove_file(w1.join("sub/l6")).unwrap(); // f6 now has one link
        let problems = check_guest_files(share.path(), 40, 2).unwrap();
        let text = problems.join("\n");
        assert!(text.contains("w1/f1: content differs"), "{text}");
        assert!(text.contains("w1/sub/r8: missing"), "{text}");
        assert!(text.contains("w1/f3: should not exist"), "{text}");
        assert!(text.contains("w1/f6: 1 links, want 2"), "{text}");
        assert!(text.contains("the guest read other bytes"), "{text}");
    }

    #[test]
    fn expected_counts_follow_the_rules() {
        // n = 8: r0 r4 | f1 f2 f3(unlinked) f5 f6 f7 | l1 l6.
        assert_eq!(expected_counts(8), (5 + 2, 4));
    }

    #[test]
    fn host_files_have_their_sums() {
        let share = tempfile::tempdir().unwrap();
        write_host_files(share.path()).unwrap();
        let sums = fs::read_to_string(share.path().join("from-host/SHA256SUMS")).unwrap();
        assert_eq!(sums.lines().count(), HOST_SIZES.len());
        for line in sums.lines() {
            let (sum, name) = line.split_once("  ").unwrap();
            assert_eq!(
                sha256(&fs::read(share.path().join("from-host").join(name)).unwrap()),
                sum
            );
        }
    }
}
