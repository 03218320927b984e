//! Private on-disk state: what `xfused mount` and `xfused meta` keep on
//! disk (file data in the chunk store, names and xattrs in the embedded
//! metadata store) is readable by the daemon's user only.
//!
//! Directories are created with mode [`DIR_MODE`] (0700) and files with
//! [`FILE_MODE`] (0600), given at creation, so no umask can loosen them (a
//! umask only clears bits). A state directory made by an older xfused
//! (0755) is tightened to 0700 when opened ([`ensure_dir`]), with a log
//! line; the files inside it need no change to become private, since nobody
//! else can reach them through a 0700 directory.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Mode of every state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every state file the daemon creates itself.
pub const FILE_MODE: u32 = 0o600;

/// Creates directory `path` (its parent must exist) with [`DIR_MODE`].
/// Fails with `AlreadyExists` if it exists.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Makes `path` a private directory: creates it (and missing parents) with
/// [`DIR_MODE`], or, if it exists with any group or other permission bit,
/// tightens it to [`DIR_MODE`] and logs that it did. A shared directory is
/// refused rather than tightened (`PermissionDenied`, naming it): one with
/// the sticky bit (`/tmp`) or owned by another user, since taking it
/// private would break it for its other users.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)?;
    let meta = fs::metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let euid = kmod_shim::creds::effective_uid();
        if mode & 0o1000 != 0 || meta.uid() != euid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is shared (mode {mode:04o}, owner uid {}): state needs a directory of its own, \
                     private to uid {euid}; choose another or make it 0700",
                    path.display(),
                    meta.uid()
                ),
            ));
        }
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
        tracing::info!(
            "made {} private: mode {mode:04o} -> {DIR_MODE:04o} (it holds file data or metadata)",
            path.display()
        );
    }
    Ok(())
}

/// fsyncs directory `path`, so the names created or removed in it are
/// durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Private state on disk: the only files `xfused mount` and `xfused meta`
/// create are their own (chunks, the embedded store's journal and tables),
/// so a umask of 077 makes those the embedded engine creates 0600 too (the
/// chunk store sets its modes itself). Not for `xfused virtiofs`, whose
/// vhost-user socket must stay reachable by QEMU; its store is private by
/// its 0700 directory.
pub fn private_umask() {
    let old = kmod_shim::creds::set_umask(0o077);
    tracing::debug!("umask {old:03o} -> 077: state files are private");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_dir_creates_0700_and_tightens_an_old_0755_one() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b");
        ensure_dir(&fresh).unwrap();
        for p in [dir.path().join("a"), fresh] {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
                0o700,
                "{}",
                p.display()
            );
        }
        let old = dir.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&old).unwrap();
        assert_eq!(fs::metadata(&old).unwrap().permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn ensure_dir_refuses_a_shared_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sticky = dir.path().join("tmp-like");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let e = ensure_dir(&sticky).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("shared"), "{e}");
        assert_eq!(
            fs::metadata(&sticky).unwrap().permissions().mode() & 0o7777,
            0o1777,
            "left as it was"
        );
    }
}
