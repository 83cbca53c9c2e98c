//! The decision rules on a probe's holders: joining, election, forfeit,
//! the resolution of one probe, and the verdict of a promotion's
//! confirmation.

use super::{Holder, HolderMode};

/// Who this lock is, for the decisions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Me<'a> {
    pub(crate) id: &'a str,
    pub(crate) writer: bool,
    /// `writer_elected`: this writer already won an election.
    pub(crate) elected: bool,
}

fn others<'a>(me: &'a Me<'_>, holders: &'a [Holder]) -> impl Iterator<Item = &'a Holder> {
    holders.iter().filter(move |h| h.id != me.id)
}

/// Joining: a reader may join only pure readers.
pub(crate) fn compatible(me: &Me<'_>, holders: &[Holder]) -> bool {
    !me.writer && holders.iter().all(|h| h.mode == HolderMode::Shared)
}

/// Election: a fresh writer is elected if nobody is exclusive, no other
/// holder advertises an election, and it has the lowest pending id.
pub(crate) fn wins_election(me: &Me<'_>, holders: &[Holder]) -> bool {
    if holders.iter().any(|h| h.mode == HolderMode::Exclusive) {
        return false;
    }
    if others(me, holders).any(|h| h.elected == Some(true)) {
        return false;
    }
    holders
        .iter()
        .filter(|h| h.mode == HolderMode::Pending)
        .map(|h| h.id.as_str())
        .min()
        == Some(me.id)
}

/// Forfeit: an incumbent forfeits to an exclusive holder, to a lower-id
/// incumbent, or to a lower-id pre-4.2 pending writer.
pub(crate) fn must_forfeit(me: &Me<'_>, holders: &[Holder]) -> bool {
    others(me, holders).any(|h| {
        h.mode == HolderMode::Exclusive
            || (h.elected == Some(true) && h.id.as_str() < me.id)
            || (h.mode == HolderMode::Pending && h.elected.is_none() && h.id.as_str() < me.id)
    })
}

/// What one probe result means for this lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Held as is (a reader joining readers).
    Held,
    /// A writer promotes to exclusive; `elect` sets `writer_elected`.
    Promote { elect: bool },
    /// Keep the subscription and try again; `elect` sets `writer_elected`.
    Retry { elect: bool },
    /// Leave: drop the subscription (and the election).
    GiveUp { conclusive: bool },
    /// `fail_when_locked` with readers present after a fresh election win:
    /// leave without advertising the election, and fail.
    FailFast,
}

/// The decision for a probe result (`None` = inconclusive).
pub(crate) fn resolve(me: &Me<'_>, probe: Option<&[Holder]>, fail_when_locked: bool) -> Resolution {
    let Some(holders) = probe else {
        return if me.writer && me.elected {
            Resolution::Retry { elect: false }
        } else {
            Resolution::GiveUp { conclusive: false }
        };
    };
    if compatible(me, holders) {
        return Resolution::Held;
    }
    if !me.writer {
        return Resolution::GiveUp { conclusive: true };
    }
    let shared_present = others(me, holders).any(|h| h.mode == HolderMode::Shared);
    if me.elected {
        if must_forfeit(me, holders) {
            return Resolution::GiveUp { conclusive: true };
        }
        if shared_present {
            return Resolution::Retry { elect: false };
        }
        let hold_off = others(me, holders).any(|h| {
            h.mode == HolderMode::Pending && h.elected == Some(false) && h.id.as_str() < me.id
        });
        if hold_off {
            return Resolution::Retry { elect: false };
        }
        return Resolution::Promote { elect: false };
    }
    if !wins_election(me, holders) {
        return Resolution::GiveUp { conclusive: true };
    }
    if !shared_present {
        return Resolution::Promote { elect: true };
    }
    if fail_when_locked {
        return Resolution::FailFast;
    }
    Resolution::Retry { elect: true }
}

/// The verdict of one conclusive confirm probe after a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Confirmed,
    Demote,
    Retry,
}

/// Confirmation: demote beats retry; otherwise confirmed.
pub(crate) fn confirm_verdict(me_id: &str, holders: &[Holder]) -> Verdict {
    let mut retry = false;
    for h in holders.iter().filter(|h| h.id != me_id) {
        let lower = h.id.as_str() < me_id;
        match h.mode {
            HolderMode::Shared => return Verdict::Demote,
            HolderMode::Exclusive if h.legacy || h.elected.is_none() || lower => {
                return Verdict::Demote
            }
            HolderMode::Exclusive => {}
            HolderMode::Pending if !lower => {}
            HolderMode::Pending if h.elected.is_none() => return Verdict::Demote,
            HolderMode::Pending => retry = true,
        }
    }
    if retry {
        Verdict::Retry
    } else {
        Verdict::Confirmed
    }
}
