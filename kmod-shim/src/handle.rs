//! File handles: `name_to_handle_at(2)` and `open_by_handle_at(2)`, the
//! calls NFS servers (and xfstests' handle tests) use to reopen a file by
//! identity rather than by name.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{cvt, SyscallError};

/// `MAX_HANDLE_SZ` of `<linux/exportfs.h>`: the largest handle any
/// filesystem encodes.
pub const HANDLE_BYTES_MAX: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: libc::c_int,
    f_handle: [u8; HANDLE_BYTES_MAX],
}

/// A file handle as a filesystem encoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    /// The filesystem's handle type.
    pub handle_type: i32,
    /// The handle's bytes (at most [`HANDLE_BYTES_MAX`]).
    pub bytes: Vec<u8>,
}

/// The handle of `path` (not following a final symlink) and the id of the
/// mount it is on (`/proc/self/mountinfo`'s first field).
pub fn name_to_handle_at(path: &Path) -> Result<(FileHandle, i32), SyscallError> {
    const CALL: &str = "name_to_handle_at";
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SyscallError::invalid(CALL, "path holds a NUL byte"))?;
    let mut raw = RawHandle {
        handle_bytes: HANDLE_BYTES_MAX as u32,
        handle_type: 0,
        f_handle: [0; HANDLE_BYTES_MAX],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `raw` is a
    // `struct file_handle` whose `handle_bytes` says how much room follows
    // the header (the kernel writes no more); `mount_id` is a valid int.
    cvt(CALL, unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            (&mut raw as *mut RawHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    })?;
    let len = (raw.handle_bytes as usize).min(HANDLE_BYTES_MAX);
    let handle = FileHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    };
    Ok((handle, mount_id))
}

/// Opens the file `handle` names on the filesystem that `mount` (any
/// descriptor on it) is on, with `flags` (O_RDONLY etc.). Needs
/// CAP_DAC_READ_SEARCH; ESTALE if the filesystem no longer knows it.
pub fn open_by_handle_at(mount: impl AsFd, handle: &FileHandle, flags: i32) -> Result<OwnedFd, SyscallError> {
    const CALL: &str = "open_by_handle_at";
    if handle.bytes.len() > HANDLE_BYTES_MAX {
        return Err(SyscallError::refused(CALL, libc::EINVAL));
    }
    let mut raw = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.handle_type,
        f_handle: [0; HANDLE_BYTES_MAX],
    };
    raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `raw` is a valid `struct file_handle` whose `handle_bytes`
    // does not exceed the bytes that follow it; the kernel only reads it.
    // The descriptor `mount` is borrowed for the call.
    let fd = cvt(CALL, unsafe {
        libc::open_by_handle_at(
            mount.as_fd().as_raw_fd(),
            (&mut raw as *mut RawHandle).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_reopens_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"by handle").unwrap();
        let (handle, _mount_id) = name_to_handle_at(&path).unwrap();
        assert!(!handle.bytes.is_empty());
        let mount = std::fs::File::open(dir.path()).unwrap();
        match open_by_handle_at(&mount, &handle, libc::O_RDONLY) {
            Ok(fd) => {
                let mut back = String::new();
                std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut back).unwrap();
                assert_eq!(back, "by handle");
            }
            // Without CAP_DAC_READ_SEARCH.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
        let too_big = FileHandle {
            handle_type: 1,
            bytes: vec![0; HANDLE_BYTES_MAX + 1],
        };
        assert_eq!(
            open_by_handle_at(&mount, &too_big, 0).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
