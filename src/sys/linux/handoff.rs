//! The cross-process handoff's half in the platform layer (Linux): the
//! waiters' announcements (open-file-description byte locks on the lock
//! file), their keys, each process's doorbell (an abstract Unix datagram
//! socket and its reader thread) and the rings that wake one waiter, and a
//! semaphore's wait queue, which uses the same byte locks and doorbells.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

// --- the cross-process handoff's announcements ---------------------------
//
// A waiter announces itself by holding a shared open-file-description lock
// on one byte of the lock file, far beyond any data a lock file holds:
// byte `ANNOUNCE_BASE + key`, where `key` ([`wait_key`]) is when it began
// to wait and which process's doorbell to ring. The kernel keeps these
// locks with the waiter's open descriptor, so they vanish when it closes it
// or dies, they change nothing on disk, and a descriptor opened only for
// reading is enough. They are independent of `flock` locks on the
// filesystems of `handoff_capable`. A holder that hands over rings the
// doorbell of the oldest announced waiter ([`ring_announced`]) and wakes
// nobody else.

/// The first announcement byte.
const ANNOUNCE_BASE: i64 = 1 << 62;
/// The span of announcement bytes.
const ANNOUNCE_SPAN: i64 = 1 << 61;
/// Keys are below 2^60: inside both the announcements' and the queue's
/// span.
const KEY_MASK: u64 = (1 << 60) - 1;

/// Whether byte-range announcements are safe on `file`'s filesystem: local
/// filesystems whose `flock` locks the kernel keeps apart from byte-range
/// locks. NFS, SMB, FUSE, Ceph and other network or cluster filesystems
/// may implement `flock` with byte-range locks, where an announcement could
/// conflict with the lock itself: anything not listed here polls instead.
pub(crate) fn handoff_capable(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|st| crate::sys::local_flock_magic(st.f_type as u64))
}

/// A new waiter's key, for an announcement or a semaphore queue place: the
/// system's monotonic clock in units of 64 µs, shifted left by 16 bits,
/// plus this process's doorbell tag (0 when it has none). Keys order
/// waiters by when they began to wait across processes, and are unique in
/// this process (a later waiter of the same unit gets the next one). They
/// fit both regions (they wrap after 35 years of uptime, keeping the tag).
pub(crate) fn wait_key() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tag = doorbell().unwrap_or(0);
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let micros = u64::try_from(i128::from(t.tv_sec) * 1_000_000 + i128::from(t.tv_nsec) / 1_000)
        .unwrap_or(0);
    let now = micros >> 6;
    let unit = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(now.max(last + 1)),
        )
        .map_or(now, |last| now.max(last + 1));
    (unit << 16 | u64::from(tag)) & KEY_MASK
}

fn byte_lock(typ: libc::c_int, start: i64, len: i64) -> libc::flock {
    // `l_pid` must be 0 for open-file-description locks.
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// Announces the waiter `key` (from [`wait_key`]) through `file`'s
/// descriptor. `false` if the kernel refused (an old kernel without
/// open-file-description locks): then nobody is asked to hand over.
pub(crate) fn announce(file: &File, t: u64) -> bool {
    let l = byte_lock(libc::F_RDLCK, ANNOUNCE_BASE + t as i64, 1);
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&l)).is_ok()
}

/// Withdraws every announcement made through `file`'s descriptor.
pub(crate) fn withdraw(file: &File) {
    let l = byte_lock(libc::F_UNLCK, ANNOUNCE_BASE, ANNOUNCE_SPAN);
    let _ = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&l));
}

/// Whether a waiter that began before `t` (any waiter: `u64::MAX`) is
/// announced on `file`, other than through this descriptor.
pub(crate) fn announced_before(file: &File, t: u64) -> bool {
    let len = (t.min(ANNOUNCE_SPAN as u64) as i64).max(1);
    let mut l = byte_lock(libc::F_WRLCK, ANNOUNCE_BASE, len);
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut l)).is_ok()
        && l.l_type != libc::F_UNLCK as libc::c_short
}

/// The wait-start time of some waiter announced on `file` (other than
/// through this descriptor), leaving out an announcement at `skip`; `None`
/// when there is no other.
pub(crate) fn announcement_except(file: &File, skip: Option<u64>) -> Option<u64> {
    let find = |from: i64, len: i64| -> Option<u64> {
        if len <= 0 {
            return None;
        }
        let mut l = byte_lock(libc::F_WRLCK, ANNOUNCE_BASE + from, len);
        let found = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut l)).is_ok()
            && l.l_type != libc::F_UNLCK as libc::c_short;
        found.then(|| u64::try_from(l.l_start - ANNOUNCE_BASE).unwrap_or(0))
    };
    match skip.map(|s| s.min(ANNOUNCE_SPAN as u64 - 1) as i64) {
        None => find(0, ANNOUNCE_SPAN),
        Some(s) => find(0, s).or_else(|| find(s + 1, ANNOUNCE_SPAN - s - 1)),
    }
}

// --- doorbells, and a semaphore's wait queue -----------------------------
//
// Every waiter of this crate that announces itself on a lock file, or joins
// a semaphore's queue, does it with a *key* ([`wait_key`]) whose low 16
// bits are its process's *tag*, the name of its doorbell: an abstract Unix
// datagram socket, `portalocker.bell.<tag>`, read by one helper thread per
// process. A ring is a datagram naming the file and the waiter's byte
// offset on it; the reader wakes that one waiter ([`Bell`]).
//
// A semaphore waiter joins its semaphore's queue by holding a shared
// open-file-description lock on one byte of the lowest slot's file, in a
// region of its own (after the handoff's, so a slot's holder never mistakes
// it for a waiter of that slot). The kernel keeps an inode's byte locks in
// the order they were taken, so `F_OFD_GETLK` over the region finds the
// oldest waiter, and a process that frees a slot rings that one waiter's
// doorbell instead of waking every waiter of every process by closing a
// watched file.

/// The semaphore queue's region: after the handoff's, to the largest
/// offset.
const QUEUE_BASE: i64 = ANNOUNCE_BASE + ANNOUNCE_SPAN;
const QUEUE_SPAN: i64 = i64::MAX - QUEUE_BASE;

/// A ring's datagram: the file's identity and the waiter's byte offset
/// (a semaphore queue's key, or an announcement's absolute offset: the
/// regions do not overlap).
const RING_LEN: usize = 24;

/// This process's doorbell: its tag, and the process it was bound in (a
/// child after `fork` has no reader thread, so it binds none and its
/// waiters are woken as if there were no doorbells).
struct Doorbell {
    tag: u16,
    pid: u32,
}

type BellKey = (crate::sys::FileId, u64);

fn bell_waiters() -> std::sync::MutexGuard<
    'static,
    std::collections::HashMap<BellKey, std::sync::Arc<tokio::sync::Notify>>,
> {
    static WAITERS: OnceLock<
        std::sync::Mutex<std::collections::HashMap<BellKey, std::sync::Arc<tokio::sync::Notify>>>,
    > = OnceLock::new();
    crate::util::lock(WAITERS.get_or_init(Default::default))
}

fn bell_name(tag: u16) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(format!("portalocker.bell.{tag:04x}"))
}

/// This process's doorbell tag, binding the socket and starting its reader
/// on first use; `None` if that failed (every name taken, no sockets, no
/// threads) or in a child forked after it was bound.
fn doorbell() -> Option<u16> {
    static BELL: OnceLock<Option<Doorbell>> = OnceLock::new();
    let bell = BELL
        .get_or_init(|| {
            let (tag, socket) = (0..16).find_map(|_| {
                let tag = (crate::util::unguessable_u64() as u16).max(1);
                let addr = bell_name(tag).ok()?;
                Some((
                    tag,
                    std::os::unix::net::UnixDatagram::bind_addr(&addr).ok()?,
                ))
            })?;
            std::thread::Builder::new()
                .name("portalocker-bell".into())
                .spawn(move || {
                    let mut buf = [0u8; RING_LEN];
                    while let Ok(n) = socket.recv(&mut buf) {
                        if n != RING_LEN {
                            continue;
                        }
                        let word = |i: usize| {
                            u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or_default())
                        };
                        let key = (
                            crate::sys::FileId {
                                volume: word(0),
                                index: word(1),
                            },
                            word(2),
                        );
                        if let Some(n) = bell_waiters().get(&key) {
                            n.notify_one();
                        }
                    }
                })
                .ok()?;
            Some(Doorbell {
                tag,
                pid: std::process::id(),
            })
        })
        .as_ref()?;
    (bell.pid == std::process::id()).then_some(bell.tag)
}

/// Opens the queue file at `path` (the lowest slot's) for reading, with its
/// identity: `None` unless it is a regular file on a filesystem whose
/// byte locks are kept apart from `flock` (see [`handoff_capable`]).
pub(crate) fn open_queue(path: &Path) -> Option<(File, crate::sys::FileId)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let id = crate::sys::regular_file_id(&file).ok()??;
    handoff_capable(&file).then_some((file, id))
}

/// A waiter's registration with this process's doorbell: a ring for its
/// file and byte offset wakes it (`notify_one`). Unregisters on drop.
#[derive(Debug)]
pub(crate) struct Bell {
    key: BellKey,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl Bell {
    fn register(key: BellKey) -> Self {
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        bell_waiters().insert(key, notify.clone());
        Self { key, notify }
    }

    /// Registers the waiter announced with `key` on the file `file`, so a
    /// holder that hands it the lock can wake it alone; `None` when the
    /// key names no doorbell of this process.
    pub(crate) fn announced(file: crate::sys::FileId, key: u64) -> Option<Self> {
        let tag = doorbell()?;
        (key & 0xFFFF == u64::from(tag)).then(|| Self::register((file, announce_offset(key))))
    }

    /// Fired (`notify_one`) when this waiter's doorbell rings.
    pub(crate) fn notifier(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.notify.clone()
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        let mut waiters = bell_waiters();
        if waiters
            .get(&self.key)
            .is_some_and(|n| std::sync::Arc::ptr_eq(n, &self.notify))
        {
            waiters.remove(&self.key);
        }
    }
}

/// The absolute byte offset of the announcement `key`: what its doorbell
/// registration and a ring for it name.
fn announce_offset(key: u64) -> u64 {
    ANNOUNCE_BASE as u64 + key
}

/// A waiter's place in a semaphore's queue: the byte lock on its own
/// descriptor of the queue file, and its doorbell registration. Dropping
/// it closes the descriptor, which leaves the queue.
#[derive(Debug)]
pub(crate) struct QueuePlace {
    file: File,
    key: u64,
    bell: Bell,
}

impl QueuePlace {
    /// Joins the queue of the file `queue`, through `file`: a descriptor of
    /// it opened for this waiter alone. `None` where there are no
    /// doorbells or no byte locks.
    pub(crate) fn join(file: File, queue: crate::sys::FileId) -> Option<Self> {
        doorbell()?;
        let key = wait_key();
        let l = byte_lock(libc::F_RDLCK, QUEUE_BASE + key as i64, 1);
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLK(&l)).ok()?;
        Some(Self {
            file,
            key,
            bell: Bell::register((queue, key)),
        })
    }

    /// Fired (`notify_one`) when this waiter's doorbell rings.
    pub(crate) fn notifier(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.bell.notifier()
    }

    /// Whether no waiter that joined earlier is still in the queue.
    pub(crate) fn is_first(&self) -> bool {
        queue_find(&self.file, 0, self.key).is_none()
    }
}

/// The key of some waiter in the queue on `file` (other than through this
/// descriptor) in `[from, to)`; the kernel lists byte locks in the order
/// they were taken, so over the whole queue it is the oldest.
fn queue_find(file: &File, from: u64, to: u64) -> Option<u64> {
    let to = to.min(QUEUE_SPAN as u64);
    if from >= to {
        return None;
    }
    let mut l = byte_lock(libc::F_WRLCK, QUEUE_BASE + from as i64, (to - from) as i64);
    let found = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut l)).is_ok()
        && l.l_type != libc::F_UNLCK as libc::c_short;
    found.then(|| u64::try_from(l.l_start - QUEUE_BASE).unwrap_or(0))
}

/// Sends one ring: wakes the waiter at byte `offset` of the file `file`,
/// in the process whose doorbell tag is the offset's low 16 bits. `false`
/// when it could not be sent (no such doorbell: its process is gone or in
/// another network namespace; a stopped process with a full buffer).
fn ring(file: crate::sys::FileId, offset: u64) -> bool {
    static SENDER: OnceLock<Option<std::os::unix::net::UnixDatagram>> = OnceLock::new();
    let Some(sender) = SENDER
        .get_or_init(|| {
            let s = std::os::unix::net::UnixDatagram::unbound().ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        })
        .as_ref()
    else {
        return false;
    };
    let mut msg = [0u8; RING_LEN];
    msg[..8].copy_from_slice(&file.volume.to_le_bytes());
    msg[8..16].copy_from_slice(&file.index.to_le_bytes());
    msg[16..].copy_from_slice(&offset.to_le_bytes());
    let tag = (offset & 0xFFFF) as u16;
    bell_name(tag).is_ok_and(|addr| sender.send_to_addr(&msg, &addr).is_ok())
}

/// Rings the doorbell of the waiter announced with `key` on the file
/// `file` (found by [`announcement_except`]); `false` if it has none or the
/// ring could not be sent: then the holder wakes every waiter instead.
pub(crate) fn ring_announced(file: crate::sys::FileId, key: u64) -> bool {
    key & 0xFFFF != 0 && ring(file, announce_offset(key))
}

/// Rings the doorbells of the `n` oldest waiters in the queue of the file
/// `queue`, looked up through `file` (a descriptor that is in no queue). A
/// waiter whose doorbell cannot be rung (its process is gone, in another
/// network namespace, or stopped with a full socket buffer) is passed over
/// for the next, a few times. Returns how many were rung.
pub(crate) fn queue_ring(file: &File, queue: crate::sys::FileId, n: usize) -> usize {
    let (mut after, mut rung) = (0, 0);
    for _ in 0..n + 3 {
        let Some(key) = queue_find(file, after, u64::MAX) else {
            break;
        };
        if ring(queue, key) {
            rung += 1;
            if rung == n {
                break;
            }
        }
        after = key + 1;
    }
    rung
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::Duration;

    #[test]
    fn only_local_filesystems_take_announcements() {
        for local in [0xEF53, 0x0102_1994, 0x5846_5342, 0x9123_683E, 0x794C_7630] {
            assert!(crate::sys::local_flock_magic(local), "{local:#x}");
        }
        // NFS, SMB2, CIFS, FUSE, Ceph, 9p, an unknown filesystem.
        for remote in [
            0x6969,
            0xFE53_4D42,
            0xFF53_4D42,
            0x6573_5546,
            0x00C3_6400,
            0x0102_1997,
            0x1234_5678,
        ] {
            assert!(!crate::sys::local_flock_magic(remote), "{remote:#x}");
        }
    }

    /// Announcements are byte locks of one descriptor: others see them
    /// (ordered by time), the announcer does not, `flock` ignores them,
    /// and they vanish with a withdrawal or the descriptor.
    #[test]
    fn announcements_are_seen_by_others_and_vanish_on_close() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.lock");
        std::fs::write(&path, b"").unwrap();
        let waiter = File::open(&path).unwrap();
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert!(
            super::handoff_capable(&holder),
            "the test directory is on a local filesystem"
        );
        assert!(!super::announced_before(&holder, u64::MAX));
        assert!(super::announce(&waiter, 100));
        assert!(super::announced_before(&holder, u64::MAX));
        assert!(super::announced_before(&holder, 101), "older than 101");
        assert!(
            !super::announced_before(&holder, 100),
            "not older than itself"
        );
        assert!(
            !super::announced_before(&waiter, u64::MAX),
            "own announcement"
        );
        // Independent of flock: the holder locks, the waiter still cannot.
        holder.try_lock().unwrap();
        assert!(waiter.try_lock().is_err());
        holder.unlock().unwrap();
        super::withdraw(&waiter);
        assert!(!super::announced_before(&holder, u64::MAX));
        assert!(super::announce(&waiter, 7));
        drop(waiter);
        assert!(
            !super::announced_before(&holder, u64::MAX),
            "gone with the descriptor"
        );
        // A second waiter's announcement coexists with a first one.
        let (a, b) = (File::open(&path).unwrap(), File::open(&path).unwrap());
        assert!(super::announce(&a, 5) && super::announce(&b, 9));
        assert!(super::announced_before(&b, 9), "b sees a");
        assert!(!super::announced_before(&a, 5), "nobody is older than a");
        assert!(super::wait_key() > 0);
    }

    /// Waits (60 s at most) for a ring of `bell`.
    async fn rung(bell: &super::Bell, what: &str) {
        let n = bell.notifier();
        let woken = tokio::time::timeout(Duration::from_secs(60), n.notified()).await;
        assert!(woken.is_ok(), "not rung: {what}");
    }

    /// A ring for the oldest announcement wakes that waiter's registration
    /// alone: a second announced waiter of the same file is not woken (a
    /// marker ring sent after the first is handled after it, by the same
    /// reader, so once the marker arrived the first ring's effects are all
    /// there). Keys carry this process's doorbell and are unique and
    /// ordered here; a key without a doorbell is not rung.
    #[tokio::test]
    async fn a_ring_wakes_the_oldest_announced_waiter_alone() {
        use futures_util::FutureExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rung.lock");
        std::fs::write(&path, b"").unwrap();
        let holder = File::open(&path).unwrap();
        let id = crate::sys::regular_file_id(&holder).unwrap().unwrap();
        let (a, b) = (File::open(&path).unwrap(), File::open(&path).unwrap());
        let (ka, kb, kc) = (super::wait_key(), super::wait_key(), super::wait_key());
        assert!(
            ka < kb && kb < kc,
            "keys of one process are unique and ordered"
        );
        assert_ne!(ka & 0xFFFF, 0, "this process has a doorbell");
        assert!(super::announce(&a, ka) && super::announce(&b, kb));
        let bell_a = super::Bell::announced(id, ka).unwrap();
        let bell_b = super::Bell::announced(id, kb).unwrap();
        let marker = super::Bell::announced(id, kc).unwrap();
        let first = super::announcement_except(&holder, None).unwrap();
        assert_eq!(first, ka, "the oldest announcement is found first");
        assert!(super::ring_announced(id, first));
        rung(&bell_a, "the oldest waiter was woken").await;
        assert!(super::ring_announced(id, kc));
        rung(&marker, "the marker ring arrived").await;
        assert!(
            bell_b.notifier().notified().now_or_never().is_none(),
            "the younger waiter was not woken"
        );
        // Unregistered, a ring for it finds nobody (and wakes nobody).
        drop(bell_b);
        assert!(super::ring_announced(id, kb));
        assert!(super::ring_announced(id, kc));
        rung(&marker, "the second marker ring arrived").await;
        assert!(
            !super::ring_announced(id, kb & !0xFFFF),
            "a key without a doorbell is not rung"
        );
        assert!(super::Bell::announced(id, kb & !0xFFFF).is_none());
    }
}
