//! How the C allocator keeps memory it has been given back.
//!
//! glibc serves a request above its mmap threshold with a fresh mapping
//! and trims an arena's free top above its trim threshold; both start low
//! (128 KiB) and the threshold only adapts after the fact. A service that
//! allocates a 1 MiB buffer per request then maps, faults in, zeroes and
//! unmaps 256 pages per request: in a `perf` profile of a mount writing
//! 1 MiB blocks to a storage service, a fifth of the mount's time.

use crate::SyscallError;

/// Keeps buffers of up to `mmap_max` bytes in the heap (reused, not mapped
/// anew), and gives an arena's free memory back to the kernel only past
/// `trim_over` bytes. What stays unreturned is bounded by `trim_over` per
/// arena (glibc makes at most eight per CPU).
pub fn keep_large_buffers(mmap_max: usize, trim_over: usize) -> Result<(), SyscallError> {
    let (Ok(mmap_max), Ok(trim_over)) = (i32::try_from(mmap_max), i32::try_from(trim_over)) else {
        return Err(SyscallError::refused("mallopt(3)", libc::EINVAL));
    };
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, mmap_max),
        (libc::M_TRIM_THRESHOLD, trim_over),
    ] {
        // SAFETY: mallopt only sets a tunable of the allocator; it takes
        // no pointers and any value is checked by glibc (0 on refusal).
        if unsafe { libc::mallopt(param, value) } == 0 {
            return Err(SyscallError::refused("mallopt(3)", libc::EINVAL));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_in_range_are_taken_and_others_refused() {
        keep_large_buffers(8 << 20, 32 << 20).unwrap();
        assert!(keep_large_buffers(usize::MAX, 0).is_err());
        assert!(keep_large_buffers(0, usize::MAX).is_err());
    }
}
