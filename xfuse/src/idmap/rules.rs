//! The mapping itself: rules as virtiofsd spells them, checked for overlaps,
//! and the two directions of translation.

use std::fmt;
use std::str::FromStr;

/// The id a guest sees for a host id it has no mapping for, and the id a
/// caller the mapping does not name acts as on the host: `nobody` and
/// `nogroup` on Linux distributions, the kernel's default
/// `/proc/sys/kernel/overflowuid` and the id NFS's `root_squash` uses.
pub const OVERFLOW_ID: u32 = 65534;

/// One translation rule, in virtiofsd's `--translate-uid` syntax (the
/// subset that keeps the host side safe: every rule says which host ids
/// the guest may act as).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdRule {
    /// `map:GUEST:HOST:COUNT`: guest ids `GUEST..GUEST+COUNT` are host ids
    /// `HOST..HOST+COUNT`, both ways.
    Map {
        /// First guest id.
        guest: u32,
        /// First host id.
        host: u32,
        /// Ids in the range.
        count: u32,
    },
    /// `squash-guest:GUEST:COUNT:HOST`: guest ids `GUEST..GUEST+COUNT` all
    /// act as host id `HOST`. One way only: how host id `HOST` is shown to
    /// the guest is up to the `map` rules (else [`OVERFLOW_ID`]).
    SquashGuest {
        /// First guest id.
        guest: u32,
        /// Ids in the range.
        count: u32,
        /// The one host id they become.
        host: u32,
    },
}

/// Why a rule or a set of rules was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    /// The text is not one of the rule forms.
    #[error("{rule:?}: {reason} (expected map:GUEST:HOST:COUNT or squash-guest:GUEST:COUNT:HOST)")]
    Syntax {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A range is empty or reaches id 4294967295, which is "no id" (-1) to
    /// chown(2) and never a real owner.
    #[error("{0}: a range must hold 1 or more ids and end below 4294967295")]
    Range(IdRule),
    /// Two rules claim the same guest id, or two `map` rules the same
    /// host id (the way back would be ambiguous).
    #[error("{0} overlaps {1} on the {2} side")]
    Overlap(IdRule, IdRule, &'static str),
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdRule::Map { guest, host, count } => write!(f, "map:{guest}:{host}:{count}"),
            IdRule::SquashGuest { guest, count, host } => write!(f, "squash-guest:{guest}:{count}:{host}"),
        }
    }
}

impl FromStr for IdRule {
    type Err = IdMapError;

    fn from_str(s: &str) -> Result<IdRule, IdMapError> {
        let syntax = |reason: &str| IdMapError::Syntax {
            rule: s.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let numbers: Vec<u32> = parts
            .map(|p| {
                p.parse::<u32>()
                    .map_err(|_| syntax(&format!("{p:?} is not an id or count")))
            })
            .collect::<Result<_, _>>()?;
        let [a, b, c] = numbers[..] else {
            return Err(syntax(&format!("{} numbers, 3 expected", numbers.len())));
        };
        let rule = match kind {
            "map" => IdRule::Map {
                guest: a,
                host: b,
                count: c,
            },
            "squash-guest" => IdRule::SquashGuest {
                guest: a,
                count: b,
                host: c,
            },
            other => return Err(syntax(&format!("unknown rule kind {other:?}"))),
        };
        rule.check_range()?;
        Ok(rule)
    }
}

/// "No id" to chown(2): never mapped.
const NO_ID: u64 = u32::MAX as u64;

impl IdRule {
    /// The guest ids it covers, as `start..end`.
    fn guest_range(&self) -> (u64, u64) {
        match *self {
            IdRule::Map { guest, count, .. } | IdRule::SquashGuest { guest, count, .. } => {
                (u64::from(guest), u64::from(guest) + u64::from(count))
            }
        }
    }

    /// The host ids it gives, as `start..end`.
    fn host_range(&self) -> (u64, u64) {
        match *self {
            IdRule::Map { host, count, .. } => (u64::from(host), u64::from(host) + u64::from(count)),
            IdRule::SquashGuest { host, .. } => (u64::from(host), u64::from(host) + 1),
        }
    }

    fn check_range(&self) -> Result<(), IdMapError> {
        let (g0, g1) = self.guest_range();
        let (h0, h1) = self.host_range();
        if g1 == g0 || g1 > NO_ID || h1 > NO_ID || h0 >= NO_ID {
            return Err(IdMapError::Range(*self));
        }
        Ok(())
    }
}

fn overlap((a0, a1): (u64, u64), (b0, b1): (u64, u64)) -> bool {
    a0 < b1 && b0 < a1
}

/// The translation of one kind of id (user or group ids).
///
/// With no rules it is the identity (that kind of id is not translated).
/// With rules, a guest id no rule names is *unmapped*: as a caller it acts
/// as [`OVERFLOW_ID`] on the host; as the new owner of a file (chown) it
/// is refused. A host id no `map` rule names is shown to the guest as
/// [`OVERFLOW_ID`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    rules: Vec<IdRule>,
}

impl IdMap {
    /// The map of `rules`: refused if two claim the same guest id, or two
    /// `map` rules the same host id.
    pub fn new(rules: Vec<IdRule>) -> Result<IdMap, IdMapError> {
        for (i, a) in rules.iter().enumerate() {
            a.check_range()?;
            for b in &rules[..i] {
                if overlap(a.guest_range(), b.guest_range()) {
                    return Err(IdMapError::Overlap(*a, *b, "guest"));
                }
                let both_map = matches!(a, IdRule::Map { .. }) && matches!(b, IdRule::Map { .. });
                if both_map && overlap(a.host_range(), b.host_range()) {
                    return Err(IdMapError::Overlap(*a, *b, "host"));
                }
            }
        }
        Ok(IdMap { rules })
    }

    /// No rules: ids pass unchanged.
    pub fn is_identity(&self) -> bool {
        self.rules.is_empty()
    }

    /// The host id of guest id `guest`, `None` if unmapped.
    pub fn to_host(&self, guest: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(guest);
        }
        let g = u64::from(guest);
        self.rules.iter().find_map(|rule| {
            let (g0, g1) = rule.guest_range();
            if !(g0..g1).contains(&g) {
                return None;
            }
            match *rule {
                IdRule::Map { host, .. } => u32::try_from(u64::from(host) + (g - g0)).ok(),
                IdRule::SquashGuest { host, .. } => Some(host),
            }
        })
    }

    /// The guest id of host id `host`, `None` if no `map` rule gives it.
    pub fn to_guest(&self, host: u32) -> Option<u32> {
        if self.is_identity() {
            return Some(host);
        }
        let h = u64::from(host);
        self.rules.iter().find_map(|rule| match *rule {
            IdRule::Map { guest, .. } => {
                let (h0, h1) = rule.host_range();
                if (h0..h1).contains(&h) {
                    u32::try_from(u64::from(guest) + (h - h0)).ok()
                } else {
                    None
                }
            }
            IdRule::SquashGuest { .. } => None,
        })
    }

    /// Who a caller with guest id `guest` acts as on the host.
    pub fn caller_to_host(&self, guest: u32) -> u32 {
        self.to_host(guest).unwrap_or(OVERFLOW_ID)
    }

    /// How host id `host` is shown to the guest.
    pub fn shown_to_guest(&self, host: u32) -> u32 {
        self.to_guest(host).unwrap_or(OVERFLOW_ID)
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_identity() {
            return f.write_str("unchanged");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            write!(f, "{}{rule}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

/// User and group id translation together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMaps {
    /// User ids.
    pub uid: IdMap,
    /// Group ids.
    pub gid: IdMap,
}

impl IdMaps {
    /// Neither kind is translated.
    pub fn is_identity(&self) -> bool {
        self.uid.is_identity() && self.gid.is_identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> IdRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn map(rules: &[&str]) -> IdMap {
        IdMap::new(rules.iter().map(|s| rule(s)).collect()).unwrap()
    }

    #[test]
    fn rules_parse_in_virtiofsds_syntax_and_print_back() {
        assert_eq!(
            rule("map:0:1000:1"),
            IdRule::Map {
                guest: 0,
                host: 1000,
                count: 1
            }
        );
        assert_eq!(
            rule("squash-guest:1:65535:65534"),
            IdRule::SquashGuest {
                guest: 1,
                count: 65535,
                host: 65534
            }
        );
        for s in ["map:0:100000:65536", "squash-guest:0:4294967295:1000"] {
            assert_eq!(rule(s).to_string(), s);
        }
        for bad in [
            "",
            "map",
            "map:0:1000",
            "map:0:1000:1:2",
            "map:-1:1000:1",
            "map:0:x:1",
            "map:0:1000:",
            "host:0:1000:1",
            "MAP:0:1000:1",
            "map:0:1000:0",
            // Reaching 4294967295, chown's "no change".
            "map:4294967295:0:1",
            "map:0:4294967295:1",
            "map:4294967294:0:2",
            "map:0:4294967290:10",
            "squash-guest:0:1:4294967295",
            "squash-guest:1:4294967295:7",
        ] {
            assert!(bad.parse::<IdRule>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn overlapping_rules_are_refused() {
        let new = |rules: &[&str]| IdMap::new(rules.iter().map(|s| rule(s)).collect());
        assert!(matches!(
            new(&["map:0:1000:10", "map:9:5000:1"]),
            Err(IdMapError::Overlap(_, _, "guest"))
        ));
        assert!(matches!(
            new(&["map:0:1000:10", "map:100:1009:1"]),
            Err(IdMapError::Overlap(_, _, "host"))
        ));
        assert!(matches!(
            new(&["squash-guest:0:100:7", "map:50:9000:1"]),
            Err(IdMapError::Overlap(_, _, "guest"))
        ));
        // Squashing onto a host id a map also gives is fine: only the map
        // decides the way back.
        assert!(new(&["map:0:1000:1", "squash-guest:1:99:1000"]).is_ok());
        assert!(new(&["map:0:1000:10", "map:10:1010:10"]).is_ok());
    }

    #[test]
    fn ids_translate_both_ways_and_unmapped_ones_become_the_overflow_id() {
        let m = map(&["map:0:1000:1", "map:1000:100000:10", "squash-guest:5000:100:2000"]);
        assert_eq!(m.to_host(0), Some(1000));
        assert_eq!(m.to_host(1009), Some(100009));
        assert_eq!(m.to_host(1010), None);
        assert_eq!(m.to_host(5099), Some(2000));
        assert_eq!(m.to_host(5100), None);
        assert_eq!(m.caller_to_host(7), OVERFLOW_ID);
        assert_eq!(m.caller_to_host(5001), 2000);
        assert_eq!(m.to_guest(1000), Some(0));
        assert_eq!(m.to_guest(100005), Some(1005));
        // Host root is nobody the guest knows; nor is the squash target.
        assert_eq!(m.to_guest(0), None);
        assert_eq!(m.to_guest(2000), None);
        assert_eq!(m.shown_to_guest(0), OVERFLOW_ID);
        assert_eq!(m.shown_to_guest(4242), OVERFLOW_ID);
    }

    #[test]
    fn no_rules_is_the_identity() {
        let m = IdMap::default();
        assert!(m.is_identity());
        for id in [0, 1000, OVERFLOW_ID, u32::MAX - 1] {
            assert_eq!((m.to_host(id), m.to_guest(id)), (Some(id), Some(id)));
        }
        assert!(IdMaps::default().is_identity());
    }

    #[test]
    fn a_range_ending_at_the_last_id_translates_without_overflow() {
        let m = map(&["map:4294967200:0:94"]);
        assert_eq!(m.to_host(4294967293), Some(93));
        assert_eq!(m.to_guest(93), Some(4294967293));
        assert_eq!(m.to_host(u32::MAX), None);
    }
}
