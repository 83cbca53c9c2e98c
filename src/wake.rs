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

use crate::file_lock::FileId;
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
            reg.by_watch.insert(w.clone(), id);
        }
        reg.entries.insert(
            id,
            Entry {
                notify: notify.clone(),
                waiters: 1,
                watch,
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
    let reg = registry();
    let entry = reg.by_watch.get(watch).and_then(|id| reg.entries.get(id));
    if let Some(e) = entry {
        e.notify.notify_waiters();
    }
}
