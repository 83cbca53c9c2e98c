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

/// Entries that have at least one waiter.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Registry {
    entries: HashMap<FileId, Entry>,
    #[cfg(target_os = "linux")]
    by_wd: HashMap<inotify::WatchDescriptor, FileId>,
}

struct Entry {
    notify: Arc<Notify>,
    waiters: usize,
    #[cfg(target_os = "linux")]
    wd: Option<inotify::WatchDescriptor>,
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
        #[cfg(target_os = "linux")]
        let wd = linux::add(path);
        #[cfg(target_os = "linux")]
        if let Some(wd) = &wd {
            reg.by_wd.insert(wd.clone(), id);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = path;
        reg.entries.insert(
            id,
            Entry {
                notify: notify.clone(),
                waiters: 1,
                #[cfg(target_os = "linux")]
                wd,
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
        #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
        let entry = reg.entries.remove(&self.id);
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        if let Some(wd) = entry.and_then(|e| e.wd) {
            // The kernel drops a watch by itself when its file is deleted
            // and may hand the number out again: only remove it if it is
            // still ours.
            if reg.by_wd.get(&wd) == Some(&self.id) {
                reg.by_wd.remove(&wd);
                linux::remove(wd);
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

#[cfg(target_os = "linux")]
mod linux {
    use std::path::Path;
    use std::sync::OnceLock;

    use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

    use super::registry;

    /// The process-wide watch list; `None` when inotify is unavailable
    /// (then waiters poll).
    fn watches() -> Option<Watches> {
        static WATCHES: OnceLock<Option<Watches>> = OnceLock::new();
        WATCHES.get_or_init(start).clone()
    }

    fn start() -> Option<Watches> {
        let mut inotify = Inotify::init().ok()?;
        let watches = inotify.watches();
        std::thread::Builder::new()
            .name("portalocker-inotify".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(events) = inotify.read_events_blocking(&mut buf) {
                    let reg = registry();
                    for ev in events {
                        let entry = reg.by_wd.get(&ev.wd).and_then(|id| reg.entries.get(id));
                        if let Some(e) = entry {
                            e.notify.notify_waiters();
                        }
                    }
                }
            })
            .ok()?;
        Some(watches)
    }

    pub(super) fn add(path: &Path) -> Option<WatchDescriptor> {
        // ACCESS: a holder hands over by setting the access time (`gate`).
        let mask = WatchMask::ACCESS
            | WatchMask::CLOSE_WRITE
            | WatchMask::CLOSE_NOWRITE
            | WatchMask::ATTRIB
            | WatchMask::MODIFY
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::DONT_FOLLOW;
        watches()?.add(path, mask).ok()
    }

    pub(super) fn remove(wd: WatchDescriptor) {
        if let Some(mut w) = watches() {
            let _ = w.remove(wd);
        }
    }
}
