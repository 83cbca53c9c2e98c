//! The keep-alive task: reads the lock subscription, answers pings, pings
//! the server so a dead link is noticed (telling a dead link from a stalled
//! server), keeps the command connection that carries the answers healthy,
//! (opt-in) checks end to end that its own subscription still receives its
//! channel, and on release unsubscribes before the socket closes. Owned by
//! an acquisition and then by the guard; aborted when they drop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::command::{connection_failed, CommandSlot};
use super::connect::{SubConn, SubSink};
use super::protocol::{self, HolderMode, Replies};
use crate::util::lock;

use crate::error::{Error, ErrorKind};
pub(crate) use crate::loss::LossCallback;

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
    /// This process's turn on the channel while a writer holds: passed on
    /// at release, or as soon as the lock is lost.
    turn: Mutex<Option<super::waiting::Turn>>,
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
            turn: Mutex::new(None),
        }
    }

    pub(super) fn set_mode(&self, mode: HolderMode, elected: bool) {
        *lock(&self.mode) = (mode, elected);
    }

    pub(super) fn keep_turn(&self, turn: super::waiting::Turn) {
        *lock(&self.turn) = Some(turn);
    }

    pub(super) fn take_turn(&self) -> Option<super::waiting::Turn> {
        lock(&self.turn).take()
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
        // A lost lock no longer keeps the other tasks of this process out.
        drop(self.take_turn());
        // The callback runs before watchers are told, so a task woken by
        // the loss sees what the callback did.
        if let Some(cb) = &self.on_lost {
            crate::loss::run_loss_callback(cb, &self.lost_error(why), &self.channel);
        }
        self.lost.send_replace(true);
    }
}

/// What the task needs besides the subscription.
pub(super) struct Options {
    /// The command connection the answers go over (replaced when broken).
    pub(super) cmd: Arc<CommandSlot>,
    pub(super) client: redis::Client,
    pub(super) unavailable: Duration,
    pub(super) self_check: Option<Duration>,
    /// This process's queue for the channel: foreign contenders seen in
    /// the replies to pings are told to the server-side queue through it.
    pub(super) local: Arc<super::waiting::LocalQueue>,
}

/// How long a holder keeps waiting for its server's answer to a ping when
/// the server answers no one else either (a stalled server: a long Lua
/// script, `DEBUG SLEEP`, a fork on a loaded host). Nobody can take the
/// lock from a server that does not run commands, so a stall is not a
/// loss; a link that died while the server still answers others is, and is
/// noticed after `2 × unavailable_timeout`.
pub(crate) const STALL_MARGIN: Duration = Duration::from_secs(5);

/// How the task ended.
enum Ended {
    /// Released: the server confirmed the unsubscription.
    Unsubscribed,
    /// Released, but the unsubscription was not confirmed (why).
    Unconfirmed(String),
    /// The subscription died first (reported through the state).
    Died,
}

/// A live subscription and the task that keeps it.
pub(super) struct Subscription {
    shared: Arc<HolderState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Ended>,
}

impl Subscription {
    pub(super) fn start(shared: Arc<HolderState>, pubsub: SubConn, settings: Options) -> Self {
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
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(shared.clone(), pubsub, settings, stopped));
        Self {
            shared,
            stop: Some(stop),
            task,
        }
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

    /// Unsubscribes and closes: returns once the server confirmed that it
    /// no longer counts the subscriber (`Ok`), or with why it could not be
    /// confirmed (`Err`; the socket is closed all the same, and the server
    /// drops the subscriber when it sees the close). A subscription that
    /// had already died counts as gone.
    pub(super) async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ended::Unsubscribed | Ended::Died) => Ok(()),
            Ok(Ended::Unconfirmed(why)) => Err(why),
            Err(e) => Err(format!("the keep-alive task ended abnormally: {e}")),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Check = Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>>;

async fn run(
    shared: Arc<HolderState>,
    pubsub: SubConn,
    s: Options,
    mut stopped: oneshot::Receiver<()>,
) -> Ended {
    let (sink, mut stream) = pubsub.split();
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
    // At most one server ping, one command-connection check, one
    // self-check and one unsubscription in flight; all run beside the read
    // loop so that answering pings never stalls.
    let mut server_ping: Option<Check> = None;
    let mut cmd_check: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut self_check: Option<Check> = None;
    let mut unsubscribe: Option<Check> = None;
    // The replies to pings of the channel, for foreign contenders (as the
    // waiters of this crate watch them): a holder that is about to acquire
    // again must not jump ahead of a Python peer that waits.
    let mut watch: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = {
        let mut sink = sink.clone();
        let channel = shared.channel.clone();
        let within = every;
        Some(Box::pin(async move {
            let pattern = protocol::reply_pattern(&channel);
            if let Ok(Err(e)) = tokio::time::timeout(within, sink.psubscribe(&pattern)).await {
                super::waiting::watch_refused(&channel, &e);
            }
        }))
    };
    let why = loop {
        tokio::select! {
            () = async { watch.as_mut().expect("guarded").await }, if watch.is_some() => {
                watch = None;
            }
            msg = stream.next() => match msg {
                Some((channel, payload)) => {
                    if channel != shared.channel {
                        let _ = s.local.note_reply(&s.cmd, &shared.channel, &channel, &payload);
                        continue;
                    }
                    let Some(response) = protocol::ping_response_channel(&payload) else {
                        continue;
                    };
                    if !answer(&s.cmd, &response, &shared.reply(), s.unavailable).await {
                        diag!(warn,
                            "portalocker: could not answer a ping on Redis lock {:?}",
                            shared.channel
                        );
                    }
                }
                None if unsubscribe.is_some() => {
                    return Ended::Unconfirmed("the connection closed before the server confirmed the unsubscription".into());
                }
                None => break "the subscription connection closed",
            },
            _ = &mut stopped, if unsubscribe.is_none() => {
                let mut sink = sink.clone();
                let channel = shared.channel.clone();
                let within = every;
                unsubscribe = Some(Box::pin(async move {
                    match tokio::time::timeout(within, sink.unsubscribe(&channel)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err("the unsubscription failed"),
                        Err(_) => Err("the server did not confirm the unsubscription in time"),
                    }
                }));
            }
            r = async { unsubscribe.as_mut().expect("guarded").await }, if unsubscribe.is_some() => {
                // Dropping the stream and the sink on return closes the
                // socket.
                return match r {
                    Ok(()) => Ended::Unsubscribed,
                    Err(why) => Ended::Unconfirmed(why.into()),
                };
            }
            _ = ping_tick.tick(), if server_ping.is_none() || cmd_check.is_none() => {
                if server_ping.is_none() {
                    server_ping = Some(Box::pin(ping_server(sink.clone(), s.client.clone(), s.unavailable)));
                }
                if cmd_check.is_none() {
                    cmd_check = Some(Box::pin(check_command(s.cmd.clone(), s.unavailable)));
                }
            }
            r = async { server_ping.as_mut().expect("guarded").await }, if server_ping.is_some() => {
                server_ping = None;
                if let Err(why) = r {
                    break why;
                }
            }
            () = async { cmd_check.as_mut().expect("guarded").await }, if cmd_check.is_some() => {
                cmd_check = None;
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
    Ended::Died
}

/// Publishes one reply; a broken command connection is replaced once.
async fn answer(cmd: &CommandSlot, response: &str, reply: &str, within: Duration) -> bool {
    for _ in 0..2 {
        let Ok(Ok(mut c)) = tokio::time::timeout(within, cmd.get()).await else {
            return false;
        };
        match tokio::time::timeout(within, c.con.publish::<_, _, i64>(response, reply)).await {
            Ok(Ok(_)) => return true,
            // Closed or reset: a new connection may still answer in time.
            Ok(Err(e)) if connection_failed(&e) && !e.is_timeout() => cmd.forget(&c),
            // Refused, or late: a late connection is kept (it may still
            // work); the command check replaces it if it stays slow.
            _ => return false,
        }
    }
    false
}

/// Pings the command connection and replaces it when it broke (the server
/// closed it as idle, someone killed it, the link failed), so that the next
/// ping of the lock channel is answered at once. Never fatal: the
/// subscription, not this connection, is the lock.
async fn check_command(cmd: Arc<CommandSlot>, within: Duration) {
    let Ok(Ok(mut c)) = tokio::time::timeout(within, cmd.get()).await else {
        return;
    };
    let pinged = tokio::time::timeout(
        within,
        redis::cmd("PING").query_async::<redis::Value>(&mut c.con),
    )
    .await;
    match pinged {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if !e.is_timeout() => {
            diag!(
                debug,
                "portalocker: replacing a broken Redis command connection ({e})"
            );
            cmd.forget(&c);
            let _ = tokio::time::timeout(within, cmd.get()).await;
        }
        // Late: open a successor, keeping this one current meanwhile (a
        // slow reconnect must not silence the holder).
        _ => {
            diag!(
                debug,
                "portalocker: the Redis command connection answered late; opening another"
            );
            cmd.replace(&c).await;
        }
    }
}

/// Pings the server over the subscription connection. An answer within
/// `unavailable` is the normal case. Without one, a fresh connection asks
/// whether the server answers anyone: if it does, this link is dead (one
/// more `unavailable` of grace for a reply already on its way); if it does
/// not, the server is stalled and the ping may take up to
/// [`STALL_MARGIN`] more.
async fn ping_server(
    mut sink: SubSink,
    client: redis::Client,
    unavailable: Duration,
) -> Result<(), &'static str> {
    let mut ping = Box::pin(async move { sink.ping().await });
    let first = unavailable.max(Duration::from_millis(100));
    match tokio::time::timeout(first, &mut ping).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(_)) => return Err("the subscription connection failed"),
        Err(_) => {}
    }
    let others = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<redis::Value>(&mut c)
            .await
            .ok()
    };
    let server_answers = matches!(tokio::time::timeout(first, others).await, Ok(Some(_)));
    let (grace, why) = if server_answers {
        (
            first,
            "the server answers other connections but not the subscription's ping",
        )
    } else {
        (
            STALL_MARGIN,
            "the server did not answer a ping for longer than the stall margin",
        )
    };
    match tokio::time::timeout(grace, &mut ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err("the subscription connection failed"),
        Err(_) => Err(why),
    }
}

/// One end-to-end self-check: ping the lock channel from a
/// fresh response subscription and wait for this holder's own reply, which
/// only comes if the held subscription still receives the channel.
async fn check_self(
    client: redis::Client,
    cmd: Arc<CommandSlot>,
    channel: String,
    id: String,
    budget: Duration,
) -> Result<(), &'static str> {
    let run = async {
        let mut ps = client.get_async_pubsub().await.ok()?;
        let response = format!("{channel}-{}", crate::util::unguessable_hex32());
        ps.subscribe(&response).await.ok()?;
        let mut replies = ps.into_on_message();
        let mut c = cmd.get().await.ok()?;
        let _: i64 = c
            .con
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis holder's state calls `on_lost` before it tells watchers
    /// (they were told first before, as the lease-based guards did).
    #[test]
    fn the_on_lost_callback_runs_before_watchers_wake() {
        crate::loss::testing::callback_runs_before_watchers_wake(
            |cb| {
                let state = Arc::new(HolderState::new(
                    "ch".into(),
                    "id".into(),
                    HolderMode::Exclusive,
                    Some(cb),
                ));
                state.status.send_replace(Status::Held);
                state
            },
            HolderState::watch_lost,
            |s| s.fail("gone"),
            |s| assert_eq!(s.lost_reason().as_deref(), Some("gone")),
        );
    }
}
