//! Async-first cross-process locks for Tokio, compatible with Python's
//! [portalocker](https://pypi.org/project/portalocker/).
//!
//! | Primitive | Use it for |
//! | --- | --- |
//! | [`Lock`] | one holder at a time across processes, with a timeout |
//! | [`RLock`] | the same, re-entrant for one owner (nested acquisitions) |
//! | [`TemporaryFileLock`] | a lock whose file exists only while it is held |
//! | [`PidFileLock`] | single-instance daemons: the loser learns the winner's pid |
//! | [`BoundedSemaphore`], [`NamedBoundedSemaphore`] | at most N holders across processes (N slot files) |
//! | [`open_atomic`], [`AtomicOptions`] | write a file so it appears complete or not at all |
//! | [`lock`] / [`unlock`] | the raw, synchronous `flock` on a file you opened |
//! | `RedisLock` (feature `redis`) | a lock shared by processes on many hosts, through one Redis server (or the primary Sentinel names); Python portalocker's protocol |
//! | `RedisClusterLock` (feature `redis-cluster`) | the same on a Redis Cluster: a replicated lease record, this crate's own protocol |
//! | `EtcdLock` (feature `etcd`) | a lock kept by an etcd cluster: first come, first served, readers and writers |
//! | [`LeaseLock`] | a lock on a filesystem shared between hosts (NFS, SMB, FUSE), where `flock` does not exclude |
//!
//! Every lock here is an advisory `flock(2)` lock, the one Python
//! portalocker takes, so Rust and Python processes exclude each other on
//! the same file.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use portalocker::Lock;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> portalocker::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.lock");
//! let lock = Lock::new(&path).timeout(Duration::from_secs(2));
//!
//! tokio::select! {
//!     guard = lock.acquire() => {
//!         let guard = guard?;
//!         // ... critical section: no other process holds the lock ...
//!         guard.release().await?;
//!     }
//!     _ = tokio::time::sleep(Duration::from_secs(1)) => {
//!         // Cancelled: nothing is left locked or open.
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Configuring a lock
//!
//! Every lock type is a cheap description built with setters in the style
//! of [`tokio::fs::OpenOptions`]: `timeout`, `check_interval` and
//! `fail_when_locked` exist on each, with the same meaning. The rule for
//! every setter of every type: it consumes the value and returns a **new,
//! independent** one. The new value shares no cached state with the old
//! one (no kept descriptor, no connection it opened, no
//! [`RLock`] hold count) and is a new owner: it contends with guards of the
//! value it was made from, as another `new` of the same path would. What
//! you handed in (a path, a Redis connection or URL) carries over. So
//! configure first, then acquire, and clone a configured value to share it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> portalocker::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::time::Duration;
//! use portalocker::RLock;
//!
//! let a = RLock::new(dir.path().join("db.lock"));
//! let held = a.acquire().await?;
//! // A changed copy is another owner: it does not re-enter `a`'s hold.
//! let b = a.clone().timeout(Duration::ZERO);
//! assert!(b.acquire().await.unwrap_err().is_already_locked());
//! drop(held);
//! # Ok(()) }
//! ```
//!
//! # Cancel safety
//!
//! Every primitive has `acquire()`, `try_acquire()` (one attempt, never
//! waits) and `acquire_timeout(d)` (this call's timeout, same owner); the
//! three share one code path and one row below.
//!
//! | Future | Cancel safe | Dropping it leaves |
//! | --- | --- | --- |
//! | [`Lock::acquire`], [`Lock::try_acquire`] | yes | no lock; its descriptor closed |
//! | [`RLock::acquire`] | yes | no lock, the count unchanged |
//! | [`TemporaryFileLock::acquire`] | yes | no lock; at most an empty, unlocked lock file |
//! | [`PidFileLock::acquire`] | yes | no lock once an in-flight pid write finishes and is rolled back |
//! | [`PidFileLock::read_pid`] | yes | nothing |
//! | [`BoundedSemaphore::acquire`] | yes | no slot held |
//! | [`open_atomic`], [`AtomicFile::discard`] | yes | nothing at the destination, no temporary file |
//! | [`AtomicFile::commit`] | yes | the destination absent or complete, never partial |
//! | `RedisLock::acquire` | yes | no subscriber, no connection, no task |
//! | `RedisLockGuard::lost` | yes | nothing |
//! | `RedisClusterLock::acquire` | yes | no record (one written is deleted by a task of its own) |
//! | `EtcdLock::acquire` | yes | no key, no lease |
//! | [`LeaseLock::acquire`] | yes | no claim file |
//! | `lost()` of the Redis Cluster, etcd and lease guards | yes | nothing |
//! | every guard's `release()` | yes | the lock released as on drop |
//!
//! Waiting never blocks a runtime thread: each attempt is a non-blocking
//! `flock`, the pauses are [`tokio::time`] sleeps, and only opening a file
//! runs on the blocking pool.
//!
//! # Platform notes
//!
//! * **Advisory only.** A process that does not lock can still read and
//!   write the file. Anyone who can open the lock file can take the lock,
//!   so its permissions are part of its safety.
//! * **`flock` semantics.** The lock belongs to the open file description:
//!   two opens of one path conflict even in one process. It is released on
//!   unlock, or when the last descriptor closes, including at process
//!   death (`kill -9` frees it). Files are opened close-on-exec, so a child
//!   started with `exec` never inherits a lock.
//! * **NFS, SMB, FUSE.** `flock` there is emulated or local-only; this
//!   crate promises nothing for `Lock` on network filesystems:
//!   [`filesystem_of`] tells what a path is on, and [`LeaseLock`] is the
//!   lock for such a filesystem.
//! * **Linux, macOS, the BSDs.** Locks are `flock(2)` through std's
//!   `File::lock` family. Only Linux has unnamed temporary files (atomic
//!   writes and pid files elsewhere use a named `.tmp` file in the same
//!   directory, which a process killed mid-write leaves behind) and
//!   inotify (elsewhere a waiter in another process than the holder polls
//!   every `check_interval`; waiters in one process are woken at once
//!   everywhere).
//! * **Windows.** Locks are `LockFileEx` over the whole file: *mandatory*
//!   while held — other handles cannot read or write the locked file, so
//!   read it through the guard. Lock files are opened with every share
//!   mode (so a `TemporaryFileLock` can delete its file while it is open)
//!   and without following symlinks or junctions, which are refused as "not
//!   a regular file". Unix permission bits do not apply (files get the
//!   directory's ACL); there is no directory `fsync`, and no inotify.
//!   Python portalocker on Windows locks a byte range from offset 0
//!   (64 KiB with `msvcrt.locking`, `0xFFFF0000` bytes with `LockFileEx`);
//!   ours covers the whole file, so the ranges overlap and the two exclude
//!   each other — by construction, not yet by a test (CI runs Windows
//!   binaries under Wine, without a Windows Python).
//!
//! # Differences from portalocker
//!
//! * Guards own locks: dropping the [`Lock`] value releases nothing, and
//!   dropping a guard releases (portalocker needs an explicit `release` or
//!   a `with` block). `release().await` reports errors, like
//!   `raise_on_release_error=True`.
//! * Lock files are opened without following symlinks and never block on a
//!   FIFO; created files are never world-writable (`0o664` before umask).
//! * The retry pauses are jittered and the last attempt is made at the
//!   deadline; a zero timeout makes exactly one attempt, as in Python.
//! * Waiting is fair: tasks of one process are served FIFO and woken at
//!   once; waiting processes are handed the lock within about a
//!   millisecond instead of polling (see [`Lock`], *How waiting works*).
//! * [`LockFlags::UNBLOCK`] alone unlocks in [`lock`] (as `flock(2)` and the
//!   2.x API); Python 4.2+ rejects it.
//! * [`PidFileLock`] is fail-closed only: contention is an error carrying
//!   [`Error::holder_pid`], never a block that runs without the lock.
//! * Delete-on-release locks remove only the file they hold, and only a
//!   guard removes anything; there is no exit hook (guards release on
//!   drop, unwinding included).
//! * [`open_atomic`] `fsync`s the directory after publishing (Python does
//!   not), uses an unnamed `O_TMPFILE` where it can (no litter after a
//!   crash), never follows a symlink, and can also replace atomically
//!   ([`AtomicOptions::replace`]) or skip `fsync`s ([`Durability`]).
//! * `FileToLarge` does not exist: it was never raised.
//!
//! # Feature flags
//!
//! * `redis`: `RedisLock` and `RedisLockGuard`, the distributed lock of
//!   Python portalocker 4.4.2 (same wire protocol: Rust and Python holders
//!   share a channel), and a re-export of [`redis`](https://docs.rs/redis)
//!   (redis-rs 1.x).
//! * `redis-tls`: `rediss://` servers for [`RedisLock`] (implies `redis`):
//!   redis-rs's rustls backend with the `ring` provider; certificates and
//!   a CA are given to redis-rs (`redis::Client::build_with_tls`), and
//!   `#insecure` at the end of the URL skips verification. Over TLS the
//!   lock's subscription connection speaks RESP3 (Redis ≥ 6).
//! * `redis-cluster`: `RedisClusterLock` and `RedisClusterLockGuard`, a
//!   lock kept by a Redis Cluster (a replicated lease record in the slot
//!   of the lock's name; this crate's own protocol, which Python peers
//!   cannot join), through redis-rs's cluster client (implies `redis`).
//! * `etcd`: `EtcdLock`, `EtcdLockGuard` and `EtcdHolder`, a lock kept by
//!   an etcd cluster (leases, first-come-first-served waiting by watch,
//!   the key's create revision as fencing token), and a re-export of
//!   [`etcd_client`](https://docs.rs/etcd-client). Building it needs
//!   `protoc` (or `PROTOC` naming one). With `tracing`, each acquisition
//!   runs in an `acquire` span (the lock's name, mode, timeout) with a
//!   `granted` (holder id, key, token, time waited) or `not acquired`
//!   event, and a loss is an `ERROR` event.
//! * `tracing`: [`tracing`](https://docs.rs/tracing) spans and events, at
//!   `DEBUG` level. Every `acquire` (and `try_acquire`, `acquire_timeout`)
//!   of a lock, semaphore or Redis lock runs in an `acquire` span with the
//!   path (or the semaphore's name and directory, or the channel), the
//!   mode and the timeout; inside it, `granted` (time queued behind this
//!   process's other tasks, time waited, attempts, whether a holder in
//!   another process was asked to hand over; for Redis the holder id and
//!   fencing token; for a semaphore the slot), `granted at once` (the fast
//!   path) or `not acquired` (the error, and the holder's pid when the OS
//!   named it). A release that hands the lock to another process logs
//!   `released: handed over to a waiting process`; a reaped silent Redis
//!   holder and a lost Redis lock are `WARN`/`ERROR` events. Without the
//!   feature none of this is compiled, and the crate's few warnings go to
//!   [`log`](https://docs.rs/log) instead. (With it, while no `tracing`
//!   subscriber is installed, the events reach a `log` logger.)
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), deny(clippy::panic))]
#![doc(test(attr(deny(warnings))))]

#[macro_use]
mod trace;

mod atomic;
mod deadline;
mod error;
mod file;
mod filesystem;
mod lease_lock;
mod lock;
mod loss;
mod options;
mod pidfile;
mod rlock;
mod semaphore;
mod sys;
mod temporary;
mod util;

pub use atomic::{open_atomic, AtomicFile, AtomicOptions, Durability, PublishError};
pub use error::{Error, ErrorKind, Result};
pub use file::flags::{LockFlags, LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN};
pub use file::holder::Holder;
pub use file::raw::{lock, unlock};
pub use filesystem::{filesystem_of, Filesystem, FilesystemKind};
pub use lease_lock::{LeaseHolder, LeaseLock, LeaseLockGuard};
pub use lock::{Lock, LockGuard, DEFAULT_CHECK_INTERVAL, DEFAULT_TIMEOUT};
pub use loss::HeldLock;
pub use pidfile::{PidFileLock, PidFileLockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{
    BoundedSemaphore, BoundedSemaphorePermit, NamedBoundedSemaphore, SemaphorePermit, MAX_SLOTS,
};
pub use temporary::{TemporaryFileLock, TemporaryFileLockGuard};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis_lock;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_lock::{
    FenceReplicas, RedisHolder, RedisLock, RedisLockGuard, DEFAULT_UNAVAILABLE_TIMEOUT,
    MAX_CHANNEL_LEN,
};

/// redis-rs, re-exported so that users name the same `redis::Client`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;

#[cfg(feature = "redis-cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
mod redis_cluster;
#[cfg(feature = "redis-cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
pub use redis_cluster::{RedisClusterLock, RedisClusterLockGuard, DEFAULT_CLUSTER_LEASE_TTL};

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
mod etcd_lock;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd_lock::{EtcdHolder, EtcdLock, EtcdLockGuard, DEFAULT_LEASE_TTL};

/// etcd-client, re-exported so that users name the same `etcd_client::Client`.
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd_client;

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
