//! The sweep: one attempt of a semaphore acquisition over its slots.

use super::*;

/// How many slot files one call on the blocking pool opens: a sweep of a
/// large semaphore costs one hop per window, not per slot.
const WINDOW: usize = 32;

/// How many windows a sweep opens ahead of the slot it is trying: enough
/// to hide the latency of the opens; with [`WINDOW`], the bound on the
/// descriptors an acquisition has open at once (64).
const WINDOWS_AHEAD: usize = 2;

/// How many of the lowest slots keep their descriptor open between
/// sweeps (busy or free; a held slot's descriptor closes on release, which
/// is what wakes other processes' waiters): a semaphore value has at most
/// this many descriptors open for slots it does not hold.
pub(super) const KEEP_OPEN: usize = 64;

/// How many of the lowest slots a waiter watches for releases by other
/// processes (inotify watches are limited per user); a release of a higher
/// slot is found by the next scheduled sweep.
const WATCHED: usize = 1024;

/// The semaphore as a [`Contender`]: each attempt is one sweep, lowest
/// slot first, as Python sweeps: the slots' files are opened ahead in
/// windows on the blocking pool, but the non-blocking lock attempts are
/// made in ascending slot order, so the lowest free slot is granted. A slot
/// that fails with anything but contention (a directory there, a file this
/// user may not open) is recorded in `unusable` and skipped.
pub(super) struct Sweep<'a> {
    pub(super) sem: &'a BoundedSemaphore,
    pub(super) slots: &'a [Lock],
    /// Slots that failed with anything but contention, skipped for the
    /// rest of this call.
    pub(super) unusable: Vec<Option<Error>>,
    /// Registrations on the slots' files, kept alive while waiting.
    pub(super) watches: Option<Vec<Watch>>,
    /// This call's waiting options (for the error message).
    pub(super) wait: WaitOptions,
    /// This waiter's place in the semaphore's queue, from its first busy
    /// sweep (see [`Ringer`]); `None` where there is no queue.
    pub(super) place: Option<crate::sys::QueuePlace>,
    /// Whether joining the queue was tried.
    pub(super) joined: bool,
    /// Whether this waiter was first in the queue at its last sweep.
    pub(super) first: bool,
    /// Whether the wake-up sources must be registered again.
    pub(super) changed: bool,
}

impl Sweep<'_> {
    /// Joins the semaphore's queue through a descriptor of the lowest
    /// slot's file of its own (opened on the blocking pool).
    async fn join(&mut self) {
        self.joined = true;
        let path = self.slots[0].path().to_path_buf();
        let opened = crate::util::run_blocking(move || crate::sys::open_queue(&path)).await;
        self.place = opened
            .ok()
            .flatten()
            .and_then(|(file, id)| crate::sys::QueuePlace::join(file, id));
        self.changed = self.place.is_some();
    }
}

impl Contender for Sweep<'_> {
    type Granted = BoundedSemaphorePermit;

    async fn attempt(&mut self) -> Result<Attempt<BoundedSemaphorePermit>> {
        let ringer = &self.sem.inner.ringer;
        if let Some(permit) = sweep(self.slots, ringer, &mut self.unusable).await? {
            // Leave the queue, then ring the next waiter: it takes a slot
            // if one is still free, or else is now first and watches.
            if self.place.take().is_some() {
                if let Some(Some(r)) = ringer.get() {
                    r.pass_on();
                }
            }
            return Ok(Attempt::Granted(permit));
        }
        if self.unusable.iter().all(Option::is_some) {
            return Err(self.sem.none_usable(&mut self.unusable));
        }
        let waits = !self.wait.fail_when_locked && !self.wait.timeout.is_zero();
        if waits && !self.joined {
            self.join().await;
        }
        if let Some(place) = &self.place {
            let first = place.is_first();
            self.changed |= first != self.first;
            self.first = first;
        }
        if waits && self.watches.is_some() && !self.changed {
            // Nothing to register: the wait loop sleeps now.
            let place = match (&self.place, self.first) {
                (None, _) => "not queued",
                (Some(_), true) => "first",
                (Some(_), false) => "behind another",
            };
            diag!(
                trace,
                "portalocker: every slot of {:?} busy; waiting for a release (queue: {place})",
                self.sem.inner.config.name
            );
        }
        Ok(Attempt::Busy)
    }

    /// At the first busy sweep, and again when this waiter's place in the
    /// queue changes: every slot's releases in this process; its doorbell;
    /// and, unless it is in the queue behind another waiter, closes and
    /// handovers by other processes of the lowest [`WATCHED`] slots found
    /// busy (the OS limits watches per user).
    fn register(&mut self) -> Option<Vec<std::sync::Arc<tokio::sync::Notify>>> {
        if self.watches.is_some() && !self.changed {
            return None;
        }
        self.changed = false;
        let watch_files = self.place.is_none() || self.first;
        let (watches, notifiers): (Vec<_>, Vec<_>) = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, l)| l.engine.wake_sources(watch_files && i < WATCHED))
            .unzip();
        let watches: Vec<Watch> = watches.into_iter().flatten().collect();
        let mut all: Vec<_> = watches.iter().map(Watch::notifier).collect();
        all.extend(notifiers);
        all.extend(self.place.as_ref().map(crate::sys::QueuePlace::notifier));
        self.watches = Some(watches);
        Some(all)
    }

    async fn busy(&mut self, waited: bool) -> Error {
        self.sem.busy(waited, self.wait.timeout, &self.unusable)
    }
}

/// Opens the slot files of `window` in one call on the blocking pool (one
/// hop per window rather than per slot). If the sweep is dropped while it
/// runs, the files are closed when it ends.
async fn open_window(
    slots: &[Lock],
    ringer: &OnceLock<Option<Arc<Ringer>>>,
    window: Vec<usize>,
) -> Vec<(usize, Result<Handle>)> {
    // Kept descriptors (of the lowest slots) are tried as they are: a
    // sweep that opened and closed busy slots would, by each close, wake
    // every waiter of every process (an inotify close event).
    let mut kept: Vec<(usize, Result<Handle>)> = Vec::new();
    let mut jobs: Vec<(usize, PathBuf, OpenMode)> = Vec::new();
    for &i in &window {
        match slots[i].engine.take_idle_handle() {
            Some(h) => kept.push((i, Ok(h))),
            None => jobs.push((
                i,
                slots[i].path().to_path_buf(),
                slots[i].engine.opts.open_mode(),
            )),
        }
    }
    if jobs.is_empty() {
        return kept;
    }
    let to_open: Vec<usize> = jobs.iter().map(|(i, _, _)| *i).collect();
    // The ringer is opened with the first window, in the same hop.
    let queue = ringer
        .get()
        .is_none()
        .then(|| slots[0].path().to_path_buf());
    let opened = crate::util::run_blocking(move || {
        let files = jobs
            .into_iter()
            .map(|(i, path, mode)| (i, crate::file::raw::open_lock_file(&path, mode)))
            .collect::<Vec<_>>();
        (files, queue.and_then(|q| crate::sys::open_queue(&q)))
    })
    .await
    .map(|(files, queue)| {
        if let Some((file, id)) = queue {
            let _ = ringer.set(Some(Arc::new(Ringer { file, id })));
        }
        files
    });
    let as_error = |i: usize, e| Error::io(crate::file::engine::OP_OPEN, Some(slots[i].path()), e);
    match opened {
        Ok(v) => kept.extend(
            v.into_iter()
                .map(|(i, r)| (i, r.map_err(|e| as_error(i, e)))),
        ),
        // The blocking pool is gone (the runtime shuts down).
        Err(e) => kept.extend(to_open.into_iter().map(|i| {
            (
                i,
                Err(as_error(i, std::io::Error::new(e.kind(), e.to_string()))),
            )
        })),
    }
    // In slot order: the lowest free slot is granted.
    kept.sort_by_key(|(i, _)| *i);
    kept
}

/// One sweep. At most [`WINDOWS_AHEAD`] × [`WINDOW`] slot files are open
/// at once (the windows being opened ahead, the one tried among them); a
/// slot that is not granted is closed at once unless it is one of the
/// lowest [`KEEP_OPEN`], whose descriptor is kept for the next sweep, so a
/// semaphore's descriptors are bounded whatever its size. Running out of descriptors (`EMFILE`,
/// `ENFILE`) ends the acquisition with that error at once: it says nothing
/// about the slot, and the slots not yet tried may be free.
async fn sweep(
    slots: &[Lock],
    ringer: &OnceLock<Option<Arc<Ringer>>>,
    unusable: &mut [Option<Error>],
) -> Result<Option<BoundedSemaphorePermit>> {
    let todo: Vec<usize> = (0..slots.len())
        .filter(|&i| unusable[i].is_none())
        .collect();
    let windows: Vec<Vec<usize>> = todo.chunks(WINDOW).map(<[usize]>::to_vec).collect();
    let mut opened = futures_util::stream::iter(windows)
        .map(|window| open_window(slots, ringer, window))
        .buffered(WINDOWS_AHEAD)
        .flat_map(futures_util::stream::iter);
    while let Some((i, opened)) = opened.next().await {
        let engine = &slots[i].engine;
        let mut handle = opened;
        // A file replaced under us is opened afresh, a few times.
        let mut tried = 0;
        let outcome = loop {
            let h = match handle {
                Ok(h) => h,
                Err(e) => break Err(e),
            };
            match engine.try_slot(h) {
                Ok(SlotTry::Replaced) if tried < 3 => {
                    tried += 1;
                    handle = engine.open_handle().await;
                }
                Ok(SlotTry::Replaced) => break Ok(None),
                Ok(SlotTry::Busy) => break Ok(None),
                Ok(SlotTry::Granted(g)) => break Ok(Some(g)),
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(Some(granted)) => {
                let ring = RingOnDrop(ringer.get().cloned().flatten());
                return Ok(Some(BoundedSemaphorePermit::new(
                    i,
                    slots[i].guard(granted),
                    ring,
                )));
            }
            Ok(None) => {}
            Err(e) if e.io_error().is_some_and(crate::sys::out_of_descriptors) => {
                let os = e.io_error().map_or_else(String::new, ToString::to_string);
                return Err(e.with_reason(format!(
                    "{os} while trying slot {i}; the slots after it were not tried \
                     (raise the open-file limit)"
                )));
            }
            Err(e) => unusable[i] = Some(e),
        }
    }
    Ok(None)
}
