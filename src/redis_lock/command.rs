//! The command connection of a [`RedisLock`](super::RedisLock): counts,
//! pings, replies, fencing and reaping go over it. It is created on first
//! use, shared by every acquisition and holder of the lock value, and
//! replaced when it breaks — also while a lock is held, because a holder
//! answers pings through it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::RedisError;

use super::errors::timeout_error;

/// One shared command connection and how to make a new one.
///
/// Getting the connection never waits for another task's connect: the
/// slot's state is behind a plain mutex that is never held across an
/// `.await`, and connecting is serialised by a second, async one. A
/// connection that merely answered late (a timeout) stays current, and so
/// keeps answering pings, while [`replace`](CommandSlot::replace) opens its
/// successor; only a connection that failed outright is
/// [`forget`](CommandSlot::forget)-ten at once. So a slow or stalled
/// reconnect never silences a holder whose old connection still works.
pub(super) struct CommandSlot {
    endpoint: std::sync::Arc<super::endpoint::Endpoint>,
    /// Bounds opening a connection.
    connect_within: Duration,
    /// Bounds each round trip: `max(unavailable_timeout, 500 ms)`, so that
    /// no command outlives the patience the lock has for holders.
    respond_within: Duration,
    /// The connection and its generation: a user that saw a connection
    /// fail forgets that generation only, never a newer replacement.
    state: std::sync::Mutex<(u64, Option<MultiplexedConnection>)>,
    /// Held while connecting, so that one connect runs at a time.
    connecting: tokio::sync::Mutex<()>,
    /// The connection generation whose server passed the topology check
    /// ([`CommandSlot::check_topology`]); 0: none yet.
    checked: std::sync::atomic::AtomicU64,
}

/// A connection handed out by [`CommandSlot::get`], with its generation.
pub(super) struct Command {
    pub(super) con: MultiplexedConnection,
    generation: u64,
}

impl CommandSlot {
    pub(super) fn new(
        endpoint: std::sync::Arc<super::endpoint::Endpoint>,
        unavailable: Duration,
    ) -> Self {
        Self {
            endpoint,
            connect_within: unavailable.max(Duration::from_secs(1)),
            respond_within: unavailable.max(Duration::from_millis(500)),
            state: std::sync::Mutex::new((0, None)),
            connecting: tokio::sync::Mutex::new(()),
            checked: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Refuses a server this lock cannot be safe on, once per command
    /// connection (so again after a reconnect, e.g. after a failover): one
    /// round trip with `ROLE` and `INFO cluster`.
    ///
    /// * A **replica** is refused: pub/sub works there, so a lock taken
    ///   through it would be granted while a holder on the primary holds
    ///   it (the two servers count their subscribers apart).
    /// * A **Redis Cluster** node is refused: `PUBSUB NUMSUB` counts the
    ///   subscribers of one node only, so clients on two nodes would both
    ///   be granted the lock.
    ///
    /// A user that may run neither command is warned once and not refused
    /// (nothing can be told); connection errors are left to the attempt,
    /// which reports them.
    ///
    /// `at_start`: the acquisition's first check, where a fixed server that
    /// is a replica is a mistake to report. Later (an attempt after a
    /// reconnect or a `READONLY` answer) it is a passing state, a server
    /// demoted by a failover: `Ok(false)`, and the attempt waits it out.
    pub(super) async fn check_topology(&self, at_start: bool) -> Result<bool, crate::Error> {
        // Through Sentinel, a replica where the primary was means the
        // primary moved (a failover): ask again, a few times.
        for _ in 0..3 {
            match self.check_once(at_start).await {
                Err(Moved) => {
                    self.endpoint.moved();
                    self.forget_any();
                }
                Ok(r) => return r,
            }
        }
        Err(
            crate::Error::new(crate::ErrorKind::Redis, "failed to acquire Redis lock").with_reason(
                format!(
                    "{}: the server named as the primary is a replica, three times (a failover in \
                 progress?)",
                    self.endpoint.name()
                ),
            ),
        )
    }

    async fn check_once(&self, at_start: bool) -> Result<Result<bool, crate::Error>, Moved> {
        use std::sync::atomic::Ordering;
        let Ok(mut c) = self.get().await else {
            return Ok(Ok(true));
        };
        if self.checked.load(Ordering::Relaxed) == c.generation {
            return Ok(Ok(true));
        }
        let role = redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut c.con)
            .await;
        let info = redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut c.con)
            .await;
        let denied = |e: Option<&RedisError>| e.and_then(RedisError::code) == Some("NOPERM");
        let (role_denied, info_denied) = (denied(role.as_ref().err()), denied(info.as_ref().err()));
        if (role.is_err() && !role_denied) || (info.is_err() && !info_denied) {
            // A connection problem: the attempt will meet and report it.
            return Ok(Ok(true));
        }
        let addr = self.endpoint.current().map_or_else(
            || self.endpoint.name().to_string(),
            |c| c.get_connection_info().addr().to_string(),
        );
        match role.as_ref().map(super::protocol::role) {
            Ok(super::protocol::Role::Replica(_)) if self.endpoint.is_sentinel() => {
                return Err(Moved);
            }
            Ok(super::protocol::Role::Replica(_)) if !at_start => return Ok(Ok(false)),
            Ok(super::protocol::Role::Replica(primary)) => {
                let of = primary.map(|p| format!(" of {p}")).unwrap_or_default();
                return Ok(Err(unsupported(format!(
                    "the server {addr} is a replica{of}: a lock taken there is not seen by \
                     holders on the primary, so two clients could both hold it. Point the lock \
                     at the primary (or at the sentinels: redis+sentinel://)"
                ))));
            }
            Ok(super::protocol::Role::Sentinel) => {
                return Ok(Err(unsupported(format!(
                    "the server {addr} is a Redis Sentinel, not a data server: use a \
                     redis+sentinel:// URL (RedisLock::from_url) to lock on the primary it \
                     monitors"
                ))));
            }
            _ => {}
        }
        if let Ok(text) = &info {
            if text.lines().any(|l| l.trim() == "cluster_enabled:1") {
                return Ok(Err(unsupported(format!(
                    "the server {addr} is a Redis Cluster node (cluster_enabled:1): a lock \
                     counts the subscribers of one node only, so clients on different nodes \
                     could both hold it. This lock needs a standalone server (or a primary \
                     with replicas)"
                ))));
            }
        }
        if role_denied || info_denied {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                diag!(
                    warn,
                    "portalocker: this Redis user may not run ROLE and INFO, so the lock cannot \
                     tell whether {addr} is a replica or a Cluster node (where it would not be \
                     safe); grant +role and +info to have it checked"
                );
            }
        }
        self.checked.store(c.generation, Ordering::Relaxed);
        Ok(Ok(true))
    }

    /// Forgets the topology check, so that the next attempt checks again
    /// (after `READONLY`: the server may have been demoted under us).
    pub(super) fn recheck(&self) {
        self.checked.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn current(&self) -> Option<Command> {
        let st = crate::util::lock(&self.state);
        st.1.as_ref().map(|c| Command {
            con: c.clone(),
            generation: st.0,
        })
    }

    /// The current connection, opened (within the connect bound) if there
    /// is none.
    pub(super) async fn get(&self) -> Result<Command, RedisError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _turn = self.connecting.lock().await;
        // Another task may have connected while this one waited its turn.
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let con = self.connect().await?;
        Ok(self.install(con))
    }

    fn install(&self, con: MultiplexedConnection) -> Command {
        let mut st = crate::util::lock(&self.state);
        st.0 += 1;
        st.1 = Some(con.clone());
        Command {
            con,
            generation: st.0,
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let r = tokio::time::timeout(self.connect_within, async {
            let client = self.endpoint.resolve().await?;
            client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_within))
                        .set_response_timeout(Some(self.respond_within)),
                )
                .await
        })
        .await
        .map_err(|_| timeout_error("connecting to Redis"))
        .and_then(|r| r);
        if r.is_err() {
            self.endpoint.moved();
        }
        r
    }

    /// Drops `broken`'s connection if it is still the current one, so the
    /// next [`get`](Self::get) opens a new one. For connections that failed
    /// outright (closed, reset, refused).
    pub(super) fn forget(&self, broken: &Command) {
        let mut st = crate::util::lock(&self.state);
        if st.0 == broken.generation {
            st.1 = None;
        }
    }

    /// Drops the current connection, whichever it is.
    pub(super) fn forget_any(&self) {
        crate::util::lock(&self.state).1 = None;
    }

    /// Opens a successor to `slow` (a connection that answered late) and
    /// makes it current once it is ready. Meanwhile `slow` stays current,
    /// so users keep getting the connection that may still work; if the
    /// new one cannot be opened, `slow` stays. Nothing happens if `slow`
    /// was replaced already or another replacement is under way.
    pub(super) async fn replace(&self, slow: &Command) {
        let Ok(_turn) = self.connecting.try_lock() else {
            return;
        };
        if crate::util::lock(&self.state).0 != slow.generation {
            return;
        }
        if let Ok(con) = self.connect().await {
            let mut st = crate::util::lock(&self.state);
            if st.0 == slow.generation || st.1.is_none() {
                st.0 += 1;
                st.1 = Some(con);
            }
        }
    }

    /// [`replace`](Self::replace) whatever connection is current.
    pub(super) async fn replace_current(&self) {
        if let Some(c) = self.current() {
            self.replace(&c).await;
        }
    }

    /// After `e` on `c`: a timeout replaces the connection in the
    /// background of the caller's wait ([`replace`](Self::replace)), any
    /// other connection failure drops it ([`forget`](Self::forget)).
    pub(super) async fn failed(&self, c: &Command, e: &RedisError) {
        if e.is_timeout() {
            self.replace(c).await;
        } else if connection_failed(e) {
            self.endpoint.moved();
            self.forget(c);
        }
    }
}

/// A check found a replica where a Sentinel named the primary.
struct Moved;

fn unsupported(why: String) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Unsupported,
        "refusing to lock on this Redis server",
    )
    .with_reason(why)
}

/// Whether a command failed because its connection did (so a new
/// connection may succeed), rather than because the server refused it.
pub(super) fn connection_failed(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || e.is_connection_refusal()
}
