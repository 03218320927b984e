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
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
/// tightens it to [`DIR_MODE`] and logs that it did.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)?;
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
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
}
