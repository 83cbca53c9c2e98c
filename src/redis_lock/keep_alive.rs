//! The keep-alive task: reads the lock subscription, answers pings, pings
//! the server so a dead link is noticed, and (opt-in) checks end to end
//! that its own subscription still receives its channel. Owned by an
//! acquisition and then by the guard; aborted when they drop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::protocol::{self, HolderMode, Replies};
use crate::util::lock;

/// A callback run once when a held lock is lost.
pub(crate) type LossCallback = Arc<dyn Fn(&Error) + Send + Sync + 'static>;
use crate::error::{Error, ErrorKind};

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
pub(super) struct HolderState {
    pub(super) channel: String,
    pub(super) id: String,
    /// (mode, writer_elected), snapshotted together for replies.
    mode: Mutex<(HolderMode, bool)>,
    status: watch::Sender<Status>,
    lost: watch::Sender<bool>,
    on_lost: Option<LossCallback>,
}

impl HolderState {
    pub(super) fn new(
        channel: String,
        id: String,
        mode: HolderMode,
        on_lost: Option<LossCallback>,
    ) -> Self {
        Self {
            channel,
            id,
            mode: Mutex::new((mode, false)),
            status: watch::Sender::new(Status::Acquiring),
            lost: watch::Sender::new(false),
            on_lost,
        }
    }

    pub(super) fn set_mode(&self, mode: HolderMode, elected: bool) {
        *lock(&self.mode) = (mode, elected);
    }

    pub(super) fn elected(&self) -> bool {
        lock(&self.mode).1
    }

    fn reply(&self) -> String {
        let (mode, elected) = *lock(&self.mode);
        protocol::reply(&self.id, mode, elected)
    }

    fn is_held(&self) -> bool {
        matches!(*self.status.borrow(), Status::Held)
    }

    pub(super) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    pub(super) fn lost_reason(&self) -> Option<String> {
        match &*self.status.borrow() {
            Status::Lost(why) => Some(why.clone()),
            _ => None,
        }
    }

    pub(super) fn watch_lost(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }

    /// The `LockLost` error for this holder.
    pub(super) fn lost_error(&self, why: &str) -> Error {
        Error::new(ErrorKind::LockLost, "Redis lock lost")
            .with_channel(self.channel.clone())
            .with_reason(format!("holder {} was revoked while held: {why}", self.id))
    }

    /// The subscription died: a loss if held, else the end of an attempt.
    fn fail(&self, why: &str) {
        let mut lost_now = false;
        self.status.send_modify(|s| {
            let next = match s {
                Status::Held => {
                    lost_now = true;
                    Status::Lost(why.to_string())
                }
                Status::Acquiring => Status::Ended,
                Status::Lost(_) | Status::Ended => return,
            };
            *s = next;
        });
        if !lost_now {
            diag!(
                debug,
                "portalocker: subscription to Redis lock {:?} ended: {why}",
                self.channel
            );
            return;
        }
        diag!(
            error,
            "portalocker: Redis lock {:?} (holder {}) lost: {why}",
            self.channel,
            self.id
        );
        self.lost.send_replace(true);
        if let Some(cb) = &self.on_lost {
            let err = self.lost_error(why);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&err)));
            if run.is_err() {
                diag!(
                    error,
                    "portalocker: the on_lost callback of {:?} panicked",
                    self.channel
                );
            }
        }
    }
}

/// What the task needs besides the subscription.
pub(super) struct Options {
    pub(super) cmd: MultiplexedConnection,
    pub(super) client: redis::Client,
    pub(super) unavailable: Duration,
    pub(super) self_check: Option<Duration>,
}

/// A live subscription and the task that keeps it.
pub(super) struct Subscription {
    shared: Arc<HolderState>,
    task: JoinHandle<()>,
}

impl Subscription {
    pub(super) fn start(shared: Arc<HolderState>, pubsub: PubSub, settings: Options) -> Self {
        // A new attempt's subscription: an earlier one of this acquisition
        // that died ("ended") must not doom this one, or every later
        // attempt would be refused at the grant and retried forever.
        shared.status.send_if_modified(|s| {
            let ended = matches!(s, Status::Ended);
            if ended {
                *s = Status::Acquiring;
            }
            ended
        });
        let task = tokio::spawn(run(shared.clone(), pubsub, settings));
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
        self.shared.is_held()
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

type Check = Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>>;

async fn run(shared: Arc<HolderState>, pubsub: PubSub, s: Options) {
    let (sink, mut stream) = pubsub.split();
    let mut cmd = s.cmd.clone();
    let every = s.unavailable.max(Duration::from_millis(100));
    let start = tokio::time::Instant::now();
    let mut ping_tick =
        tokio::time::interval_at(crate::deadline::deadline_after(start, every), every);
    ping_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let check_every = s.self_check.unwrap_or(crate::util::NEVER);
    let mut check_tick = tokio::time::interval_at(
        crate::deadline::deadline_after(start, check_every),
        check_every,
    );
    check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most one server ping and one self-check in flight; both run
    // beside the read loop so that answering pings never stalls.
    let mut server_ping: Option<Check> = None;
    let mut self_check: Option<Check> = None;
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
                        s.unavailable,
                        cmd.publish::<_, _, i64>(response, reply),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(_))) {
                        diag!(warn,
                            "portalocker: could not answer a ping on Redis lock {:?}",
                            shared.channel
                        );
                    }
                }
                None => break "the subscription connection closed",
            },
            _ = ping_tick.tick(), if server_ping.is_none() => {
                let mut sink = sink.clone();
                let deadline = s.unavailable;
                server_ping = Some(Box::pin(async move {
                    match tokio::time::timeout(deadline, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(_)) => Err("the subscription connection failed"),
                        Err(_) => Err("the server did not answer a ping in time"),
                    }
                }));
            }
            r = async { server_ping.as_mut().expect("guarded").await }, if server_ping.is_some() => {
                server_ping = None;
                if let Err(why) = r {
                    break why;
                }
            }
            _ = check_tick.tick(), if s.self_check.is_some() && self_check.is_none() => {
                if shared.is_held() {
                    self_check = Some(Box::pin(check_self(
                        s.client.clone(),
                        s.cmd.clone(),
                        shared.channel.clone(),
                        shared.id.clone(),
                        check_every.min(s.unavailable),
                    )));
                }
            }
            r = async { self_check.as_mut().expect("guarded").await }, if self_check.is_some() => {
                self_check = None;
                if let Err(why) = r {
                    break why;
                }
            }
        }
    };
    shared.fail(why);
    // Dropping the stream here closes the socket.
}

/// One end-to-end self-check: ping the lock channel from a
/// fresh response subscription and wait for this holder's own reply, which
/// only comes if the held subscription still receives the channel.
async fn check_self(
    client: redis::Client,
    mut cmd: MultiplexedConnection,
    channel: String,
    id: String,
    budget: Duration,
) -> Result<(), &'static str> {
    let run = async {
        let mut ps = client.get_async_pubsub().await.ok()?;
        let response = format!("{channel}-{}", crate::util::unguessable_hex32());
        ps.subscribe(&response).await.ok()?;
        let mut replies = ps.into_on_message();
        let _: i64 = cmd
            .publish(&channel, protocol::ping(&response))
            .await
            .ok()?;
        while let Some(msg) = replies.next().await {
            let mut r = Replies::default();
            r.add(msg.get_payload_bytes());
            if r.holders.iter().any(|h| h.id == id) {
                return Some(());
            }
        }
        None
    };
    match tokio::time::timeout(budget, run).await {
        Ok(Some(())) => Ok(()),
        _ => Err("the self-check did not see its own reply in time"),
    }
}
