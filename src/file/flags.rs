//! [`LockFlags`]: the bit flags of Python portalocker, with the same values.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use crate::error::{Error, Result};

/// Lock flags with Python portalocker's (and `flock(2)`'s) numeric values:
/// `SHARED` = 1, `EXCLUSIVE` = 2, `NON_BLOCKING` = 4, `UNBLOCK` = 8.
///
/// Combine them with `|`. The valid sets for [`lock`](crate::lock) are
/// `EXCLUSIVE`, `SHARED`, either of them with `NON_BLOCKING`, and `UNBLOCK`
/// alone (unlock). Any other set is rejected with
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) before the
/// OS is asked for anything: both `SHARED` and `EXCLUSIVE`, no lock type
/// (e.g. `NON_BLOCKING` alone, or no bits), or `UNBLOCK` together with a
/// lock bit.
///
/// The lock types ([`Lock`](crate::Lock), [`RLock`](crate::RLock),
/// `RedisLock`) take `SHARED` or `EXCLUSIVE`, with or without
/// `NON_BLOCKING`, and always lock without blocking a thread: there
/// `NON_BLOCKING` is implied, and `timeout` / `fail_when_locked` decide
/// whether to wait (see [`NON_BLOCKING`](Self::NON_BLOCKING)).
///
/// # Examples
///
/// ```
/// use portalocker::LockFlags;
///
/// let flags = LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING;
/// assert_eq!(flags.bits(), 6);
/// assert!(flags.contains(LockFlags::NON_BLOCKING));
/// assert_eq!(LockFlags::from_bits(6), Some(flags));
/// assert_eq!(LockFlags::from_bits(16), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LockFlags(u8);

impl LockFlags {
    /// A shared (reader) lock: any number of shared holders at once.
    #[doc(alias = "LOCK_SH")]
    pub const SHARED: Self = Self(1);
    /// An exclusive (writer) lock: one holder, no shared holders.
    #[doc(alias = "LOCK_EX")]
    pub const EXCLUSIVE: Self = Self(2);
    /// Never block a thread on the lock.
    ///
    /// One rule for every type: with the low-level [`lock`](crate::lock)
    /// it means *fail at once* when the lock is busy (without it, `lock`
    /// waits inside the kernel). The lock types ([`Lock`](crate::Lock),
    /// [`RLock`](crate::RLock), `RedisLock`) never block a thread, so there
    /// it is implied and may be included or left out: whether they *wait*
    /// is decided by their `timeout` and `fail_when_locked`, as in Python,
    /// whose default flags are `EXCLUSIVE | NON_BLOCKING` with a 5 s
    /// timeout.
    #[doc(alias = "LOCK_NB")]
    pub const NON_BLOCKING: Self = Self(4);
    /// Unlock. Only valid on its own, with the low-level [`lock`](crate::lock).
    #[doc(alias = "LOCK_UN")]
    pub const UNBLOCK: Self = Self(8);

    const ALL: u8 = 1 | 2 | 4 | 8;

    /// The numeric value, as in Python and `flock(2)`.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from a numeric value; `None` if unknown bits are set.
    ///
    /// The result may still be an invalid combination (e.g. `3`); that is
    /// reported when the flags are used.
    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits & !Self::ALL == 0).then_some(Self(bits))
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// What these flags ask for, or why they are invalid.
    pub(crate) fn operation(self) -> Result<Operation> {
        let shared = self.contains(Self::SHARED);
        let exclusive = self.contains(Self::EXCLUSIVE);
        let non_blocking = self.contains(Self::NON_BLOCKING);
        if self.contains(Self::UNBLOCK) {
            if shared || exclusive || non_blocking {
                return Err(Error::invalid(
                    "invalid lock flags",
                    format!("{self:?}: UNBLOCK cannot be combined with other flags"),
                ));
            }
            return Ok(Operation::Unlock);
        }
        let mode = match (shared, exclusive) {
            (true, true) => {
                return Err(Error::invalid(
                    "invalid lock flags",
                    format!("{self:?}: exactly one of SHARED and EXCLUSIVE is allowed"),
                ))
            }
            (false, false) => {
                return Err(Error::invalid(
                    "invalid lock flags",
                    format!("{self:?}: one of SHARED or EXCLUSIVE is required"),
                ))
            }
            (true, false) => Mode::Shared,
            (false, true) => Mode::Exclusive,
        };
        Ok(Operation::Lock { mode, non_blocking })
    }
}

/// Shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Lock { mode: Mode, non_blocking: bool },
    Unlock,
}

/// `LOCK_SH`: the Python alias of [`LockFlags::SHARED`].
pub const LOCK_SH: LockFlags = LockFlags::SHARED;
/// `LOCK_EX`: the Python alias of [`LockFlags::EXCLUSIVE`].
pub const LOCK_EX: LockFlags = LockFlags::EXCLUSIVE;
/// `LOCK_NB`: the Python alias of [`LockFlags::NON_BLOCKING`].
pub const LOCK_NB: LockFlags = LockFlags::NON_BLOCKING;
/// `LOCK_UN`: the Python alias of [`LockFlags::UNBLOCK`].
pub const LOCK_UN: LockFlags = LockFlags::UNBLOCK;

impl BitOr for LockFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for LockFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for LockFlags {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for LockFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::SHARED, "SHARED"),
            (Self::EXCLUSIVE, "EXCLUSIVE"),
            (Self::NON_BLOCKING, "NON_BLOCKING"),
            (Self::UNBLOCK, "UNBLOCK"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("(empty)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_python() {
        assert_eq!(LockFlags::SHARED.bits(), 1);
        assert_eq!(LockFlags::EXCLUSIVE.bits(), 2);
        assert_eq!(LockFlags::NON_BLOCKING.bits(), 4);
        assert_eq!(LockFlags::UNBLOCK.bits(), 8);
        assert_eq!(LOCK_SH, LockFlags::SHARED);
        assert_eq!(LOCK_EX, LockFlags::EXCLUSIVE);
        assert_eq!(LOCK_NB, LockFlags::NON_BLOCKING);
        assert_eq!(LOCK_UN, LockFlags::UNBLOCK);
    }

    #[test]
    fn every_combination_is_classified() {
        for bits in 0u8..16 {
            let flags = LockFlags::from_bits(bits).unwrap();
            let op = flags.operation();
            let sh = bits & 1 != 0;
            let ex = bits & 2 != 0;
            let nb = bits & 4 != 0;
            let un = bits & 8 != 0;
            let valid = if un { bits == 8 } else { sh != ex };
            assert_eq!(op.is_ok(), valid, "bits {bits}: {op:?}");
            match op {
                Ok(Operation::Unlock) => assert_eq!(bits, 8),
                Ok(Operation::Lock { mode, non_blocking }) => {
                    assert_eq!(mode == Mode::Shared, sh);
                    assert_eq!(non_blocking, nb);
                }
                Err(e) => assert_eq!(e.kind(), crate::ErrorKind::InvalidInput),
            }
        }
        assert!(LockFlags::from_bits(16).is_none());
    }

    #[test]
    fn debug_lists_names() {
        let f = LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING;
        assert_eq!(format!("{f:?}"), "EXCLUSIVE | NON_BLOCKING");
        assert_eq!(format!("{:?}", LockFlags::default()), "(empty)");
        assert_eq!(f & LockFlags::EXCLUSIVE, LockFlags::EXCLUSIVE);
        let mut g = LockFlags::SHARED;
        g |= LockFlags::NON_BLOCKING;
        assert_eq!(g.bits(), 5);
    }
}
