//! Going to the background: fork(2) while single-threaded, setsid(2),
//! replacing the standard descriptors, and waiting for a child (or a
//! descriptor of it) and signalling it.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crate::{cvt, SyscallError};

/// Which side of a [`fork_single_threaded`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The original process; `child` is the new process's id.
    Parent {
        /// The child's process id.
        child: i32,
    },
    /// The new process.
    Child,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It called exit with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildExit::Exited(status) => write!(f, "exit status {status}"),
            ChildExit::Signaled(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// The threads of this process, from `/proc/self/task`.
pub fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// fork(2), refused unless the calling process has exactly one thread.
///
/// A child of a multi-threaded process holds a copy of every other
/// thread's locks (the allocator's, stdio's, a logger's) in whatever state
/// they were, with nobody left to release them: anything but exec may
/// deadlock. With one thread there is no such lock, so the child may run
/// any Rust code. The check reads `/proc/self/task`; a thread started
/// concurrently by this same thread is impossible, since it is the only one.
pub fn fork_single_threaded() -> Result<Forked, SyscallError> {
    let threads = thread_count()
        .map_err(|e| SyscallError::invalid("fork(2)", format!("counting threads in /proc/self/task: {e}")))?;
    if threads != 1 {
        return Err(SyscallError::invalid(
            "fork(2)",
            format!("the process has {threads} threads; it may fork only while it has one"),
        ));
    }
    // SAFETY: the process has a single thread (checked above), so the child
    // inherits no lock held by another thread and may run arbitrary code;
    // fork touches no memory of the caller.
    let pid = cvt("fork(2)", unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent { child: pid }
    })
}

/// Starts a new session with the caller as its leader (setsid(2)): no
/// controlling terminal, so a hang-up of the terminal that started it does
/// not reach it, nor do signals sent to its former process group.
pub fn new_session() -> Result<(), SyscallError> {
    // SAFETY: setsid takes no arguments and touches no memory of the caller.
    cvt("setsid(2)", unsafe { libc::setsid() })?;
    Ok(())
}

/// Makes descriptor 0 a duplicate of `stdin`, and 1 and 2 duplicates of
/// `output` (dup2(2)). `std::io::stdin()` and the others refer to the
/// descriptor numbers, so they read and write the new files from now on.
pub fn replace_stdio(stdin: &impl AsFd, output: &impl AsFd) -> Result<(), SyscallError> {
    for (from, to) in [
        (stdin.as_fd().as_raw_fd(), libc::STDIN_FILENO),
        (output.as_fd().as_raw_fd(), libc::STDOUT_FILENO),
        (output.as_fd().as_raw_fd(), libc::STDERR_FILENO),
    ] {
        // SAFETY: `from` is an open descriptor borrowed for the call; `to`
        // is a standard descriptor, which dup2 closes and replaces
        // atomically. No Rust object owns descriptors 0-2 other than
        // std's stdio handles, which are meant to follow them.
        cvt("dup2(2)", unsafe { libc::dup2(from, to) })?;
    }
    Ok(())
}

/// Waits for the child `pid` to end (waitpid(2), retried on `EINTR`) and
/// reaps it.
pub fn wait_child(pid: i32) -> Result<ChildExit, SyscallError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid c_int the kernel writes into; it
        // lives for the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 {
            break;
        }
        let e = SyscallError::last("waitpid(2)");
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        ChildExit::Exited(libc::WEXITSTATUS(status))
    } else {
        ChildExit::Signaled(libc::WTERMSIG(status))
    })
}

/// Asks the kernel to send SIGKILL to the calling process when its parent
/// ends (prctl(2) `PR_SET_PDEATHSIG`), so a child that serves on behalf of
/// a waiting parent does not outlive it when the parent is killed.
pub fn die_with_parent() -> Result<(), SyscallError> {
    // SAFETY: PR_SET_PDEATHSIG takes the signal number by value; no memory
    // is passed.
    cvt("prctl(PR_SET_PDEATHSIG)", unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0)
    })?;
    Ok(())
}

/// A descriptor that becomes readable when process `pid` (a child of the
/// caller, or any process) ends (pidfd_open(2), Linux 5.3+). Opened
/// before the child is reaped it refers to that child even if it has
/// already exited.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, SyscallError> {
    // SAFETY: pidfd_open takes the pid and flags by value and returns a new
    // descriptor (close-on-exec always), which nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    let fd = cvt("pidfd_open(2)", fd as libc::c_int)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends signal `signal` to process `pid` (kill(2)).
pub fn send_signal(pid: i32, signal: i32) -> Result<(), SyscallError> {
    if pid <= 0 {
        // kill(2) with 0 or a negative pid signals whole process groups.
        return Err(SyscallError::invalid(
            "kill(2)",
            format!("pid {pid} names no single process"),
        ));
    }
    // SAFETY: kill takes its arguments by value and touches no memory of
    // the caller.
    cvt("kill(2)", unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_is_refused_with_a_second_thread() {
        // libtest runs this on a thread of its own: the process has at
        // least two, so the call must refuse without forking.
        assert!(thread_count().unwrap() >= 2);
        let e = fork_single_threaded().unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    // Reaped by wait_child, the function under test, not by Child::wait.
    #[allow(clippy::zombie_processes)]
    fn a_child_is_waited_for_with_its_status() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        assert_eq!(wait_child(child.id() as i32).unwrap(), ChildExit::Exited(7));
        let e = wait_child(child.id() as i32).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECHILD));
    }
}
