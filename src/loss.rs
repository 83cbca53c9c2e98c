//! Losing a held lock without dropping its guard: the state a guard shares
//! with whatever notices the loss, and, for file locks, the monitor that
//! notices that the locked file is no longer the file at the lock's path.
//!
//! A file lock is lost when a third party removes the lock file or renames
//! another file over it while it is held: the lock still exists, on a file
//! that no path names any more, and the next process to open the path
//! locks a new file at once. Nothing in `flock(2)` can prevent that; the
//! guard can only tell. On Linux the monitor is woken by inotify (an
//! unlink or rename changes the file's link count, or moves it); elsewhere
//! it checks every [`POLL`]. Either way each check is one `lstat` of the
//! path compared with the identity of the locked file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::file_lock::FileId;

/// How often a monitor checks the path where no OS notification wakes it
/// (and, as a safety net, where one does).
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// Whether a held lock was lost, and why. Shared by a guard and what
/// watches for the loss; the first reason recorded wins.
#[derive(Debug)]
pub(crate) struct Loss {
    tx: watch::Sender<bool>,
    why: Mutex<Option<String>>,
}

impl Loss {
    pub(crate) fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
            why: Mutex::new(None),
        }
    }

    /// Records the loss (once) and tells every receiver.
    pub(crate) fn fail(&self, why: impl Into<String>) {
        let mut w = crate::util::lock(&self.why);
        if w.is_none() {
            *w = Some(why.into());
            drop(w);
            self.tx.send_replace(true);
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.tx.borrow()
    }

    pub(crate) fn reason(&self) -> Option<String> {
        crate::util::lock(&self.why).clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Resolves once the lock is lost.
    pub(crate) async fn lost(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`: `wait_for` only ends on `true`.
        let _ = rx.wait_for(|lost| *lost).await;
    }
}

/// Watches a held lock file: once the path no longer names the file `id`,
/// `loss` is failed. Runs until then or until the returned task is aborted
/// (when the guard goes).
pub(crate) fn monitor_file(
    path: PathBuf,
    id: FileId,
    loss: Arc<Loss>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Closes, attribute changes (the link count), removals and renames
        // of the file wake this; so do releases in this process.
        let watch = crate::wake::Watch::new(&path, id);
        let notify = watch.notifier();
        loop {
            let mut notified = std::pin::pin!(notify.notified());
            notified.as_mut().enable();
            match crate::file_lock::Handle::id_is_at(id, &path) {
                Ok(true) => {}
                Ok(false) => {
                    loss.fail(format!(
                        "the lock file {} was removed or replaced while held, so another \
                         process can lock the file now at that path",
                        path.display()
                    ));
                    return;
                }
                // Not knowing is not a loss: look again later.
                Err(_) => {}
            }
            let sleep = std::pin::pin!(tokio::time::sleep(POLL));
            futures_util::future::select(notified, sleep).await;
        }
    })
}
