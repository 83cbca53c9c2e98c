//! The file-lock core: everything between a `Lock` (and the other file
//! primitives built on it) and the OS.
//!
//! * `engine.rs` — the per-file state (`Engine`): options, the cached
//!   descriptor, the acquisition's fast path and the release path.
//! * `wait.rs` — the rest of an acquisition (`Engine::acquire`): the wait
//!   loop over a `Contender` (a lock file, or a semaphore's sweep), and the
//!   lock file's contender: the waiter's half of the handoff
//!   (announcement, doorbell, deference).
//! * `gate.rs` — this process's FIFO per file and the holder's half of the
//!   cross-process handoff.
//! * `wake.rs` — wake-ups: releases in this process, and (Linux) inotify
//!   when another process closes the file.
//! * `raw.rs` — the synchronous layer: `lock` / `unlock`, hardened opens,
//!   the file identity check.
//! * `flags.rs` — `LockFlags` and their validation.
//! * `holder.rs` — who holds a lock file (`Holder`).
//!
//! How waiting works, as users see it, is told once: in `Lock`'s docs.

pub(crate) mod engine;
pub(crate) mod flags;
pub(crate) mod gate;
pub(crate) mod holder;
pub(crate) mod raw;
pub(crate) mod wait;
pub(crate) mod wake;
