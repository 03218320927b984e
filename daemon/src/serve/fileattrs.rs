//! `chattr`/`lsattr` on `xfused passthrough`: the file attribute ioctls
//! ([`xfuse::fileattr`]) made on the source file itself, so the flags are
//! the source filesystem's, and so are their effects (an append-only or
//! immutable source file refuses the host's writes and unlinks, which is
//! what PassthroughFs makes).
//!
//! The file is opened again for each request ([`super::source`]); the
//! request's handle (from the kernel's own OPEN) is not needed. Nameless
//! `O_TMPFILE` files are served from the descriptor [`super::tmpfiles`]
//! holds.
//!
//! Permissions: the kernel's `vfs_fileattr_set` checks the caller's
//! ownership and `CAP_LINUX_IMMUTABLE` before any request is sent, with or
//! without `default_permissions`. Where xfused checks permissions itself
//! (`--permissions daemon`) the hook checks again, by
//! [`xfuse::fileattr::may_change`], against the source file's owner and
//! flags: permission decisions are the daemon's there. The ioctl itself is
//! made as the daemon, like PassthroughFs's SETATTR: switching to the
//! caller's filesystem ids would check nothing, since the daemon keeps its
//! capabilities across that switch (`SECBIT_NO_SETUID_FIXUP`).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::api::filesystem::Context;
use kmod_shim::fileattr::{self, FsXattr};
use xfuse::fileattr::{flags_protected_changed, may_change, xflags_protected_changed, FileAttrs};

use super::source::SourceFiles;

/// Serves the file attribute ioctls from the source files of `S`.
pub struct SourceFileAttrs<S> {
    source: S,
    check_permissions: bool,
}

impl<S> std::fmt::Debug for SourceFileAttrs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceFileAttrs")
            .field("check_permissions", &self.check_permissions)
            .finish_non_exhaustive()
    }
}

impl<S: SourceFiles> SourceFileAttrs<S> {
    /// The hook over `source`; `check_permissions`: refuse, as Linux does,
    /// a change by anyone but the owner or root and a change of immutable
    /// or append-only by anyone but root (for `--permissions daemon`).
    pub fn new(source: S, check_permissions: bool) -> SourceFileAttrs<S> {
        SourceFileAttrs {
            source,
            check_permissions,
        }
    }

    /// The source file, with its owner checked against the caller when
    /// the hook checks permissions and `protected_changed` says whether
    /// the change touches immutable or append-only.
    fn for_change(
        &self,
        ctx: &Context,
        inode: u64,
        protected_changed: impl FnOnce(&File) -> io::Result<bool>,
    ) -> io::Result<File> {
        let file = self.source.source_file(inode)?;
        if self.check_permissions {
            let owner = file.metadata()?.uid();
            may_change(ctx.uid, owner, protected_changed(&file)?)?;
        }
        Ok(file)
    }
}

impl<S: SourceFiles> FileAttrs for SourceFileAttrs<S> {
    fn get_flags(&self, _: &Context, inode: u64, _: u64) -> io::Result<u32> {
        let file = self.source.source_file(inode)?;
        Ok(fileattr::get_flags(file.as_fd())?)
    }

    fn set_flags(&self, ctx: &Context, inode: u64, _: u64, flags: u32) -> io::Result<()> {
        let file = self.for_change(ctx, inode, |f| {
            Ok(flags_protected_changed(fileattr::get_flags(f.as_fd())?, flags))
        })?;
        Ok(fileattr::set_flags(file.as_fd(), flags)?)
    }

    fn get_fsxattr(&self, _: &Context, inode: u64, _: u64) -> io::Result<FsXattr> {
        let file = self.source.source_file(inode)?;
        Ok(fileattr::get_fsxattr(file.as_fd())?)
    }

    fn set_fsxattr(&self, ctx: &Context, inode: u64, _: u64, attr: &FsXattr) -> io::Result<()> {
        let file = self.for_change(ctx, inode, |f| {
            Ok(xflags_protected_changed(
                fileattr::get_fsxattr(f.as_fd())?.xflags,
                attr.xflags,
            ))
        })?;
        Ok(fileattr::set_fsxattr(file.as_fd(), attr)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_backend_rs::api::filesystem::FileSystem;
    use fuse_backend_rs::passthrough::{Config, PassthroughFs};
    use std::ffi::CString;
    use std::os::unix::fs::chown;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::serve::tmpfiles::Tmpfiles;
    use kmod_shim::fileattr::{flags, xflags};

    /// A PassthroughFs over a fresh directory, with `Tmpfiles` on top as
    /// `xfused passthrough` has it.
    fn source() -> (tempfile::TempDir, Arc<Tmpfiles<Arc<PassthroughFs<()>>>>) {
        let dir = tempfile::tempdir().unwrap();
        let fs = PassthroughFs::<()>::new(Config {
            root_dir: dir.path().to_str().unwrap().to_owned(),
            do_import: true,
            inode_file_handles: true,
            ..Default::default()
        })
        .unwrap();
        fs.import().unwrap();
        (dir, Arc::new(Tmpfiles::new(Arc::new(fs), Duration::from_secs(1))))
    }

    fn lookup(fs: &Tmpfiles<Arc<PassthroughFs<()>>>, name: &str) -> u64 {
        let name = CString::new(name).unwrap();
        fs.lookup(&Context::default(), 1, &name).unwrap().inode
    }

    fn caller(uid: u32) -> Context {
        Context {
            uid,
            gid: uid,
            pid: 0,
        }
    }

    /// Clears every flag of `path` on drop, so the directory can go.
    struct Cleared(std::path::PathBuf);
    impl Drop for Cleared {
        fn drop(&mut self) {
            if let Ok(f) = File::open(&self.0) {
                let _ = fileattr::set_flags(f.as_fd(), 0);
            }
        }
    }

    /// Whether the test directory keeps nodump; the skip reason otherwise.
    fn supported(path: &std::path::Path) -> bool {
        let f = File::open(path).unwrap();
        match fileattr::set_flags(f.as_fd(), flags::NODUMP) {
            Ok(()) => {
                fileattr::set_flags(f.as_fd(), 0).unwrap();
                true
            }
            Err(e) => {
                eprintln!("skipped: the temporary directory's filesystem keeps no nodump flag ({e})");
                false
            }
        }
    }

    #[test]
    fn flags_are_the_source_files_and_the_owner_rule_holds_when_asked() {
        if kmod_shim::creds::effective_uid() != 0 {
            eprintln!("skipped: needs root (chown, CAP_LINUX_IMMUTABLE)");
            return;
        }
        let (dir, fs) = source();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        if !supported(&path) {
            return;
        }
        let _cleared = Cleared(path.clone());
        chown(&path, Some(1000), Some(1000)).unwrap();
        let ino = lookup(&fs, "f");
        let hook = SourceFileAttrs::new(fs.clone(), true);

        hook.set_flags(&caller(1000), ino, 0, flags::NODUMP)
            .expect("the owner sets nodump");
        let on_host = fileattr::get_flags(File::open(&path).unwrap().as_fd()).unwrap();
        assert_eq!(on_host & flags::NODUMP, flags::NODUMP);
        assert_eq!(hook.get_flags(&caller(1001), ino, 0).unwrap(), on_host);
        let denied = |r: io::Result<()>, what: &str| {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM), "{what}")
        };
        denied(hook.set_flags(&caller(1001), ino, 0, 0), "another user");
        denied(
            hook.set_flags(&caller(1000), ino, 0, flags::NODUMP | flags::APPEND),
            "the owner sets append-only",
        );
        let x = hook.get_fsxattr(&caller(1000), ino, 0).unwrap();
        assert_eq!(x.xflags & xflags::NODUMP, xflags::NODUMP);
        denied(
            hook.set_fsxattr(
                &caller(1000),
                ino,
                0,
                &FsXattr {
                    xflags: x.xflags | xflags::IMMUTABLE,
                    ..x
                },
            ),
            "the owner sets immutable through fsxattr",
        );
        hook.set_fsxattr(
            &caller(0),
            ino,
            0,
            &FsXattr {
                xflags: xflags::APPEND,
                ..x
            },
        )
        .expect("root sets append-only");
        assert_eq!(
            hook.get_flags(&caller(0), ino, 0).unwrap() & (flags::APPEND | flags::NODUMP),
            flags::APPEND
        );
        // Without the daemon's checks (the kernel's are then the only
        // ones) the same change by the owner reaches the source.
        let unchecked = SourceFileAttrs::new(fs.clone(), false);
        unchecked.set_flags(&caller(1000), ino, 0, 0).unwrap();
        assert_eq!(hook.get_flags(&caller(0), ino, 0).unwrap() & flags::APPEND, 0);
    }

    #[test]
    fn a_renamed_source_file_is_not_mistaken_for_the_one_at_its_path() {
        let (dir, fs) = source();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let ino = lookup(&fs, "f");
        let hook = SourceFileAttrs::new(fs.clone(), false);
        let before = match hook.get_flags(&Context::default(), ino, 0) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("skipped: the temporary directory's filesystem keeps no flags ({e})");
                return;
            }
        };
        // The inode keeps its file under another name; a new file takes
        // the old one. The hook follows the inode (PassthroughFs's path
        // of it is the new name), never the name.
        std::fs::rename(&path, dir.path().join("g")).unwrap();
        File::create(&path).unwrap();
        assert_eq!(hook.get_flags(&Context::default(), ino, 0).unwrap(), before);
        let other = lookup(&fs, "f");
        assert_ne!(other, ino);
        // Special files have no flags here.
        let fifo = dir.path().join("p");
        mkfifo(&fifo);
        let p = lookup(&fs, "p");
        assert_eq!(
            hook.get_flags(&Context::default(), p, 0)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOTTY)
        );
    }

    /// mkfifo(1), without an unsafe call here.
    fn mkfifo(path: &std::path::Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }
}
