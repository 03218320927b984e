//! Confining `xfused virtiofs`, which serves an untrusted guest kernel:
//! what a guest that found a bug in the request path could reach.
//!
//! Three layers, each optional on the command line ([`SandboxArgs`]), the
//! defaults as strict as virtiofsd's:
//!
//! 1. Where the server lives ([`SandboxArg`]). `namespace`: new pid, mount,
//!    network, IPC and UTS namespaces, the shared directory pivoted to as
//!    the root, the old root detached; the server is pid 1 of its pid
//!    namespace, and the process the command started waits for it, passes
//!    on SIGINT and SIGTERM and exits with its status. `chroot`: chroot(2)
//!    into the shared directory. With `--meta` (no shared directory: the
//!    namespace's records and a chunk store, reached over the network) the
//!    `namespace` mode keeps the network and the file tree and takes new
//!    pid, mount, IPC and UTS namespaces only; `chroot` is refused.
//! 2. What it may do ([`confine`]): capabilities cut to those a file server
//!    needs ([`capabilities_for`]) in every set, the bounding set included,
//!    and `no_new_privs`.
//! 3. Which system calls it may make ([`SeccompArg`], [`allowed_syscalls`]):
//!    a seccomp allow-list on every thread, derived by running the
//!    workloads under strace (see the groups' comments).
//!
//! Order matters and is the caller's (`xfused virtiofs`): sockets and
//! logging first (the vhost-user socket is made in the host's mount
//! namespace, the metrics socket in its network namespace), then
//! [`isolate`] while the process has one thread (it forks), then the
//! filesystem opened (PassthroughFs opens `/proc/self/fd` and
//! `/proc/self/mountinfo`, which must be the sandbox's fresh `/proc`), then
//! [`enter_share`], then [`confine`], then threads and serving.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use kmod_shim::process::{self, ChildExit, Forked};
use kmod_shim::sandbox::{self as shim, Capability, Namespace};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// `--sandbox`: where the server lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxArg {
    /// New pid, mount, network, IPC and UTS namespaces, the shared
    /// directory as the only file tree (pivot_root). Needs CAP_SYS_ADMIN.
    Namespace,
    /// chroot(2) into the shared directory: for where namespaces cannot be
    /// made (a container without CAP_SYS_ADMIN). The host's processes,
    /// network and mounts stay in view.
    Chroot,
    /// No confinement of the file tree or processes.
    None,
}

/// `--seccomp`: what a system call off the allow-list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompArg {
    /// Kill the whole server (SIGSYS, a core dump where enabled).
    Kill,
    /// Allow it and log it to the kernel's audit log (to find what a
    /// workload needs).
    Log,
    /// Send SIGSYS to the thread (a debugger shows the call).
    Trap,
    /// No filter.
    None,
}

/// How `xfused virtiofs` confines itself.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Confine the server: `namespace` (default) runs it as pid 1 of new
    /// pid, mount, network, IPC and UTS namespaces whose only file tree is
    /// the shared directory (pivot_root; a guest that takes over the server
    /// still sees no host file, process or network); `chroot` only changes
    /// its root to the shared directory (where namespaces cannot be made;
    /// processes and network stay visible); `none` confines nothing. With
    /// --meta, `namespace` keeps the network and file tree (the metadata
    /// service, data directory and credentials are needed) and takes new
    /// pid, mount, IPC and UTS namespaces. Confined, a shared directory's
    /// inodes are O_PATH descriptors and xattrs are not served. If the
    /// sandbox cannot be set up, xfused exits naming the step: choose a
    /// weaker mode explicitly.
    #[arg(long, value_enum, default_value = "namespace")]
    pub sandbox: SandboxArg,
    /// A seccomp allow-list of the system calls serving needs, on every
    /// thread: a call off the list `kill`s the server (default for a shared
    /// directory), is `log`ged to the audit log and allowed, or `trap`s
    /// (SIGSYS to the thread). `none` installs no filter (default with
    /// --meta, whose engines and network clients make calls the list does
    /// not cover).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub seccomp: Option<SeccompArg>,
}

/// What the server serves, which decides what the sandbox can take away.
#[derive(Debug, Clone, Copy)]
pub enum Served<'a> {
    /// A host directory (PassthroughFs).
    Directory(&'a Path),
    /// The distributed filesystem (`--meta`): needs the network and the
    /// data directory.
    Distributed,
}

impl SandboxArgs {
    /// The seccomp action asked for, or the default for what is served.
    pub fn seccomp_action(&self, served: Served<'_>) -> SeccompArg {
        self.seccomp.unwrap_or(match served {
            Served::Directory(_) => SeccompArg::Kill,
            Served::Distributed => SeccompArg::None,
        })
    }
}

/// Which side of [`isolate`] the caller is on.
#[derive(Debug)]
pub enum Isolated {
    /// The process the command started: the server ran in a child and
    /// ended so; exit with [`exit_code`] of it.
    Waited(ChildExit),
    /// The server: go on serving.
    Server,
}

/// The exit status that reports `exit` of the server.
pub fn exit_code(exit: ChildExit) -> i32 {
    match exit {
        ChildExit::Exited(status) => status,
        ChildExit::Signaled(signal) => 128 + signal,
    }
}

/// A sandbox step that failed, with the way out.
fn step_failed(step: &str, mode: SandboxArg) -> String {
    let weaker = match mode {
        SandboxArg::Namespace => "--sandbox chroot or --sandbox none",
        SandboxArg::Chroot | SandboxArg::None => "--sandbox none",
    };
    format!(
        "--sandbox {}: {step} failed (run as root with CAP_SYS_ADMIN, or choose {weaker} and accept what it leaves open)",
        mode.to_possible_value().map_or("?".into(), |v| v.get_name().to_owned())
    )
}

/// Puts the server in new namespaces (mode `namespace`): a new pid
/// namespace for a forked child, which then takes new mount, IPC, UTS
/// (and, serving a directory, network) namespaces, makes its mounts slaves
/// of the host's and mounts a fresh `/proc`. The parent forwards SIGINT
/// and SIGTERM to the child, waits for it and returns
/// [`Isolated::Waited`]. Other modes return [`Isolated::Server`] at once.
///
/// Forks: call while the process has one thread.
pub fn isolate(mode: SandboxArg, served: Served<'_>) -> anyhow::Result<Isolated> {
    if mode != SandboxArg::Namespace {
        if mode == SandboxArg::Chroot && matches!(served, Served::Distributed) {
            bail!("--sandbox chroot: with --meta there is no shared directory to chroot into; use --sandbox namespace or none");
        }
        return Ok(Isolated::Server);
    }
    shim::unshare(&[Namespace::Pid]).with_context(|| step_failed("unshare(CLONE_NEWPID)", mode))?;
    match process::fork_single_threaded().with_context(|| step_failed("fork into the pid namespace", mode))? {
        Forked::Parent { child } => Ok(Isolated::Waited(wait_forwarding_signals(child)?)),
        Forked::Child => {
            process::die_with_parent().with_context(|| step_failed("prctl(PR_SET_PDEATHSIG)", mode))?;
            let mut namespaces = vec![Namespace::Mount, Namespace::Ipc, Namespace::Uts];
            if matches!(served, Served::Directory(_)) {
                namespaces.push(Namespace::Net);
            }
            shim::unshare(&namespaces)
                .with_context(|| step_failed("unshare(mount, IPC, UTS, network)", mode))?;
            shim::make_mounts_slave()
                .with_context(|| step_failed("making mounts slaves (MS_SLAVE|MS_REC)", mode))?;
            // /proc of the new pid namespace: PassthroughFs resolves
            // descriptors through /proc/self/fd, which must be this
            // process's, and nothing of the host's processes stays in view.
            shim::mount_proc(Path::new("/proc"))
                .with_context(|| step_failed("mounting a new /proc", mode))?;
            Ok(Isolated::Server)
        }
    }
}

/// Waits for the server `child` to end, passing SIGINT and SIGTERM on to
/// it meanwhile, and reaps it.
///
/// No thread: after unshare(CLONE_NEWPID) the kernel refuses to create
/// one in this process. Signals arrive on pipes (signal-hook's handlers
/// write a byte), the child's end on its pidfd; one poll(2) waits for
/// either. A signal in the short time between the fork and the handlers
/// kills this process as before, and the child with it (it dies with its
/// parent).
fn wait_forwarding_signals(child: i32) -> anyhow::Result<ChildExit> {
    use rustix::event::{PollFd, PollFlags};
    use signal_hook::consts::{SIGINT, SIGTERM};
    let ended = process::pidfd_open(child).context("pidfd_open of the sandboxed server")?;
    let mut pipes = Vec::new();
    for signal in [SIGINT, SIGTERM] {
        let (read, write) = std::os::unix::net::UnixStream::pair().context("a pipe for signals")?;
        read.set_nonblocking(true).context("a pipe for signals")?;
        signal_hook::low_level::pipe::register(signal, write).context("installing signal handlers")?;
        pipes.push((signal, read));
    }
    loop {
        let mut fds = vec![PollFd::new(&ended, PollFlags::IN)];
        fds.extend(pipes.iter().map(|(_, read)| PollFd::new(read, PollFlags::IN)));
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("poll(2) waiting for the sandboxed server"),
        }
        let readable: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        for ((signal, read), ready) in pipes.iter().zip(&readable[1..]) {
            if !ready {
                continue;
            }
            let mut drained = [0u8; 64];
            while matches!(std::io::Read::read(&mut &*read, &mut drained), Ok(n) if n > 0) {}
            if let Err(e) = process::send_signal(child, *signal) {
                tracing::warn!("passing signal {signal} on to the server (pid {child}): {e}");
            }
        }
        if readable[0] {
            return process::wait_child(child).context("waiting for the sandboxed server");
        }
    }
}

/// Makes `dir` the server's only file tree: bind-mounted onto itself and
/// pivoted to, the old root detached (`namespace`), or chrooted into
/// (`chroot`). Call after the filesystem opened what it keeps from
/// `/proc`; paths the server uses from here on are inside `dir`.
pub fn enter_share(mode: SandboxArg, dir: &Path) -> anyhow::Result<()> {
    match mode {
        SandboxArg::Namespace => {
            shim::bind_onto_itself(dir)
                .with_context(|| step_failed(&format!("bind-mounting {}", dir.display()), mode))?;
            shim::pivot_root_into(dir)
                .with_context(|| step_failed(&format!("pivot_root into {}", dir.display()), mode))?;
        }
        SandboxArg::Chroot => shim::chroot_into(dir)
            .with_context(|| step_failed(&format!("chroot into {}", dir.display()), mode))?,
        SandboxArg::None => {}
    }
    Ok(())
}

/// The capabilities serving needs after setup.
///
/// A shared directory (virtiofsd's set, plus CAP_DAC_READ_SEARCH: LINK is
/// `linkat(fd, "", AT_EMPTY_PATH)`, which needs it unless the descriptor
/// was opened under the same credentials, and PassthroughFs opens a new
/// file's under the guest caller's; with file handles, open_by_handle_at
/// needs it too, and only then does the seccomp filter allow that call):
/// files are created,
/// chowned, chmodded and given device numbers and file capabilities on the
/// guest's behalf, and threads switch to the guest caller's uid and gid
/// around creates. The distributed filesystem needs none: its files (chunk
/// store, engine) are the server's own, and it never switches uids.
pub fn capabilities_for(served: Served<'_>) -> Vec<Capability> {
    match served {
        Served::Directory(_) => vec![
            Capability::Chown,
            Capability::DacOverride,
            Capability::DacReadSearch,
            Capability::Fowner,
            Capability::Fsetid,
            Capability::Setgid,
            Capability::Setuid,
            Capability::Mknod,
            Capability::Setfcap,
        ],
        Served::Distributed => Vec::new(),
    }
}

/// Cuts capabilities to `keep` (of those the process has: a server run
/// without some keeps running without them) in the effective, permitted,
/// inheritable, ambient and bounding sets, sets `no_new_privs`, and
/// installs the seccomp filter with `action` on every thread.
///
/// `file_handles`: inodes are file handles (only with `--sandbox none`):
/// the filter then allows opening them.
///
/// Serving a directory, the effective capabilities are kept while a
/// thread runs with a guest caller's uid (see `kmod_shim::creds`; set
/// before the cut, since it needs CAP_SETPCAP, it keeps only what `keep`
/// leaves). PassthroughFs switches to the caller's uid and primary gid to
/// create, but not to its supplementary groups, which the guest kernel
/// has already checked against (virtio-fs mounts use
/// `default_permissions`): without CAP_DAC_OVERRIDE in that window the
/// host would refuse a guest user's create in a directory the guest let
/// it write through a supplementary group. With file handles the window
/// also opens the parent by handle, which needs CAP_DAC_READ_SEARCH.
pub fn confine(
    keep: &[Capability],
    file_handles: bool,
    action: SeccompArg,
    served: Served<'_>,
) -> anyhow::Result<()> {
    let held = shim::effective_capabilities().context("reading the process's capabilities")?;
    let keep: Vec<Capability> = keep
        .iter()
        .copied()
        .filter(|c| held & shim::capability_mask(&[*c]) != 0)
        .collect();
    if held & shim::capability_mask(&[Capability::Setpcap]) != 0 {
        if matches!(served, Served::Directory(_)) {
            kmod_shim::creds::keep_capabilities_across_setuid()
                .context("keeping capabilities across uid switches (prctl PR_SET_SECUREBITS)")?;
        }
        shim::drop_bounding_set_except(&keep).context("dropping the capability bounding set")?;
    }
    shim::limit_capabilities(&keep).context("cutting the capabilities (capset)")?;
    shim::set_no_new_privs().context("setting no_new_privs")?;
    if action != SeccompArg::None {
        let program = seccomp_program(action, served, file_handles)?;
        seccompiler::apply_filter_all_threads(&program).context("installing the seccomp filter")?;
    }
    Ok(())
}

/// The compiled filter: [`allowed_syscalls`] allowed (prctl(2) only to
/// name threads), everything else `action`.
pub fn seccomp_program(
    action: SeccompArg,
    served: Served<'_>,
    file_handles: bool,
) -> anyhow::Result<BpfProgram> {
    let mismatch = match action {
        SeccompArg::Kill => SeccompAction::KillProcess,
        SeccompArg::Log => SeccompAction::Log,
        SeccompArg::Trap => SeccompAction::Trap,
        SeccompArg::None => SeccompAction::Allow,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls(served, file_handles)
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // Thread names (std's spawn with a name); nothing else of prctl's
    // many knobs (securebits, dumpable, the bounding set).
    let set_name = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::PR_SET_NAME as u64,
    )
    .context("building the seccomp filter")?;
    rules.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![set_name]).context("building the seccomp filter")?],
    );
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp on {}: {e}", std::env::consts::ARCH))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .context("building the seccomp filter")?;
    BpfProgram::try_from(filter).context("compiling the seccomp filter")
}

/// The system calls serving makes after [`confine`], by who makes them.
/// Derived by running `xfused virtiofs --seccomp none` under `strace -f`
/// through the replay test (daemon/tests/virtiofs_replay.rs, every
/// configuration) and the VM tests (daemon/tests/virtiofs_vm.rs), keeping
/// what the server's threads called after capset(2), then completed with
/// the calls of the PassthroughFs operations those workloads do not make
/// (SETATTR, FSYNC, STATFS, FALLOCATE, LSEEK, COPY_FILE_RANGE, SYMLINK,
/// READLINK, xattrs, the uid switch of a non-root caller), and checked with
/// `--seccomp kill` on both. With `--meta` the same for the VM test on the
/// embedded engine (the network clients' calls are added by reading, not
/// running). Arguments are not filtered but prctl's.
pub fn allowed_syscalls(served: Served<'_>, file_handles: bool) -> Vec<i64> {
    let mut calls = vec![
        // Memory: the allocator (brk, mmap, mremap for realloc), thread
        // stacks and their guard pages, guest memory (vm-memory maps the
        // VMM's memfds; a new memory table unmaps the old).
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mremap,
        // Threads: a connection's queue threads, the pool, the signal
        // thread (std: clone3, clone where it is missing), futexes of every
        // lock, std's per-thread set-up (robust list, rseq, the signal
        // stack, affinity for available_parallelism, hash keys).
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_futex,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_yield,
        libc::SYS_getrandom,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Signals: signal-hook's handler for SIGINT/SIGTERM (it writes to
        // a socketpair the signal thread reads), its return, and abort on
        // a panic (tgkill).
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_socketpair,
        libc::SYS_tgkill,
        // Time: the vDSO mostly; sleeps of the pool and retries.
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        // vhost-user: the listening socket (accept4 when keep-listening),
        // messages with descriptors (recvmsg, sendmsg), epoll on the kick
        // eventfds and the exit events, eventfd reads and writes; the log
        // on stderr.
        libc::SYS_accept4,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_eventfd2,
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_fcntl,
        // The metrics endpoint (--metrics): scrapes accepted with
        // timeouts, answered and shut down.
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_shutdown,
        // Removing the vhost-user socket at exit (std's remove_file), with
        // --sandbox none; confined, the waiting parent removes it.
        libc::SYS_unlink,
    ];
    if let Served::Directory(_) = served {
        calls.extend([
            // PassthroughFs: every FUSE operation on the host's files,
            // relative to inode descriptors (and to its /proc/self/fd
            // descriptor for reopening and LINK).
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fstatfs,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_getdents64,
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_readlinkat,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_ftruncate,
            libc::SYS_utimensat,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_flock,
            libc::SYS_copy_file_range,
            // Extended attributes, through "/proc/self/fd/N" paths (never
            // reached confined: served only with --sandbox none).
            libc::SYS_getxattr,
            libc::SYS_setxattr,
            libc::SYS_listxattr,
            libc::SYS_removexattr,
            // The switch to the guest caller's uid and gid around creates
            // (per thread: raw setresuid/setresgid), and the umask cleared
            // at INIT.
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_umask,
        ]);
        if file_handles {
            // Inodes as file handles (--sandbox none only).
            calls.extend([libc::SYS_name_to_handle_at, libc::SYS_open_by_handle_at]);
        }
    }
    if let Served::Distributed = served {
        calls.extend([
            // The chunk store and the embedded engine (fjall: its journal,
            // segments and their compaction threads), by path under the
            // data directory.
            libc::SYS_openat,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_getdents64,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_flock,
            // tcp:// and etcd:// clients (new connections when one
            // breaks; tokio's reactor for etcd). Not derived from a run:
            // the VM test serves the embedded engine only, which is why
            // --meta defaults to --seccomp none.
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_getsockopt,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_epoll_pwait,
            libc::SYS_pipe2,
            libc::SYS_ioctl,
        ]);
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_compiles_for_every_served_kind() {
        for action in [SeccompArg::Kill, SeccompArg::Log, SeccompArg::Trap] {
            for served in [Served::Directory(Path::new("/srv")), Served::Distributed] {
                let program = seccomp_program(action, served, true).unwrap();
                assert!(!program.is_empty());
            }
        }
    }

    #[test]
    fn the_list_has_no_call_twice_and_none_that_escapes_the_sandbox() {
        let calls = allowed_syscalls(Served::Directory(Path::new("/srv")), true);
        let mut sorted = calls.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), calls.len(), "a call listed twice");
        for forbidden in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_capset,
            libc::SYS_bpf,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_open,
            libc::SYS_ioctl,
            libc::SYS_prctl,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
        ] {
            assert!(!calls.contains(&forbidden), "syscall {forbidden} is allowed");
        }
    }

    #[test]
    fn the_distributed_filesystem_keeps_no_capability_and_a_directory_the_file_servers_set() {
        assert!(capabilities_for(Served::Distributed).is_empty());
        let caps = capabilities_for(Served::Directory(Path::new("/srv")));
        assert!(!caps.contains(&Capability::Setpcap));
        assert_eq!(
            shim::capability_mask(&caps),
            0x8800_00df,
            "chown dac_override dac_read_search fowner fsetid setgid setuid mknod setfcap"
        );
    }

    #[test]
    fn a_failed_step_names_itself_and_the_weaker_modes() {
        let text = step_failed("unshare(CLONE_NEWPID)", SandboxArg::Namespace);
        assert!(
            text.contains("--sandbox namespace: unshare(CLONE_NEWPID) failed"),
            "{text}"
        );
        assert!(text.contains("--sandbox chroot or --sandbox none"), "{text}");
    }
}
