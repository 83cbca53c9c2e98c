//! The tasks of one process that want one channel: a fair turn, the side
//! connection the process's waits reuse, and the places this process gives
//! foreign contenders it sees in the replies to pings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::keys::{
    foreign_key, queue_key, seq_key, served_key, FOREIGN, FOREIGN_SCRIPT, FOREIGN_TTL,
};
use crate::redis_lock::command::CommandSlot;
use crate::redis_lock::protocol;
use crate::util::{lock, PerKey};

/// The tasks of this process that want one channel of one server.
pub(in crate::redis_lock) struct LocalQueue {
    /// One permit: the turn to speak the protocol (tokio's semaphore is
    /// fair, so tasks get it in the order they asked).
    pub(super) turn: Arc<Semaphore>,
    /// The holder id of the task that holds the lock, for error messages.
    pub(super) holder: Mutex<Option<String>>,
    /// The side-channel connection, kept while a lock value lives so that
    /// successive waits of this process reuse it; subscribed only while a
    /// task waits (so notices do not pile up unread in between).
    pub(super) side: Arc<tokio::sync::Mutex<Option<Side>>>,
    /// Set once the server refused the queue script.
    pub(super) no_script: AtomicBool,
    /// Whether this process's last acquisition found the lock held or
    /// waiters queued: then the next one asks before it subscribes (one
    /// round trip), so that subscriptions that would only give way at once
    /// do not make the first waiter see a busy channel where it is free.
    pub(super) contended: AtomicBool,
    /// The foreign contenders this process last told the queue about, and
    /// when (so that a burst of replies costs one script call).
    pub(super) foreign: Mutex<std::collections::HashMap<String, (Instant, bool)>>,
    /// The holder id of the foreign contender whose turn the queue gave
    /// last, as this process's last poll read it.
    served: Mutex<Option<String>>,
}

impl Default for LocalQueue {
    fn default() -> Self {
        Self {
            turn: Arc::new(Semaphore::new(1)),
            holder: Mutex::new(None),
            side: Arc::default(),
            no_script: AtomicBool::new(false),
            contended: AtomicBool::new(false),
            foreign: Mutex::default(),
            served: Mutex::default(),
        }
    }
}

/// The side-channel connection of a [`LocalQueue`]: subscribed to the side
/// channel and to the pattern of the lock's reply channels.
pub(super) struct Side {
    pub(super) sink: PubSubSink,
    pub(super) stream: PubSubStream,
    pub(super) subscribed: bool,
}

/// This process's turn on a channel, held by an acquisition and, for a
/// writer, by its guard.
pub(in crate::redis_lock) struct Turn {
    pub(super) queue: Arc<LocalQueue>,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Turn {
    /// Whether this process's last acquisition on the channel met
    /// contention (so others are likely waiting for its release).
    pub(in crate::redis_lock) fn contended(&self) -> bool {
        self.queue.contended()
    }

    /// Records the holder (for other tasks' error messages).
    pub(in crate::redis_lock) fn held_by(&self, id: &str) {
        *lock(&self.queue.holder) = Some(id.to_string());
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        lock(&self.queue.holder).take();
    }
}

impl LocalQueue {
    /// Records the served key a poll read (`foreign:<id>`, or empty).
    pub(super) fn note_served(&self, served: &str) {
        *lock(&self.served) = served.strip_prefix(FOREIGN).map(str::to_string);
    }

    /// Whether a fresh writer of this process must let `holders` decide
    /// without it: one of them is the foreign contender whose turn the
    /// queue gave last, still pending (a Python peer that subscribed to
    /// take the lock it was given and is counting; a writer of this crate
    /// that counted meanwhile would win the election if its id were
    /// lower, and take that turn).
    pub(in crate::redis_lock) fn defers_to_served(&self, holders: &[protocol::Holder]) -> bool {
        let served = lock(&self.served);
        let Some(id) = served.as_deref() else {
            return false;
        };
        holders
            .iter()
            .any(|h| h.id == id && h.mode == protocol::HolderMode::Pending && !h.queues)
    }

    /// The queue of `channel` on the server `client` talks to. Keyed by
    /// the server's address and the channel only: pub/sub channels are
    /// the same for every database and user of a server.
    pub(in crate::redis_lock) fn of(server: &str, channel: &str) -> Arc<Self> {
        static QUEUES: PerKey<String, LocalQueue> = PerKey::new();
        // The server's name: host and port (or path, or the sentinels),
        // without TLS parameters.
        let key = format!("{server}\u{0}{channel}");
        QUEUES.get(key.as_str())
    }

    /// The turn now, if no other task of this process has it.
    pub(in crate::redis_lock) fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let permit = self.turn.clone().try_acquire_owned().ok()?;
        Some(Turn {
            queue: self.clone(),
            _permit: permit,
        })
    }

    /// The turn, waiting behind the tasks that asked first, until
    /// `deadline`.
    pub(in crate::redis_lock) async fn turn_until(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Option<Turn> {
        let permit = tokio::time::timeout_at(deadline, self.turn.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Turn {
            queue: self.clone(),
            _permit: permit,
        })
    }

    /// Whether the last acquisition of this process met contention.
    pub(in crate::redis_lock) fn contended(&self) -> bool {
        self.contended.load(Ordering::Relaxed)
    }

    /// Records whether an acquisition met contention.
    pub(in crate::redis_lock) fn set_contended(&self, on: bool) {
        self.contended.store(on, Ordering::Relaxed);
    }

    /// Whether waiters of this process keep places in the server-side
    /// queue (the server runs its script).
    pub(in crate::redis_lock) fn queues(&self) -> bool {
        !self.no_script.load(Ordering::Relaxed)
    }

    /// The holder id of the task of this process that holds the lock.
    pub(in crate::redis_lock) fn holder(&self) -> Option<String> {
        lock(&self.holder).clone()
    }

    /// Reads a reply seen on one of `channel`'s reply channels (`name`):
    /// a foreign contender that waits gets (or keeps) a place in the
    /// server-side queue, and one that holds leaves it. Python peers poll
    /// and do not queue, so without a place of their own this crate's
    /// waiters, which move the moment the lock is free, would leave them
    /// only the rare instants when nobody of ours waits. Runs in the
    /// background; repeated news of one contender within a fraction of
    /// [`FOREIGN_TTL`] is sent once.
    ///
    /// Returns the foreign contender the reply names, if any.
    pub(in crate::redis_lock) fn note_reply(
        &self,
        cmd: &Arc<CommandSlot>,
        channel: &str,
        name: &str,
        payload: &[u8],
    ) -> Option<protocol::Foreign> {
        if self.no_script.load(Ordering::Relaxed) || !protocol::is_reply_channel(channel, name) {
            return None;
        }
        let f = protocol::foreign(payload)?;
        let named = f.clone();
        let now = Instant::now();
        {
            let mut seen = lock(&self.foreign);
            if let Some((at, waiting)) = seen.get(&f.id) {
                if *waiting == f.waiting && now.duration_since(*at) < FOREIGN_TTL / 8 {
                    return Some(named);
                }
            }
            if seen.len() >= 256 {
                seen.retain(|_, (at, _)| now.duration_since(*at) < FOREIGN_TTL);
            }
            seen.insert(f.id.clone(), (now, f.waiting));
        }
        let (cmd, channel) = (cmd.clone(), channel.to_string());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Some(named);
        };
        rt.spawn(async move {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let s = SCRIPT.get_or_init(|| redis::Script::new(FOREIGN_SCRIPT));
            let ttl = u64::try_from(FOREIGN_TTL.as_millis()).unwrap_or(u64::MAX);
            let run = async {
                let mut c = cmd.get().await.ok()?;
                s.key(queue_key(&channel))
                    .key(foreign_key(&channel))
                    .key(seq_key(&channel))
                    .key(served_key(&channel))
                    .arg(format!("{FOREIGN}{}", f.id))
                    .arg(if f.waiting { "1" } else { "0" })
                    .arg(ttl)
                    .invoke_async::<i64>(&mut c.con)
                    .await
                    .ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), run).await;
        });
        Some(named)
    }
}
