//! Extended attributes whose values carry ids: POSIX ACLs
//! (`system.posix_acl_access`, `system.posix_acl_default`) name users and
//! groups, and file capabilities (`security.capability`) name the user who
//! is root for them. Both are bytes from an untrusted guest on the way in:
//! parsed, checked, translated, or refused with EINVAL.
//!
//! Capabilities follow what Linux does for a user namespace
//! (`cap_convert_nscap`): a version 2 value (no root id: root of the
//! initial namespace) written by the guest is stored as version 3 with the
//! host id of the guest's root, so the capabilities hold only for a
//! process whose root is that id — on the host, nobody's. Read back, a
//! value whose root id is the guest's root is shown as version 2 again.

use std::io;

use super::rules::IdMap;
use crate::acl::Acl;

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Which of these attributes `name` is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdXattr {
    /// `system.posix_acl_access` or `system.posix_acl_default`.
    Acl,
    /// `security.capability`.
    Capability,
}

impl IdXattr {
    pub(super) fn of(name: &[u8]) -> Option<IdXattr> {
        match name {
            b"system.posix_acl_access" | b"system.posix_acl_default" => Some(IdXattr::Acl),
            b"security.capability" => Some(IdXattr::Capability),
            _ => None,
        }
    }
}

/// Which way a value travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    /// From the guest (SETXATTR): unmapped ids are refused.
    ToHost,
    /// To the guest (GETXATTR): unmapped ids are shown as the overflow id.
    ToGuest,
}

fn translate(map: &IdMap, id: u32, way: Way) -> io::Result<u32> {
    match way {
        Way::ToHost => map.to_host(id).ok_or_else(einval),
        Way::ToGuest => Ok(map.shown_to_guest(id)),
    }
}

/// Translates the user and group ids of an ACL value in place (parsed and
/// validated as Linux does, [`Acl::parse`]; the form keeps its length).
pub(super) fn translate_acl(value: &mut [u8], uid: &IdMap, gid: &IdMap, way: Way) -> io::Result<()> {
    let Some(acl) = Acl::parse(value)? else {
        // The header alone: no ACL, no ids.
        return Ok(());
    };
    let mapped = acl.to_xattr_with_ids(|id| translate(uid, id, way), |id| translate(gid, id, way))?;
    value.copy_from_slice(&mapped);
    Ok(())
}

/// `struct vfs_cap_data` / `vfs_ns_cap_data` (include/uapi/linux/capability.h).
const CAP_REVISION_MASK: u32 = 0xFF00_0000;
const CAP_REVISION_1: u32 = 0x0100_0000;
const CAP_REVISION_2: u32 = 0x0200_0000;
const CAP_REVISION_3: u32 = 0x0300_0000;
const CAP_FLAGS_MASK: u32 = !CAP_REVISION_MASK;
const CAP_V1_BYTES: usize = 12;
const CAP_V2_BYTES: usize = 20;
const CAP_V3_BYTES: usize = 24;
/// Largest capability value (version 3): what is fetched to translate.
pub(super) const CAP_BYTES_MAX: u32 = CAP_V3_BYTES as u32;

/// A capability value with its root id split out.
struct Caps {
    /// Flags (the effective bit) without the revision.
    flags: u32,
    /// `permitted, inheritable` for the low and high 32 capabilities.
    data: [u32; 4],
    /// The user id that is root for these capabilities.
    rootid: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Caps {
    fn parse(value: &[u8]) -> io::Result<Caps> {
        if value.len() < 4 {
            return Err(einval());
        }
        let magic = le32(value, 0);
        let (revision, flags) = (magic & CAP_REVISION_MASK, magic & CAP_FLAGS_MASK);
        let mut data = [0u32; 4];
        let rootid = match (revision, value.len()) {
            (CAP_REVISION_1, CAP_V1_BYTES) => {
                data[..2].copy_from_slice(&[le32(value, 4), le32(value, 8)]);
                0
            }
            (CAP_REVISION_2, CAP_V2_BYTES) | (CAP_REVISION_3, CAP_V3_BYTES) => {
                for (i, d) in data.iter_mut().enumerate() {
                    *d = le32(value, 4 + 4 * i);
                }
                if revision == CAP_REVISION_3 {
                    le32(value, CAP_V2_BYTES)
                } else {
                    0
                }
            }
            _ => return Err(einval()),
        };
        Ok(Caps { flags, data, rootid })
    }

    /// Version 2 when root is root of the initial namespace, else 3.
    fn encode(&self) -> Vec<u8> {
        let revision = if self.rootid == 0 {
            CAP_REVISION_2
        } else {
            CAP_REVISION_3
        };
        let mut out = Vec::with_capacity(CAP_V3_BYTES);
        out.extend_from_slice(&(revision | self.flags).to_le_bytes());
        for d in self.data {
            out.extend_from_slice(&d.to_le_bytes());
        }
        if self.rootid != 0 {
            out.extend_from_slice(&self.rootid.to_le_bytes());
        }
        out
    }
}

/// Translates the root id of a capability value. A value whose root id
/// translates to itself comes back byte for byte.
pub(super) fn translate_capability(value: &[u8], uid: &IdMap, way: Way) -> io::Result<Vec<u8>> {
    let mut caps = Caps::parse(value)?;
    let rootid = translate(uid, caps.rootid, way)?;
    if rootid == caps.rootid {
        return Ok(value.to_vec());
    }
    caps.rootid = rootid;
    Ok(caps.encode())
}

#[cfg(test)]
mod tests {
    use super::super::rules::{IdRule, OVERFLOW_ID};
    use super::*;

    fn map(rules: &[&str]) -> IdMap {
        IdMap::new(rules.iter().map(|s| s.parse::<IdRule>().unwrap()).collect()).unwrap()
    }

    use crate::acl::tag::{GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const UNDEF: u32 = u32::MAX;

    /// A valid ACL naming user `id` (rw-) and no group.
    fn naming_user(id: u32) -> Vec<u8> {
        acl(&[
            (USER_OBJ, 7, UNDEF),
            (USER, 6, id),
            (GROUP_OBJ, 5, UNDEF),
            (MASK, 7, UNDEF),
            (OTHER, 0, UNDEF),
        ])
    }

    #[test]
    fn acl_user_and_group_entries_are_translated_and_unmapped_ones_refused_from_the_guest() {
        let uid = map(&["map:0:1000:1", "map:1000:2000:10"]);
        let gid = map(&["map:0:3000:1"]);
        let mut v = acl(&[
            (USER_OBJ, 7, UNDEF),
            (USER, 6, 1005),
            (GROUP_OBJ, 5, UNDEF),
            (GROUP, 4, 0),
            (MASK, 7, UNDEF),
            (OTHER, 0, UNDEF),
        ]);
        translate_acl(&mut v, &uid, &gid, Way::ToHost).unwrap();
        assert_eq!(
            v,
            acl(&[
                (USER_OBJ, 7, UNDEF),
                (USER, 6, 2005),
                (GROUP_OBJ, 5, UNDEF),
                (GROUP, 4, 3000),
                (MASK, 7, UNDEF),
                (OTHER, 0, UNDEF),
            ])
        );
        translate_acl(&mut v, &uid, &gid, Way::ToGuest).unwrap();
        assert_eq!(le32(&v, 4 + 8 + 4), 1005);
        // A host user the guest has no id for: shown as the overflow id.
        let mut host = naming_user(0);
        translate_acl(&mut host, &uid, &gid, Way::ToGuest).unwrap();
        assert_eq!(le32(&host, 4 + 8 + 4), OVERFLOW_ID);
        // From the guest, an ACL naming a user it has no mapping for.
        let mut unmapped = naming_user(5);
        let e = translate_acl(&mut unmapped, &uid, &gid, Way::ToHost).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn malformed_acls_are_refused() {
        let (uid, gid) = (IdMap::default(), IdMap::default());
        for bad in [
            vec![],
            vec![2, 0, 0],
            acl(&[])[..3].to_vec(),
            {
                let mut v = naming_user(5);
                v.pop();
                v
            },
            {
                let mut v = naming_user(5);
                v[0] = 1;
                v
            },
            acl(&[(0x40, 6, 5)]),
            // A named user without the entries Linux requires.
            acl(&[(USER, 6, 5)]),
        ] {
            let mut v = bad.clone();
            assert!(
                translate_acl(&mut v, &uid, &gid, Way::ToHost).is_err(),
                "{bad:?} passed"
            );
        }
        let mut empty = acl(&[]);
        assert!(translate_acl(&mut empty, &uid, &gid, Way::ToHost).is_ok());
    }

    fn caps_v2(effective: bool, permitted: u32) -> Vec<u8> {
        let magic = CAP_REVISION_2 | u32::from(effective);
        let mut v = magic.to_le_bytes().to_vec();
        for d in [permitted, 0, 0, 0] {
            v.extend_from_slice(&d.to_le_bytes());
        }
        v
    }

    #[test]
    fn a_guest_roots_capabilities_are_stored_for_its_host_id_and_read_back_as_its_own() {
        let uid = map(&["map:0:1000:1"]);
        // cap_setuid+ep, as setcap writes it.
        let v2 = caps_v2(true, 1 << 7);
        let stored = translate_capability(&v2, &uid, Way::ToHost).unwrap();
        assert_eq!(stored.len(), CAP_V3_BYTES);
        assert_eq!(le32(&stored, 0), CAP_REVISION_3 | 1);
        assert_eq!(le32(&stored, 4), 1 << 7);
        assert_eq!(le32(&stored, 20), 1000, "root id: the guest's root on the host");
        assert_eq!(translate_capability(&stored, &uid, Way::ToGuest).unwrap(), v2);
        // Host root's capabilities are nobody's in the guest.
        let shown = translate_capability(&v2, &uid, Way::ToGuest).unwrap();
        assert_eq!(le32(&shown, 20), OVERFLOW_ID);
        // A guest without a root mapping cannot write capabilities at all.
        let e = translate_capability(&v2, &map(&["map:1000:1000:1"]), Way::ToHost).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // Identity: unchanged, whatever the version.
        assert_eq!(
            translate_capability(&v2, &IdMap::default(), Way::ToHost).unwrap(),
            v2
        );
    }

    #[test]
    fn version_1_and_3_values_translate_and_malformed_ones_are_refused() {
        let uid = map(&["map:0:1000:1", "map:500:1500:1"]);
        let mut v1 = (CAP_REVISION_1 | 1).to_le_bytes().to_vec();
        v1.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
        let stored = translate_capability(&v1, &uid, Way::ToHost).unwrap();
        assert_eq!(
            (stored.len(), le32(&stored, 4), le32(&stored, 20)),
            (CAP_V3_BYTES, 0x80, 1000)
        );
        let mut v3 = caps_v2(false, 3);
        v3[3] = 3;
        v3.extend_from_slice(&500u32.to_le_bytes());
        let stored = translate_capability(&v3, &uid, Way::ToHost).unwrap();
        assert_eq!(le32(&stored, 20), 1500);
        for bad in [
            vec![],
            vec![0, 0, 0, 2],
            caps_v2(true, 1)[..16].to_vec(),
            {
                let mut v = caps_v2(true, 1);
                v[3] = 4;
                v
            },
            {
                let mut v = caps_v2(true, 1);
                v[3] = 3;
                v
            },
        ] {
            assert!(
                translate_capability(&bad, &uid, Way::ToHost).is_err(),
                "{bad:?} passed"
            );
        }
    }
}
