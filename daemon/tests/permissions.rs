//! Permissions checked by xfused (`--permissions daemon`): the mount has no
//! `default_permissions`, so nothing but xfuse::perm stands between a user
//! and another user's files. Each check runs a shell as an unprivileged user
//! (setpriv, with chosen supplementary groups) and looks at what it was
//! allowed to do; the same script runs on a `--permissions kernel` mount
//! first, so every expectation is also shown to be what the kernel's own
//! checks give.
//!
//! The cases that matter most are the cached entries: without
//! `default_permissions` the kernel follows a cached directory entry
//! without asking anyone, so an entry cached while a directory was open to
//! all must not survive the directory being closed (chmod), nor an entry
//! moved into a closed directory (rename).
//!
//! Two rules look like the kernel's but are left to the filesystem without
//! `default_permissions`, so xfuse::perm applies them: the sticky bit (no
//! removing, moving away or replacing another user's entry in a 1777
//! directory) and exec permission by the caller's class bit (the kernel
//! only asks for some exec bit).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Mount;

const ALICE: u32 = 4101;
const BOB: u32 = 4102;
/// Owns the sticky directory of the sticky-bit cases (as root owns /tmp).
const CAROL: u32 = 4103;
/// A group Bob is a supplementary member of.
const CREW: u32 = 4200;

/// Runs `script` with `sh -c` as `uid` (primary group = uid) with the
/// supplementary `groups`, in `dir`; returns (exit code, stderr).
fn as_user(uid: u32, groups: &[u32], dir: &std::path::Path, script: &str) -> (i32, String) {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        )
    };
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            &groups,
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .expect("running setpriv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One expectation: `who` runs `script`, which must succeed (`ok`) or fail
/// with "Permission denied" / "Operation not permitted".
struct Case {
    what: &'static str,
    uid: u32,
    groups: &'static [u32],
    script: &'static str,
    ok: bool,
}

/// What a refusal may say: EACCES or EPERM.
const ANY_DENIAL: &[&str] = &["Permission denied", "Operation not permitted"];
/// A refusal that must be EACCES.
const EACCES_ONLY: &[&str] = &["Permission denied"];
/// A refusal that must be EPERM.
const EPERM_ONLY: &[&str] = &["Operation not permitted"];

fn check(mount: &Mount, mode: &str, cases: &[Case]) {
    check_denials(mount, mode, cases, ANY_DENIAL)
}

/// Like [`check`], where a refusal must say one of `denials`.
fn check_denials(mount: &Mount, mode: &str, cases: &[Case], denials: &[&str]) {
    let failures = failures_in(&home(mount), cases, denials);
    assert!(
        failures.is_empty(),
        "--permissions {mode} ({}):\n{}\ndaemon log:\n{}",
        mount.describe(),
        failures.join("\n"),
        mount.daemon_log()
    );
}

/// The cases that did not go as expected, run in `dir`.
fn failures_in(dir: &std::path::Path, cases: &[Case], denials: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let (code, stderr) = as_user(c.uid, c.groups, dir, c.script);
        let denied = denials.iter().any(|d| stderr.contains(d));
        let as_expected = if c.ok { code == 0 } else { code != 0 && denied };
        if !as_expected {
            failures.push(format!(
                "{}: expected {}, got exit {code}: {}",
                c.what,
                if c.ok {
                    "success".to_string()
                } else {
                    format!("a permission error ({})", denials.join(" or "))
                },
                stderr.trim()
            ));
        }
    }
    failures
}

/// Alice's directory on the mount, where every case runs.
fn home(mount: &Mount) -> std::path::PathBuf {
    mount.mnt().join("alice")
}

/// Opens the way to the mount for unprivileged users (the harness's
/// temporary directories are 0700) and gives Alice a 0755 directory on it
/// (made by root); returns its path.
fn open_home(mount: &Mount) -> std::path::PathBuf {
    for dir in [mount.src(), mount.mnt().parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let home = home(mount);
    std::fs::create_dir(&home).unwrap();
    chown(&home, ALICE, ALICE);
    home
}

/// `chown uid:gid path`, as root.
fn chown(path: &std::path::Path, uid: u32, gid: u32) {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", path.display()));
}

/// [`open_home`], then lays out Alice's files there.
fn prepare(mount: &Mount) {
    let home = open_home(mount);
    let setup = "set -e
        mkdir open closed moving crew drop
        chmod 755 open moving; chmod 700 closed; chmod 750 crew; chmod 777 drop
        echo hi > open/f; echo hi > closed/f; echo hi > moving/g; echo hi > crew/f
        chmod 644 open/f; chmod 640 crew/f
        echo rw > open/shared; chmod 666 open/shared
        echo ro > open/readonly; chmod 644 open/readonly";
    let (code, err) = as_user(ALICE, &[], &home, setup);
    assert_eq!(code, 0, "setting up as Alice: {err}\n{}", mount.daemon_log());
    // The crew directory and file belong to group CREW (root may chgrp).
    for p in ["crew", "crew/f"] {
        rustix::fs::chown(
            home.join(p).as_path(),
            None,
            Some(rustix::fs::Gid::from_raw(CREW)),
        )
        .unwrap();
    }
    // chown clears set-id bits but not these modes; restore them anyway.
    std::fs::set_permissions(home.join("crew"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(home.join("crew/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

const XATTR_READONLY: &str = "python3 -c \"import os; os.setxattr('open/readonly', 'user.k', b'v')\"";
const XATTR_SHARED: &str = "python3 -c \"import os; os.setxattr('open/shared', 'user.k', b'v')\"";

/// Two lookups of a missing name: the second is answered from the
/// negative entry the first left in the kernel.
const GHOST_ABSENT: &str =
    "stat open/ghost 2>&1 | grep -q 'No such file' && stat open/ghost 2>&1 | grep -q 'No such file'";

fn cases() -> Vec<Case> {
    vec![
        // fs.protected_hardlinks (on by default): only a file's owner may
        // hard-link one they may not read and write.
        Case {
            what: "Bob hard-links Alice's 0644 file, which he may not write",
            uid: BOB,
            groups: &[],
            script: "ln open/readonly drop/readonly_link",
            ok: !protected_hardlinks(),
        },
        Case {
            what: "Bob hard-links a 0666 file",
            uid: BOB,
            groups: &[],
            script: "ln open/shared drop/shared_link",
            ok: true,
        },
        Case {
            what: "Bob reads Alice's 0644 file",
            uid: BOB,
            groups: &[],
            script: "cat open/f",
            ok: true,
        },
        Case {
            what: "Bob writes Alice's 0644 file",
            uid: BOB,
            groups: &[],
            script: "echo x >> open/f",
            ok: false,
        },
        Case {
            what: "Bob truncates Alice's 0644 file",
            uid: BOB,
            groups: &[],
            script: "truncate -s 0 open/readonly",
            ok: false,
        },
        Case {
            what: "Bob truncates a 0666 file",
            uid: BOB,
            groups: &[],
            script: "truncate -s 1 open/shared",
            ok: true,
        },
        Case {
            what: "Bob creates in Alice's 0755 dir",
            uid: BOB,
            groups: &[],
            script: "touch open/bobs",
            ok: false,
        },
        Case {
            what: "Bob removes from Alice's 0755 dir",
            uid: BOB,
            groups: &[],
            script: "rm -f open/f",
            ok: false,
        },
        Case {
            what: "Bob renames in Alice's 0755 dir",
            uid: BOB,
            groups: &[],
            script: "mv open/f open/f2",
            ok: false,
        },
        Case {
            what: "Bob chmods Alice's file",
            uid: BOB,
            groups: &[],
            script: "chmod 666 open/f",
            ok: false,
        },
        Case {
            what: "Bob sets explicit times",
            uid: BOB,
            groups: &[],
            script: "touch -d @0 open/shared",
            ok: false,
        },
        Case {
            what: "Bob touches a 0666 file (now)",
            uid: BOB,
            groups: &[],
            script: "touch open/shared",
            ok: true,
        },
        Case {
            what: "Bob touches a 0644 file (now)",
            uid: BOB,
            groups: &[],
            script: "touch open/readonly",
            ok: false,
        },
        Case {
            what: "Bob sets a user xattr on Alice's file",
            uid: BOB,
            groups: &[],
            script: XATTR_READONLY,
            ok: false,
        },
        Case {
            what: "Bob sets a user xattr on a 0666 file",
            uid: BOB,
            groups: &[],
            script: XATTR_SHARED,
            ok: true,
        },
        Case {
            what: "Bob stats into Alice's 0700 dir",
            uid: BOB,
            groups: &[],
            script: "stat closed/f",
            ok: false,
        },
        Case {
            what: "Bob lists Alice's 0700 dir",
            uid: BOB,
            groups: &[],
            script: "ls closed",
            ok: false,
        },
        Case {
            what: "Bob reads a 0640 file of a group he is in",
            uid: BOB,
            groups: &[CREW],
            script: "cat crew/f",
            ok: true,
        },
        Case {
            what: "Bob reads a 0640 file of a group he is not in",
            uid: BOB,
            groups: &[],
            script: "cat crew/f",
            ok: false,
        },
        Case {
            what: "Alice writes her own file",
            uid: ALICE,
            groups: &[],
            script: "echo more >> open/f",
            ok: true,
        },
        // Cached entries: Bob walks in while the directory is open to all,
        // Alice closes it, Bob must be stopped.
        Case {
            what: "Bob stats open/f (caches the entry)",
            uid: BOB,
            groups: &[],
            script: "stat open/f && stat open/f",
            ok: true,
        },
        Case {
            what: "Bob looks for open/ghost (caches a negative entry)",
            uid: BOB,
            groups: &[],
            script: GHOST_ABSENT,
            ok: true,
        },
        Case {
            what: "Alice closes open/",
            uid: ALICE,
            groups: &[],
            script: "chmod 700 open",
            ok: true,
        },
        Case {
            what: "Bob stats open/f after the chmod",
            uid: BOB,
            groups: &[],
            script: "stat open/f",
            ok: false,
        },
        Case {
            what: "Bob looks for open/ghost after the chmod",
            uid: BOB,
            groups: &[],
            script: "stat open/ghost",
            ok: false,
        },
        // A directory's attributes, kept by xfused for checks, must follow a
        // chmod at once.
        Case {
            what: "Bob creates in a 0777 dir",
            uid: BOB,
            groups: &[],
            script: "touch drop/a",
            ok: true,
        },
        Case {
            what: "Alice makes it 0755",
            uid: ALICE,
            groups: &[],
            script: "chmod 755 drop",
            ok: true,
        },
        Case {
            what: "Bob creates there after the chmod",
            uid: BOB,
            groups: &[],
            script: "touch drop/b",
            ok: false,
        },
        // An entry moved from an open directory into a closed one.
        Case {
            what: "Bob stats moving/g (caches the entry)",
            uid: BOB,
            groups: &[],
            script: "stat moving/g && stat moving/g",
            ok: true,
        },
        Case {
            what: "Alice moves it into closed/",
            uid: ALICE,
            groups: &[],
            script: "mv moving/g closed/g",
            ok: true,
        },
        Case {
            what: "Bob stats closed/g",
            uid: BOB,
            groups: &[],
            script: "stat closed/g",
            ok: false,
        },
    ]
}

/// Whether this machine's `fs.protected_hardlinks` is on.
fn protected_hardlinks() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1")
}

/// A 1777 directory of Carol's, `tmp/`, holding Alice's files and
/// directories, and a 0777 one, `out/`, to move entries to.
fn prepare_sticky(mount: &Mount) {
    let home = open_home(mount);
    let tmp = home.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    chown(&tmp, CAROL, CAROL);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let setup = "set -e
        mkdir out; chmod 777 out
        cd tmp
        for f in a_rm a_mv a_away a_over a_swap a_x1 a_x2 a_carol_rm a_carol_mv a_carol_over; do
            echo hi > $f; chmod 644 $f
        done
        mkdir a_dir a_subdir a_dir_over a_carol_dir; chmod 755 a_dir a_subdir a_dir_over a_carol_dir";
    let (code, err) = as_user(ALICE, &[], &home, setup);
    assert_eq!(code, 0, "setting up as Alice: {err}\n{}", mount.daemon_log());
}

/// A shell command swapping two names with renameat2(RENAME_EXCHANGE)
/// (coreutils here has no `mv --exchange`); on failure it prints the
/// errno's text.
macro_rules! exchange {
    ($a:literal, $b:literal) => {
        concat!(
            "python3 -c \"import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); ",
            "sys.exit(0 if libc.renameat2(-100, b'",
            $a,
            "', -100, b'",
            $b,
            "', 2) == 0 else os.strerror(ctypes.get_errno()))\""
        )
    };
}

/// The sticky-directory rule (Linux's `check_sticky`, in `may_delete`): in
/// `tmp/` (1777, Carol's) Bob may create, but may not remove, move away or
/// replace (rename over, exchange) Alice's entries: EPERM, though he may
/// write the directory. Alice (the entries' owner) and Carol (the
/// directory's owner) may. Without `default_permissions` the kernel does
/// not apply the rule (it drops S_ISVTX from the modes it keeps).
fn sticky_cases() -> Vec<Case> {
    vec![
        Case {
            what: "Bob creates in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "echo bob > tmp/b_file && echo bob > tmp/b_swap && mkdir tmp/b_dir",
            ok: true,
        },
        Case {
            what: "Bob removes Alice's file from a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "rm -f tmp/a_rm",
            ok: false,
        },
        Case {
            what: "Bob removes Alice's directory from a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "rmdir tmp/a_dir",
            ok: false,
        },
        Case {
            what: "Bob renames Alice's file in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "mv -f tmp/a_mv tmp/b_renamed",
            ok: false,
        },
        Case {
            what: "Bob moves Alice's file out of a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "mv -f tmp/a_away out/",
            ok: false,
        },
        Case {
            what: "Bob renames Alice's directory in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "mv -f -T tmp/a_subdir tmp/b_renamed_dir",
            ok: false,
        },
        Case {
            what: "Bob renames his file over Alice's in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "mv -f -T tmp/b_file tmp/a_over",
            ok: false,
        },
        Case {
            what: "Bob renames his directory over Alice's empty one in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "mv -f -T tmp/b_dir tmp/a_dir_over",
            ok: false,
        },
        Case {
            what: "Bob exchanges his file with Alice's in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: exchange!("tmp/b_swap", "tmp/a_swap"),
            ok: false,
        },
        Case {
            what: "Bob exchanges Alice's file with his in a 1777 dir",
            uid: BOB,
            groups: &[],
            script: exchange!("tmp/a_swap", "tmp/b_swap"),
            ok: false,
        },
        Case {
            what: "Bob removes his own file from a 1777 dir",
            uid: BOB,
            groups: &[],
            script: "rm -f tmp/b_file tmp/b_swap && rmdir tmp/b_dir",
            ok: true,
        },
        Case {
            what: "Alice removes her file from a 1777 dir",
            uid: ALICE,
            groups: &[],
            script: "rm -f tmp/a_rm",
            ok: true,
        },
        Case {
            what: "Alice removes her directory from a 1777 dir",
            uid: ALICE,
            groups: &[],
            script: "rmdir tmp/a_dir",
            ok: true,
        },
        Case {
            what: "Alice renames her file in a 1777 dir",
            uid: ALICE,
            groups: &[],
            script: "mv -f tmp/a_mv tmp/a_renamed",
            ok: true,
        },
        Case {
            what: "Alice moves her file out of a 1777 dir",
            uid: ALICE,
            groups: &[],
            script: "mv -f tmp/a_away out/",
            ok: true,
        },
        Case {
            what: "Alice exchanges two of her files in a 1777 dir",
            uid: ALICE,
            groups: &[],
            script: exchange!("tmp/a_x1", "tmp/a_x2"),
            ok: true,
        },
        Case {
            what: "Carol removes Alice's file from her 1777 dir",
            uid: CAROL,
            groups: &[],
            script: "rm -f tmp/a_carol_rm",
            ok: true,
        },
        Case {
            what: "Carol removes Alice's directory from her 1777 dir",
            uid: CAROL,
            groups: &[],
            script: "rmdir tmp/a_carol_dir",
            ok: true,
        },
        Case {
            what: "Carol renames Alice's file in her 1777 dir",
            uid: CAROL,
            groups: &[],
            script: "mv -f tmp/a_carol_mv tmp/c_renamed",
            ok: true,
        },
        Case {
            what: "Carol renames her file over Alice's in her 1777 dir",
            uid: CAROL,
            groups: &[],
            script: "echo carol > tmp/c_file && mv -f -T tmp/c_file tmp/a_carol_over",
            ok: true,
        },
    ]
}

/// Modes of the executables in `run/` (Alice's, group CREW): each a copy
/// of /bin/true, so that running it needs no read permission.
const EXEC_MODES: [u32; 7] = [0o744, 0o700, 0o711, 0o001, 0o010, 0o100, 0o644];

fn prepare_exec(mount: &Mount) {
    let home = open_home(mount);
    let (code, err) = as_user(ALICE, &[], &home, "mkdir run && chmod 755 run");
    assert_eq!(code, 0, "setting up as Alice: {err}\n{}", mount.daemon_log());
    for mode in EXEC_MODES {
        let path = home.join(format!("run/x{mode:04o}"));
        // Copied by a child process: a descriptor this process held open
        // for writing would be inherited by the children the other tests
        // fork meanwhile, and exec of the file fails with ETXTBSY while one
        // of them still has it (before its own exec closes it).
        let copied = Command::new("cp")
            .arg("/bin/true")
            .arg(&path)
            .status()
            .expect("running cp");
        assert!(copied.success(), "cp /bin/true {}: {copied}", path.display());
        chown(&path, ALICE, CREW);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Who may execute each file of `run/`: Linux's `generic_permission`
/// takes the caller's class bit alone (the owner's for Alice, the group's
/// for Bob in CREW, the others' for Bob alone), and root needs any x bit.
/// Without `default_permissions` the kernel only asks for any x bit.
fn exec_cases() -> Vec<Case> {
    macro_rules! row {
        ($mode:literal, owner: $owner:expr, group: $group:expr, other: $other:expr, root: $root:expr) => {
            [
                Case {
                    what: concat!("Alice runs her ", $mode, " file"),
                    uid: ALICE,
                    groups: &[],
                    script: concat!("./run/x", $mode),
                    ok: $owner,
                },
                Case {
                    what: concat!("Bob in her group runs Alice's ", $mode, " file"),
                    uid: BOB,
                    groups: &[CREW],
                    script: concat!("./run/x", $mode),
                    ok: $group,
                },
                Case {
                    what: concat!("Bob runs Alice's ", $mode, " file"),
                    uid: BOB,
                    groups: &[],
                    script: concat!("./run/x", $mode),
                    ok: $other,
                },
                Case {
                    what: concat!("root runs Alice's ", $mode, " file"),
                    uid: 0,
                    groups: &[],
                    script: concat!("./run/x", $mode),
                    ok: $root,
                },
            ]
        };
    }
    [
        row!("0744", owner: true, group: false, other: false, root: true),
        row!("0700", owner: true, group: false, other: false, root: true),
        row!("0711", owner: true, group: true, other: true, root: true),
        row!("0001", owner: false, group: false, other: true, root: true),
        row!("0010", owner: false, group: true, other: false, root: true),
        row!("0100", owner: true, group: false, other: false, root: true),
        row!("0644", owner: false, group: false, other: false, root: false),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn run(mount: Mount, mode: &str) {
    prepare(&mount);
    check(&mount, mode, &cases());
}

/// The expectations hold with the kernel's checks: they are what users get
/// today, so the daemon's checks are measured against them.
#[test]
fn kernel_checks_give_the_expected_outcomes() {
    run(Mount::start(&["--permissions", "kernel"]), "kernel");
}

#[test]
fn daemon_checks_match_the_kernels() {
    run(Mount::start(&["--permissions", "daemon"]), "daemon");
}

/// The distributed filesystem (MetaFs) behind the same checks.
#[test]
fn daemon_checks_match_the_kernels_on_xfused_mount() {
    run(Mount::start_meta(&["--permissions", "daemon"]), "daemon");
}

fn run_sticky(mount: Mount, mode: &str) {
    prepare_sticky(&mount);
    // Every refusal here is the sticky rule's: EPERM, never EACCES.
    check_denials(&mount, mode, &sticky_cases(), EPERM_ONLY);
}

#[test]
fn kernel_applies_the_sticky_bit() {
    run_sticky(Mount::start(&["--permissions", "kernel"]), "kernel");
}

#[test]
fn daemon_applies_the_sticky_bit() {
    run_sticky(Mount::start(&["--permissions", "daemon"]), "daemon");
}

#[test]
fn daemon_applies_the_sticky_bit_on_xfused_mount() {
    run_sticky(Mount::start_meta(&["--permissions", "daemon"]), "daemon");
}

fn run_exec(mount: Mount, mode: &str) {
    prepare_exec(&mount);
    check_denials(&mount, mode, &exec_cases(), EACCES_ONLY);
}

#[test]
fn kernel_checks_exec_by_class() {
    run_exec(Mount::start(&["--permissions", "kernel"]), "kernel");
}

#[test]
fn daemon_checks_exec_by_class() {
    run_exec(Mount::start(&["--permissions", "daemon"]), "daemon");
}

#[test]
fn daemon_checks_exec_by_class_on_xfused_mount() {
    run_exec(Mount::start_meta(&["--permissions", "daemon"]), "daemon");
}

/// Alice's tree of files with POSIX ACLs (made with setfacl through the
/// mount, so setting ACLs is exercised too). Bob is 4102, Carol 4103, CREW
/// 4200.
fn prepare_acl(mount: &Mount) {
    let home = open_home(mount);
    assert_eq!((BOB, CAROL, CREW), (4102, 4103, 4200), "the setup names them");
    let setup = "set -e
        mkdir acl; chmod 755 acl; cd acl
        echo data > deny_bob; chmod 644 deny_bob; setfacl -m u:4102:--- deny_bob
        echo data > grant_bob; chmod 600 grant_bob; setfacl -m u:4102:rw grant_bob
        echo data > masked; chmod 600 masked; setfacl -m u:4102:rw masked; chmod 640 masked
        echo data > crew; chmod 640 crew; setfacl -m g:4200:rw crew
        echo data > crew_denied; chmod 644 crew_denied; setfacl -m g:4200:--- crew_denied
        mkdir closed; echo data > closed/in; chmod 700 closed; setfacl -m u:4102:rx closed
        mkdir not_bob; echo data > not_bob/in; chmod 755 not_bob; setfacl -m u:4102:--- not_bob
        mkdir inherit; chmod 755 inherit; setfacl -d -m u:4102:rx,o::- inherit
        echo data > inherit/made
        cp /bin/true run_bob; chmod 700 run_bob; setfacl -m u:4102:rx run_bob
        mkdir share; chmod 755 share; setfacl -d -m u:4102:rw share
        umask 022; echo data > share/made";
    let (code, err) = as_user(ALICE, &[], &home, setup);
    assert_eq!(code, 0, "setting up as Alice: {err}\n{}", mount.daemon_log());
}

/// What the ACLs of [`prepare_acl`] allow, as Linux decides natively
/// (`posix_acl_permission`): a named user entry before the mode's other
/// bits, bounded by the mask; a matching group entry that refuses does
/// not fall back to other; a chmod rewrites the mask; directories' ACLs
/// decide search; created files inherit a default ACL, which replaces
/// the creator's umask. Every case can be run again with the same outcome.
///
/// `umask_yields`: whether the mount lets a default ACL replace the umask.
/// Without `default_permissions` it cannot: the kernel applies the umask
/// before the filesystem sees the mode (it does not only for
/// `FUSE_POSIX_ACL` mounts, which have `default_permissions`), so under
/// `--permissions daemon` a file made with umask 022 gets a mask of r--.
fn acl_cases(umask_yields: bool) -> Vec<Case> {
    let case = |what, uid, groups, script, ok| Case {
        what,
        uid,
        groups,
        script,
        ok,
    };
    vec![
        case(
            "Bob reads a 0644 file whose ACL names him with ---",
            BOB,
            &[],
            "cat acl/deny_bob",
            false,
        ),
        case("Carol reads that file", CAROL, &[], "cat acl/deny_bob", true),
        case(
            "Carol reads its ACL",
            CAROL,
            &[],
            "getfacl -n acl/deny_bob | grep -qx user:4102:---",
            true,
        ),
        case(
            "Bob sets an ACL on Alice's file",
            BOB,
            &[],
            "setfacl -m u:4103:r acl/deny_bob",
            false,
        ),
        case(
            "Bob reads and writes a 0600 file whose ACL gives him rw",
            BOB,
            &[],
            "cat acl/grant_bob >/dev/null && echo more >> acl/grant_bob",
            true,
        ),
        case("Carol reads that file", CAROL, &[], "cat acl/grant_bob", false),
        case(
            "Bob reads a file whose mask a chmod 640 cut to r--",
            BOB,
            &[],
            "cat acl/masked",
            true,
        ),
        case("Bob writes that file", BOB, &[], "echo more >> acl/masked", false),
        case(
            "Bob in CREW writes a 0640 file whose ACL gives CREW rw",
            BOB,
            &[CREW],
            "echo more >> acl/crew",
            true,
        ),
        case(
            "Bob outside CREW reads that file",
            BOB,
            &[],
            "cat acl/crew",
            false,
        ),
        case(
            "Bob in CREW reads a 0644 file whose ACL gives CREW ---",
            BOB,
            &[CREW],
            "cat acl/crew_denied",
            false,
        ),
        case(
            "Bob outside CREW reads that file",
            BOB,
            &[],
            "cat acl/crew_denied",
            true,
        ),
        case(
            "Bob lists and reads in a 0700 directory whose ACL gives him r-x",
            BOB,
            &[],
            "ls acl/closed >/dev/null && cat acl/closed/in",
            true,
        ),
        case("Carol lists that directory", CAROL, &[], "ls acl/closed", false),
        // Carol first: an entry cached for her must not let Bob through.
        case(
            "Carol reads in a 0755 directory whose ACL gives Bob ---",
            CAROL,
            &[],
            "cat acl/not_bob/in",
            true,
        ),
        case(
            "Bob reads in that directory",
            BOB,
            &[],
            "cat acl/not_bob/in",
            false,
        ),
        case(
            "Bob reads a file that inherited his default ACL entry",
            BOB,
            &[],
            "cat acl/inherit/made",
            true,
        ),
        case(
            "Carol reads that file (the default ACL gives other ---)",
            CAROL,
            &[],
            "cat acl/inherit/made",
            false,
        ),
        case(
            "Bob runs a 0700 program whose ACL gives him r-x",
            BOB,
            &[],
            "./acl/run_bob",
            true,
        ),
        case("Carol runs that program", CAROL, &[], "./acl/run_bob", false),
        case(
            "Bob writes a file made with umask 022 under a default ACL giving him rw",
            BOB,
            &[],
            "echo more >> acl/share/made",
            umask_yields,
        ),
    ]
}

/// The ACL cases through `mount`, and on a passthrough mount first on the
/// source tree itself: what the host kernel decides there is what the
/// mount must decide.
fn run_acl(mount: Mount, mode: &str) {
    prepare_acl(&mount);
    if mount.src().join("alice/acl").is_dir() {
        // The tree was made through the mount: so was its share/made.
        let native = failures_in(
            &mount.src().join("alice"),
            &acl_cases(mode == "kernel"),
            ANY_DENIAL,
        );
        assert!(
            native.is_empty(),
            "natively, on the source tree:\n{}",
            native.join("\n")
        );
    }
    check(&mount, mode, &acl_cases(mode == "kernel"));
}

/// FUSE_POSIX_ACL: the kernel checks ACLs with default_permissions.
#[test]
fn kernel_checks_posix_acls() {
    run_acl(Mount::start(&["--permissions", "kernel"]), "kernel");
}

/// xfuse::perm reads and applies ACLs itself.
#[test]
fn daemon_checks_posix_acls() {
    run_acl(Mount::start(&["--permissions", "daemon"]), "daemon");
}

/// MetaFs keeps ACLs: the mode in step, chmod's mask, default ACLs.
#[test]
fn kernel_checks_posix_acls_on_xfused_mount() {
    run_acl(Mount::start_meta(&["--permissions", "kernel"]), "kernel");
}

#[test]
fn daemon_checks_posix_acls_on_xfused_mount() {
    run_acl(Mount::start_meta(&["--permissions", "daemon"]), "daemon");
}
