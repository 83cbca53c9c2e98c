//! The keep-alive task: reads the lock subscription, answers pings, and
//! pings the server so a dead link is noticed. Owned by an acquisition and
//! then by the guard; aborted when they drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lock;
use super::protocol::{self, Mode};

/// Where a subscription stands.
#[derive(Clone, Debug)]
pub(super) enum Status {
    /// Subscribed, the lock not (yet) granted.
    Acquiring,
    /// Granted.
    Held,
    /// The subscription died while held.
    Lost(String),
    /// The subscription died before the grant: costs the attempt only.
    Ended,
}

/// State shared by the acquisition, the guard and the task.
pub(super) struct Shared {
    pub(super) channel: String,
    pub(super) id: String,
    /// (mode, writer_elected), snapshotted together for replies.
    mode: Mutex<(Mode, bool)>,
    status: watch::Sender<Status>,
}

impl Shared {
    pub(super) fn new(channel: String, id: String, mode: Mode) -> Self {
        Self {
            channel,
            id,
            mode: Mutex::new((mode, false)),
            status: watch::Sender::new(Status::Acquiring),
        }
    }

    pub(super) fn set_mode(&self, mode: Mode, elected: bool) {
        *lock(&self.mode) = (mode, elected);
    }

    pub(super) fn elected(&self) -> bool {
        lock(&self.mode).1
    }

    fn reply(&self) -> String {
        let (mode, elected) = *lock(&self.mode);
        protocol::reply(&self.id, mode, elected)
    }

    pub(super) fn is_lost(&self) -> bool {
        matches!(*self.status.borrow(), Status::Lost(_))
    }

    pub(super) fn lost_reason(&self) -> Option<String> {
        match &*self.status.borrow() {
            Status::Lost(why) => Some(why.clone()),
            _ => None,
        }
    }

    pub(super) fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The subscription died: a loss if held, else the end of an attempt.
    fn fail(&self, why: &str) {
        self.status.send_modify(|s| {
            let next = match s {
                Status::Held => {
                    log::error!(
                        "portalocker: Redis lock {:?} (holder {}) lost: {why}",
                        self.channel,
                        self.id
                    );
                    Status::Lost(why.to_string())
                }
                Status::Acquiring => {
                    log::debug!(
                        "portalocker: subscription to Redis lock {:?} ended while acquiring: {why}",
                        self.channel
                    );
                    Status::Ended
                }
                Status::Lost(_) | Status::Ended => return,
            };
            *s = next;
        });
    }
}

/// A live subscription and the task that keeps it.
pub(super) struct Subscription {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Subscription {
    pub(super) fn start(
        shared: Arc<Shared>,
        pubsub: PubSub,
        cmd: MultiplexedConnection,
        unavailable: Duration,
    ) -> Self {
        let task = tokio::spawn(run(shared.clone(), pubsub, cmd, unavailable));
        Self { shared, task }
    }

    pub(super) fn alive(&self) -> bool {
        !self.task.is_finished()
            && matches!(
                *self.shared.status.borrow(),
                Status::Acquiring | Status::Held
            )
    }

    /// Acquiring → Held, atomically with respect to the task's failure
    /// report; `false` if the subscription already died.
    pub(super) fn mark_held(&self) -> bool {
        if self.task.is_finished() {
            return false;
        }
        self.shared.status.send_if_modified(|s| {
            if matches!(s, Status::Acquiring) {
                *s = Status::Held;
                true
            } else {
                false
            }
        });
        matches!(*self.shared.status.borrow(), Status::Held)
    }

    /// Stops the task and waits until it (and with it the pub/sub stream)
    /// is gone.
    pub(super) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    shared: Arc<Shared>,
    pubsub: PubSub,
    mut cmd: MultiplexedConnection,
    unavailable: Duration,
) {
    let (mut sink, mut stream) = pubsub.split();
    let every = unavailable.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    if msg.get_channel_name() != shared.channel {
                        continue;
                    }
                    let Some(response) = protocol::ping_response_channel(msg.get_payload_bytes()) else {
                        continue;
                    };
                    let reply = shared.reply();
                    let sent = tokio::time::timeout(
                        unavailable,
                        cmd.publish::<_, _, i64>(response, reply),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(_))) {
                        log::warn!(
                            "portalocker: could not answer a ping on Redis lock {:?}",
                            shared.channel
                        );
                    }
                }
                None => break "the subscription connection closed",
            },
            _ = tick.tick() => {
                match tokio::time::timeout(unavailable, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break "the subscription connection failed",
                    Err(_) => break "the server did not answer a ping in time",
                }
            }
        }
    };
    shared.fail(why);
    // Dropping the stream here closes the socket.
}
