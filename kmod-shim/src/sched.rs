//! CPU affinity of threads.

use crate::{cvt, SyscallError};

/// Runs the calling thread only on CPU `cpu` from now on.
///
/// A ring thread that serves exactly one CPU's queue is pinned there: the
/// kernel queues a request on the queue of the CPU the caller runs on, so
/// the thread that answers it wakes on that CPU, with the caller's cache
/// and without an inter-processor wake-up. Fails with `EINVAL` for a CPU
/// that is not online (a possible CPU may be offline) or beyond
/// `CPU_SETSIZE`.
pub fn pin_current_thread(cpu: usize) -> Result<(), SyscallError> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(SyscallError::refused("sched_setaffinity(2)", libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays
    // inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the kernel reads
    // size_of::<cpu_set_t>() bytes from `set`, which lives for the call.
    cvt("sched_setaffinity(2)", unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    })?;
    Ok(())
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
pub fn current_thread_cpus() -> Result<Vec<usize>, SyscallError> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most
    // size_of::<cpu_set_t>() bytes into `set`.
    cvt("sched_getaffinity(2)", unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
    })?;
    let mut cpus = Vec::new();
    for c in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: CPU_ISSET reads bit `c` of `set`, and c < CPU_SETSIZE.
        if unsafe { libc::CPU_ISSET(c, &set) } {
            cpus.push(c);
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pins_to_one_cpu_and_only_that_thread() {
        let before = current_thread_cpus().unwrap();
        let cpu = *before.last().expect("at least one CPU");
        let pinned = std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            current_thread_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, vec![cpu]);
        assert_eq!(current_thread_cpus().unwrap(), before);
        assert_eq!(
            pin_current_thread(libc::CPU_SETSIZE as usize)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
