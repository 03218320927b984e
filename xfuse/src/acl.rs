//! POSIX access control lists as Linux stores them in the
//! `system.posix_acl_access` and `system.posix_acl_default` xattrs, and the
//! rules Linux applies to them: who an ACL lets in
//! (`posix_acl_permission`), how `chmod` rewrites one, what a file created
//! under a default ACL gets, and which ACLs the mode bits alone can say.
//!
//! The xattr form (`<linux/posix_acl_xattr.h>`): a little-endian `u32`
//! version (2), then 8-byte entries of a `u16` tag, a `u16` permission set
//! (rwx, 0 to 7) and a `u32` user or group id (the id is unused, and set to
//! `u32::MAX`, for the tags that name no one).
//!
//! Used by [`crate::perm`] (the daemon's checks, without
//! `default_permissions`) and by filesystems that keep ACLs themselves
//! (xfused's metadata service): with `FUSE_POSIX_ACL` the kernel checks
//! ACLs but leaves keeping the mode and the ACL in step to the filesystem.

use std::io;

/// The xattr holding a file's access ACL.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";
/// The xattr holding a directory's default ACL (what entries created in it
/// inherit).
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";

/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;
/// The id of entries that name no one (`ACL_UNDEFINED_ID`).
const NO_ID: u32 = u32::MAX;
/// Most entries an ACL may have: as many as fit the largest xattr value
/// Linux allows (`XATTR_SIZE_MAX`, 64 KiB).
pub const ENTRIES_MAX: usize = (65536 - HEADER_LEN) / ENTRY_LEN;

/// Entry tags (`<linux/posix_acl.h>`), in the order an ACL lists them.
pub mod tag {
    /// The file's owner.
    pub const USER_OBJ: u16 = 0x01;
    /// A named user.
    pub const USER: u16 = 0x02;
    /// The file's group.
    pub const GROUP_OBJ: u16 = 0x04;
    /// A named group.
    pub const GROUP: u16 = 0x08;
    /// The most any named entry or the file's group may be granted.
    pub const MASK: u16 = 0x10;
    /// Everybody else.
    pub const OTHER: u16 = 0x20;
}

/// One entry: who (`tag`, and `id` for a named user or group) may do what
/// (`perm`, rwx bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    /// One of [`tag`].
    pub tag: u16,
    /// Read (4), write (2), execute (1).
    pub perm: u16,
    /// The user or group of a [`tag::USER`] or [`tag::GROUP`] entry.
    pub id: u32,
}

/// A valid ACL: exactly one owner, group and other entry, a mask exactly
/// when there are named entries (Linux requires it then, and allows it
/// otherwise), no id named twice, entries in tag order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

fn invalid() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

impl Acl {
    /// Parses and validates the xattr form, as Linux's
    /// `posix_acl_from_xattr` and `posix_acl_valid` do: EINVAL for a wrong
    /// version, a torn entry, an unknown tag or permission bit, entries out
    /// of order, a missing or repeated owner, group or other entry, a
    /// missing mask where named entries need one, or an id named twice.
    /// An empty ACL (just the header) is `Ok(None)`: no ACL.
    pub fn parse(bytes: &[u8]) -> io::Result<Option<Acl>> {
        if bytes.len() < HEADER_LEN || !(bytes.len() - HEADER_LEN).is_multiple_of(ENTRY_LEN) {
            return Err(invalid());
        }
        let version = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(invalid());
        }
        let count = (bytes.len() - HEADER_LEN) / ENTRY_LEN;
        if count == 0 {
            return Ok(None);
        }
        if count > ENTRIES_MAX {
            return Err(invalid());
        }
        let entries = bytes[HEADER_LEN..]
            .chunks_exact(ENTRY_LEN)
            .map(|e| AclEntry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        Acl::new(entries).map(Some)
    }

    /// Validates `entries` (see [`Acl::parse`]); the ids of entries that
    /// name no one are normalized.
    pub fn new(mut entries: Vec<AclEntry>) -> io::Result<Acl> {
        let order = |t: u16| match t {
            tag::USER_OBJ => Some(0),
            tag::USER => Some(1),
            tag::GROUP_OBJ => Some(2),
            tag::GROUP => Some(3),
            tag::MASK => Some(4),
            tag::OTHER => Some(5),
            _ => None,
        };
        let mut last = 0;
        let mut seen = [0usize; 6];
        for e in &mut entries {
            let rank = order(e.tag).ok_or_else(invalid)?;
            if e.perm & !7 != 0 || rank < last {
                return Err(invalid());
            }
            last = rank;
            seen[rank] += 1;
            if !matches!(e.tag, tag::USER | tag::GROUP) {
                e.id = NO_ID;
            }
        }
        let named = seen[1] + seen[3];
        if seen[0] != 1 || seen[2] != 1 || seen[5] != 1 || seen[4] > 1 || (named > 0 && seen[4] == 0) {
            return Err(invalid());
        }
        let mut ids: Vec<(u16, u32)> = entries
            .iter()
            .filter(|e| matches!(e.tag, tag::USER | tag::GROUP))
            .map(|e| (e.tag, e.id))
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid());
        }
        Ok(Acl { entries })
    }

    /// The xattr form.
    pub fn to_xattr(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The xattr form with the id of every named user entry rewritten by
    /// `user` and of every named group entry by `group` (a translation
    /// between a guest's ids and the host's, say). The result is not
    /// checked again: ids mapped to one (several unmapped ids shown as the
    /// overflow id) may repeat, as Linux shows them in a user namespace;
    /// whoever stores it validates it then.
    pub fn to_xattr_with_ids(
        &self,
        mut user: impl FnMut(u32) -> io::Result<u32>,
        mut group: impl FnMut(u32) -> io::Result<u32>,
    ) -> io::Result<Vec<u8>> {
        let mut mapped = self.clone();
        for e in &mut mapped.entries {
            match e.tag {
                tag::USER => e.id = user(e.id)?,
                tag::GROUP => e.id = group(e.id)?,
                _ => {}
            }
        }
        Ok(mapped.to_xattr())
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[AclEntry] {
        &self.entries
    }

    fn find_mut(&mut self, t: u16) -> Option<&mut AclEntry> {
        self.entries.iter_mut().find(|e| e.tag == t)
    }

    fn find(&self, t: u16) -> Option<&AclEntry> {
        self.entries.iter().find(|e| e.tag == t)
    }

    /// The permission bits (0o777) this ACL shows as a mode: the owner
    /// entry's, the mask's (the file's group entry's without a mask), the
    /// other entry's.
    pub fn mode_bits(&self) -> u32 {
        let perm = |t: u16| self.find(t).map_or(0, |e| u32::from(e.perm));
        let group = if self.find(tag::MASK).is_some() {
            perm(tag::MASK)
        } else {
            perm(tag::GROUP_OBJ)
        };
        (perm(tag::USER_OBJ) << 6) | (group << 3) | perm(tag::OTHER)
    }

    /// Whether the mode bits say all this ACL says (owner, group and other
    /// entries only): then Linux keeps no ACL, just the mode
    /// (`posix_acl_equiv_mode`).
    pub fn is_mode_only(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, tag::USER_OBJ | tag::GROUP_OBJ | tag::OTHER))
    }

    /// Rewrites the ACL for a `chmod` to `mode` (`__posix_acl_chmod`): the
    /// owner, mask (else group) and other entries take the new bits; named
    /// entries stay, bounded by the new mask.
    pub fn chmod(&mut self, mode: u32) {
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        if let Some(e) = self.find_mut(tag::USER_OBJ) {
            e.perm = bits(6);
        }
        let group = if self.find(tag::MASK).is_some() {
            tag::MASK
        } else {
            tag::GROUP_OBJ
        };
        if let Some(e) = self.find_mut(group) {
            e.perm = bits(3);
        }
        if let Some(e) = self.find_mut(tag::OTHER) {
            e.perm = bits(0);
        }
    }

    /// What an entry created with `mode` (type and permission bits, no
    /// umask applied) in a directory with this default ACL gets
    /// (`posix_acl_create`): its mode, and its access ACL unless the mode
    /// says it all. A new directory also takes this ACL as its own default.
    pub fn inherit(&self, mode: u32) -> (u32, Option<Acl>) {
        let mut acl = self.clone();
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        if let Some(e) = acl.find_mut(tag::USER_OBJ) {
            e.perm &= bits(6);
        }
        let group = if acl.find(tag::MASK).is_some() {
            tag::MASK
        } else {
            tag::GROUP_OBJ
        };
        if let Some(e) = acl.find_mut(group) {
            e.perm &= bits(3);
        }
        if let Some(e) = acl.find_mut(tag::OTHER) {
            e.perm &= bits(0);
        }
        let mode = (mode & !0o777) | acl.mode_bits();
        (mode, (!acl.is_mode_only()).then_some(acl))
    }

    /// Whether a caller may do `want` (rwx bits) to a file owned by
    /// `owner` with this ACL, as `posix_acl_permission` decides for a
    /// caller without capabilities: the owner entry for the owner; a named
    /// user entry, bounded by the mask; else, if the caller is in the
    /// file's group or a named group, any one of those entries that grants
    /// all of `want` (bounded by the mask), and no access if none does;
    /// else the other entry. `in_group` says whether the caller is in a
    /// group (`None`: unknown). `None` when an unknown membership decides.
    pub fn permits(
        &self,
        owner: u32,
        caller: u32,
        mut in_group: impl FnMut(u32) -> Option<bool>,
        want: u32,
        file_gid: u32,
    ) -> Option<bool> {
        let want = (want & 7) as u16;
        let grants = |perm: u16| perm & want == want;
        let mask = self.find(tag::MASK).map_or(7, |e| e.perm);
        if caller == owner {
            return Some(self.find(tag::USER_OBJ).is_some_and(|e| grants(e.perm)));
        }
        if let Some(e) = self.entries.iter().find(|e| e.tag == tag::USER && e.id == caller) {
            return Some(grants(e.perm & mask));
        }
        let mut member = false;
        // Entries of groups whose membership is unknown: whether one of
        // them grants, whether one refuses.
        let (mut unknown_grants, mut unknown_refuses) = (false, false);
        for e in &self.entries {
            let gid = match e.tag {
                tag::GROUP_OBJ => file_gid,
                tag::GROUP => e.id,
                _ => continue,
            };
            let granted = grants(e.perm & mask);
            match in_group(gid) {
                Some(true) if granted => return Some(true),
                Some(true) => member = true,
                Some(false) => {}
                None if granted => unknown_grants = true,
                None => unknown_refuses = true,
            }
        }
        // In a group whose entries all refuse: no falling back to other,
        // unless an unknown membership could still grant.
        if member {
            return if unknown_grants { None } else { Some(false) };
        }
        let other = self.find(tag::OTHER).is_some_and(|e| grants(e.perm));
        // The outcomes the unknown memberships allow: other's (a member of
        // none of them), granted (of one that grants), refused (of one that
        // refuses, and none that grants).
        if (unknown_grants && !other) || (unknown_refuses && other) {
            return None;
        }
        Some(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    /// `u::rw-,u:7:r--,g::r--,g:9:rw-,m::rw-,o::---`
    fn sample() -> Acl {
        Acl::new(vec![
            e(tag::USER_OBJ, 6, 0),
            e(tag::USER, 4, 7),
            e(tag::GROUP_OBJ, 4, 0),
            e(tag::GROUP, 6, 9),
            e(tag::MASK, 6, 0),
            e(tag::OTHER, 0, 0),
        ])
        .unwrap()
    }

    #[test]
    fn xattr_form_round_trips_and_bad_forms_are_einval() {
        let acl = sample();
        let bytes = acl.to_xattr();
        assert_eq!(bytes.len(), 4 + 6 * 8);
        assert_eq!(Acl::parse(&bytes).unwrap(), Some(acl));
        assert_eq!(Acl::parse(&2u32.to_le_bytes()).unwrap(), None);
        let einval = |b: &[u8]| Acl::parse(b).unwrap_err().raw_os_error() == Some(libc::EINVAL);
        assert!(einval(&[]));
        assert!(einval(&bytes[..bytes.len() - 1]));
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert!(einval(&v1));
        let mut bad_perm = bytes.clone();
        bad_perm[4 + 2] = 8;
        assert!(einval(&bad_perm));
        let mut bad_tag = bytes.clone();
        bad_tag[4] = 0x40;
        assert!(einval(&bad_tag));
    }

    #[test]
    fn structure_is_validated_as_linux_does() {
        let bad = |entries: Vec<AclEntry>| Acl::new(entries).is_err();
        // No other entry; two owners; out of order; a named user without a mask.
        assert!(bad(vec![e(tag::USER_OBJ, 7, 0), e(tag::GROUP_OBJ, 5, 0)]));
        assert!(bad(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::USER_OBJ, 7, 0),
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::OTHER, 5, 0)
        ]));
        assert!(bad(vec![
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::USER_OBJ, 7, 0),
            e(tag::OTHER, 5, 0)
        ]));
        assert!(bad(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::USER, 7, 3),
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::OTHER, 5, 0)
        ]));
        // The same user named twice.
        assert!(bad(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::USER, 7, 3),
            e(tag::USER, 4, 3),
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::MASK, 7, 0),
            e(tag::OTHER, 5, 0)
        ]));
        // A mask without named entries is allowed; the minimal form too.
        assert!(!bad(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::MASK, 5, 0),
            e(tag::OTHER, 5, 0)
        ]));
        let minimal = Acl::new(vec![
            e(tag::USER_OBJ, 7, 5),
            e(tag::GROUP_OBJ, 5, 5),
            e(tag::OTHER, 4, 5),
        ])
        .unwrap();
        assert!(minimal.is_mode_only());
        assert_eq!(minimal.mode_bits(), 0o754);
        // Ids of unnamed entries are normalized.
        assert!(minimal.entries().iter().all(|e| e.id == NO_ID));
    }

    #[test]
    fn permission_follows_posix_acl_permission() {
        let acl = sample();
        let groups = |member: &'static [u32]| move |g: u32| Some(member.contains(&g));
        let owner = 100;
        let file_gid = 50;
        let may = |uid: u32, member: &'static [u32], want: u32| {
            acl.permits(owner, uid, groups(member), want, file_gid)
        };
        // The owner by the owner entry alone.
        assert_eq!(may(owner, &[], 4), Some(true));
        assert_eq!(may(owner, &[], 1), Some(false));
        // A named user: its entry, whatever groups it is in.
        assert_eq!(may(7, &[9], 4), Some(true));
        assert_eq!(may(7, &[9], 2), Some(false));
        // The file's group: r only; a named group: rw.
        assert_eq!(may(8, &[50], 4), Some(true));
        assert_eq!(may(8, &[50], 2), Some(false));
        assert_eq!(may(8, &[9], 6), Some(true));
        assert_eq!(may(8, &[50, 9], 6), Some(true));
        // Not a member of any: other, which grants nothing.
        assert_eq!(may(8, &[], 4), Some(false));
        assert_eq!(may(8, &[], 0), Some(true));
    }

    #[test]
    fn a_group_match_that_refuses_does_not_fall_back_to_other() {
        // u::rw-,g::---,g:9:---,m::rw-,o::r--: group members may not read,
        // though everybody else may.
        let acl = Acl::new(vec![
            e(tag::USER_OBJ, 6, 0),
            e(tag::GROUP_OBJ, 0, 0),
            e(tag::GROUP, 0, 9),
            e(tag::MASK, 6, 0),
            e(tag::OTHER, 4, 0),
        ])
        .unwrap();
        assert_eq!(acl.permits(1, 2, |g| Some(g == 9), 4, 50), Some(false));
        assert_eq!(acl.permits(1, 2, |g| Some(g == 50), 4, 50), Some(false));
        assert_eq!(acl.permits(1, 2, |_| Some(false), 4, 50), Some(true));
        // Membership unknown: it decides, so there is no answer.
        assert_eq!(acl.permits(1, 2, |_| None, 4, 50), None);
    }

    #[test]
    fn the_mask_bounds_named_entries_and_the_group() {
        // u::rwx,u:7:rwx,g::rwx,m::r--,o::---
        let acl = Acl::new(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::USER, 7, 7),
            e(tag::GROUP_OBJ, 7, 0),
            e(tag::MASK, 4, 0),
            e(tag::OTHER, 0, 0),
        ])
        .unwrap();
        assert_eq!(acl.permits(1, 7, |_| Some(false), 4, 50), Some(true));
        assert_eq!(acl.permits(1, 7, |_| Some(false), 2, 50), Some(false));
        assert_eq!(acl.permits(1, 8, |g| Some(g == 50), 2, 50), Some(false));
        assert_eq!(acl.mode_bits(), 0o740);
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other() {
        let mut acl = sample();
        acl.chmod(0o750);
        assert_eq!(acl.mode_bits(), 0o750);
        // The named entries stay; the mask now bounds them to r-x.
        assert_eq!(acl.entries()[1], e(tag::USER, 4, 7));
        assert_eq!(acl.permits(1, 8, |g| Some(g == 9), 6, 50), Some(false));
        // Without a mask, the group entry takes the group bits.
        let mut minimal = Acl::new(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::GROUP_OBJ, 7, 0),
            e(tag::OTHER, 7, 0),
        ])
        .unwrap();
        minimal.chmod(0o640);
        assert_eq!(minimal.mode_bits(), 0o640);
    }

    #[test]
    fn created_entries_inherit_the_default_acl_bounded_by_their_mode() {
        let default = sample();
        // A file created 0666: the owner rw-, mask rw-, other ---.
        let (mode, acl) = default.inherit(libc::S_IFREG | 0o666);
        assert_eq!(mode, libc::S_IFREG | 0o660);
        let acl = acl.expect("named entries make an access ACL");
        assert_eq!(acl.entries()[1], e(tag::USER, 4, 7));
        // A file created 0600: the mask drops to ---.
        let (mode, _) = default.inherit(libc::S_IFREG | 0o600);
        assert_eq!(mode, libc::S_IFREG | 0o600);
        // A default ACL of the three base entries only: no access ACL.
        let base = Acl::new(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::OTHER, 0, 0),
        ])
        .unwrap();
        let (mode, acl) = base.inherit(libc::S_IFDIR | 0o777);
        assert_eq!((mode, acl), (libc::S_IFDIR | 0o750, None));
    }
}
