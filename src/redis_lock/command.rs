//! The command connection of a [`RedisLock`](super::RedisLock): counts,
//! pings, replies, fencing and reaping go over it. It is created on first
//! use, shared by every acquisition and holder of the lock value, and
//! replaced when it breaks — also while a lock is held, because a holder
//! answers pings through it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::RedisError;

use super::attempt::timeout_error;

/// One shared command connection and how to make a new one.
pub(super) struct CommandSlot {
    client: redis::Client,
    /// Bounds opening a connection.
    connect_within: Duration,
    /// Bounds each round trip: `max(unavailable_timeout, 500 ms)`, so that
    /// no command outlives the patience the lock has for holders.
    respond_within: Duration,
    /// The connection and its generation: a user that saw a connection
    /// fail forgets that generation only, never a newer replacement.
    con: tokio::sync::Mutex<(u64, Option<MultiplexedConnection>)>,
}

/// A connection handed out by [`CommandSlot::get`], with its generation.
pub(super) struct Command {
    pub(super) con: MultiplexedConnection,
    generation: u64,
}

impl CommandSlot {
    pub(super) fn new(client: redis::Client, unavailable: Duration) -> Self {
        Self {
            client,
            connect_within: unavailable.max(Duration::from_secs(1)),
            respond_within: unavailable.max(Duration::from_millis(500)),
            con: tokio::sync::Mutex::new((0, None)),
        }
    }

    /// The current connection, opened (within the connect bound) if there
    /// is none.
    pub(super) async fn get(&self) -> Result<Command, RedisError> {
        let mut slot = self.con.lock().await;
        if let Some(c) = slot.1.as_ref() {
            return Ok(Command {
                con: c.clone(),
                generation: slot.0,
            });
        }
        let con = tokio::time::timeout(
            self.connect_within,
            self.client.get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_within))
                    .set_response_timeout(Some(self.respond_within)),
            ),
        )
        .await
        .map_err(|_| timeout_error("connecting to Redis"))??;
        slot.0 += 1;
        slot.1 = Some(con.clone());
        Ok(Command {
            con,
            generation: slot.0,
        })
    }

    /// Drops `broken`'s connection if it is still the current one, so the
    /// next [`get`](Self::get) opens a new one.
    pub(super) async fn forget(&self, broken: &Command) {
        let mut slot = self.con.lock().await;
        if slot.0 == broken.generation {
            slot.1 = None;
        }
    }

    /// Drops the current connection, whichever it is.
    pub(super) async fn forget_any(&self) {
        self.con.lock().await.1 = None;
    }
}

/// Whether a command failed because its connection did (so a new
/// connection may succeed), rather than because the server refused it.
pub(super) fn connection_failed(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || e.is_connection_refusal()
}
