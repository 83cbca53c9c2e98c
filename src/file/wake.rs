//! Early wake-ups for waiters, so a released lock is taken at once
//! instead of at the next `check_interval`.
//!
//! Two sources, both best effort (polling remains the fallback):
//!
//! * **In-process:** a guard of this crate that releases a file calls
//!   [`released`], which wakes the waiters of this process on that file.
//!   When nobody waits this costs one atomic load.
//! * **Other processes (Linux):** one process-wide inotify instance,
//!   read by one helper thread, reports when another process closes the
//!   lock file (Python portalocker closes on release; every process closes
//!   on exit or crash), changes its attributes, or removes it.
//!
//! A waiter registers a [`Watch`] *before* its next attempt and arms its
//! `Notified` future before that attempt too, so a release between the
//! attempt and the wait is never missed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use std::pin::Pin;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::file::raw::FileId;
use crate::sys;

/// Entries that have at least one waiter.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Registry {
    entries: HashMap<FileId, Entry>,
    by_watch: HashMap<sys::WatchId, FileId>,
}

struct Entry {
    notify: Arc<Notify>,
    waiters: usize,
    watch: Option<sys::WatchId>,
    /// Wake-ups delivered by the watcher (for tests).
    fired: u64,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    crate::util::lock(REGISTRY.get_or_init(Mutex::default))
}

/// A waiter's registration on one lock file; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Watch {
    id: FileId,
    notify: Arc<Notify>,
}

impl Watch {
    /// Registers interest in releases of the file `id`, found at `path`.
    pub(crate) fn new(path: &Path, id: FileId) -> Self {
        let mut reg = registry();
        if let Some(e) = reg.entries.get_mut(&id) {
            e.waiters += 1;
            return Self {
                id,
                notify: e.notify.clone(),
            };
        }
        let notify = Arc::new(Notify::new());
        let watch = sys::watch(path, fire);
        if let Some(w) = &watch {
            reg.by_watch.insert(*w, id);
        }
        reg.entries.insert(
            id,
            Entry {
                notify: notify.clone(),
                waiters: 1,
                watch,
                fired: 0,
            },
        );
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Self { id, notify }
    }

    /// The file this watch is for.
    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    /// The notifier to arm before an attempt and await after it.
    pub(crate) fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

/// Notifications armed before an attempt, awaited after it.
pub(crate) struct Armed<'a> {
    futs: Vec<Pin<Box<Notified<'a>>>>,
}

impl<'a> Armed<'a> {
    /// Arms one `Notified` per notifier: a wake-up from now on is kept.
    pub(crate) fn new(notifiers: &'a [Arc<Notify>]) -> Self {
        let futs = notifiers
            .iter()
            .map(|n| {
                let mut f = Box::pin(n.notified());
                f.as_mut().enable();
                f
            })
            .collect();
        Self { futs }
    }

    /// Sleeps until `target` or an earlier wake-up.
    pub(crate) async fn until(self, target: Instant) {
        if self.futs.is_empty() {
            tokio::time::sleep_until(target).await;
            return;
        }
        let sleep = std::pin::pin!(tokio::time::sleep_until(target));
        futures_util::future::select(sleep, futures_util::future::select_all(self.futs)).await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut reg = registry();
        let Some(e) = reg.entries.get_mut(&self.id) else {
            return;
        };
        e.waiters -= 1;
        if e.waiters > 0 {
            return;
        }
        let entry = reg.entries.remove(&self.id);
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        if let Some(w) = entry.and_then(|e| e.watch) {
            // The kernel drops a watch by itself when its file is deleted
            // and may hand the number out again: only remove it if it is
            // still ours.
            if reg.by_watch.get(&w) == Some(&self.id) {
                reg.by_watch.remove(&w);
                sys::unwatch(w);
            }
        }
    }
}

/// Wakes this process's waiters on the file `id`: a guard just released it.
pub(crate) fn released(id: FileId) {
    if ACTIVE.load(Ordering::SeqCst) == 0 {
        return;
    }
    let notify = registry().entries.get(&id).map(|e| e.notify.clone());
    if let Some(n) = notify {
        n.notify_waiters();
    }
}

/// Called by the platform's watcher for an event on a watched lock file.
fn fire(watch: &sys::WatchId) {
    let mut reg = registry();
    let Some(id) = reg.by_watch.get(watch).copied() else {
        return;
    };
    if let Some(e) = reg.entries.get_mut(&id) {
        e.fired += 1;
        e.notify.notify_waiters();
    }
}

/// The wake-ups the watcher delivered to the waiters of the file `id`
/// since the first of them registered; `None` while nobody waits.
#[cfg(all(test, target_os = "linux", not(portalocker_portable)))]
pub(crate) fn fired(id: FileId) -> Option<u64> {
    registry().entries.get(&id).map(|e| e.fired)
}

#[cfg(all(test, target_os = "linux", not(portalocker_portable)))]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    use crate::file::raw::FileId;

    /// Waits (checking, not sleeping blindly) until a waiter of `id` has
    /// registered, then returns its wake-up count.
    async fn registered(id: FileId) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(n) = super::fired(id) {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the waiter never registered"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until the waiters of `id` have had more than `n` wake-ups.
    async fn fired_beyond(id: FileId, n: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let now = super::fired(id).unwrap();
            if now > n {
                return now;
            }
            assert!(tokio::time::Instant::now() < deadline, "no wake-up arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    type Waiter = tokio::task::JoinHandle<crate::Result<()>>;

    /// A lock file held by a plain descriptor, and a waiter for it that
    /// never polls (it waits for wake-ups alone), registered.
    async fn setup() -> (tempfile::TempDir, std::path::PathBuf, File, FileId, Waiter) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("busy.lock");
        std::fs::write(&path, b"0123456789").unwrap();
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        holder.lock().unwrap();
        let id = crate::sys::regular_file_id(&holder).unwrap().unwrap();
        let lock = crate::Lock::new(&path)
            .timeout(Duration::from_secs(600))
            .check_interval(Duration::from_secs(600));
        let waiter = tokio::spawn(async move { lock.acquire().await.map(drop) });
        assert_eq!(registered(id).await, 0);
        (d, path, holder, id, waiter)
    }

    /// A holder (and anyone else) reading and writing the lock file through
    /// open descriptors wakes no waiter: 20,000 reads and writes, then one
    /// open + close (which does wake); once that wake-up arrived, all the
    /// earlier events were delivered too, and there is exactly one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_writes_of_the_lock_file_wake_no_waiter() {
        let (_d, path, holder, id, waiter) = setup().await;
        let reader = File::open(&path).unwrap();
        let mut buf = [0u8; 5];
        for _ in 0..10_000 {
            reader.read_at(&mut buf, 0).unwrap();
            holder.read_at(&mut buf, 0).unwrap();
            holder.write_at(b"x", 0).unwrap();
        }
        drop(File::open(&path).unwrap());
        assert_eq!(
            fired_beyond(id, 0).await,
            1,
            "only the close woke the waiter"
        );
        // Closing the holder's descriptor (which releases) wakes the waiter.
        drop(holder);
        waiter.await.unwrap().unwrap();
    }

    /// A reader that opens and closes the lock file in a loop wakes its
    /// waiters at most once per watcher gap, however fast it goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_opening_reader_wakes_waiters_at_most_once_per_gap() {
        let (_d, path, holder, id, waiter) = setup().await;
        let start = std::time::Instant::now();
        let opens = 5_000;
        for _ in 0..opens {
            let mut buf = [0u8; 5];
            File::open(&path).unwrap().read_at(&mut buf, 0).unwrap();
        }
        let fired = fired_beyond(id, 0).await;
        let gaps = start.elapsed().as_micros() / crate::sys::WATCH_GAP.as_micros() + 1;
        assert!(
            u128::from(fired) <= gaps,
            "{fired} wake-ups for {opens} opens in {gaps} gaps"
        );
        // Closing the holder's descriptor (which releases) wakes the waiter.
        drop(holder);
        waiter.await.unwrap().unwrap();
    }
}
