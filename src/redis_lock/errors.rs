//! What a Redis error means for an acquisition: retried (a failover, a
//! broken connection), or the end of it (a refused permission, a limit),
//! and the crate errors that say so.

use std::time::Duration;

use redis::RedisError;

use super::OP;
use crate::error::{Error, ErrorKind};

pub(super) enum AttemptError {
    /// A connection or timeout error: costs this attempt only.
    Transient(RedisError),
    /// Anything else ends `acquire`.
    Fatal(Error),
}

/// A refused channel permission, naming the channel and what it is for.
pub(super) fn channel_refused(e: RedisError, channel: &str, what: &str) -> Error {
    Error::new(ErrorKind::Redis, OP)
        .with_reason(format!(
            "the Redis user may not use the channel {channel:?}, {what} (docs/redis-permissions.md \
             lists every channel, key and command the lock needs): {e}"
        ))
        .with_source(e)
}

/// An error of `CLIENT LIST`/`CLIENT KILL` while reaping; a refused
/// permission says what the lock needs them for.
pub(super) fn reap_refused(e: RedisError) -> AttemptError {
    if e.code() == Some("NOPERM") {
        return AttemptError::Fatal(
            Error::new(ErrorKind::Redis, OP)
                .with_reason(format!(
                    "a holder did not answer and must be reaped with CLIENT LIST and CLIENT \
                     KILL, which this Redis user may not run: {e}"
                ))
                .with_source(e),
        );
    }
    AttemptError::classify(e)
}

/// Why the server refuses in a way no retry within this call can fix
/// (a limit, a missing permission, an overload), named for the error
/// message; `None` for anything else.
pub(super) fn refusal(e: &RedisError) -> Option<&'static str> {
    match e.code() {
        Some("NOPERM") => Some("the Redis user lacks a permission the lock needs"),
        Some("BUSY") => Some("the server is busy running a script or function (BUSY)"),
        _ => refusal_in(&e.to_string()),
    }
}

/// [`refusal`] for an error reply's text.
pub(super) fn refusal_in(text: &str) -> Option<&'static str> {
    if text.contains("max number of clients reached") {
        return Some("the server has reached its maxclients limit");
    }
    let code = text.trim_start_matches('-').split([' ', ':']).next()?;
    match code {
        "NOPERM" => Some("the Redis user lacks a permission the lock needs"),
        "BUSY" => Some("the server is busy running a script or function (BUSY)"),
        _ => None,
    }
}

/// A connection that broke while opening may have been refused by the
/// server's client limit: Redis accepts it, writes the error and closes,
/// and the error is often lost to a write that fails first. A plain
/// socket that only reads shows it. `Some`: the limit, as an error.
pub(super) async fn diagnose_refused(info: &redis::ConnectionInfo) -> Option<Error> {
    use tokio::io::AsyncReadExt;
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
        return None;
    };
    let read = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), *port))
            .await
            .ok()?;
        let mut buf = [0u8; 128];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].to_vec())
    };
    let greeting = tokio::time::timeout(Duration::from_millis(200), read)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&greeting);
    text.contains("max number of clients reached").then(|| {
        Error::new(ErrorKind::Redis, OP).with_reason(format!(
            "the server has reached its maxclients limit and refuses new connections: {}",
            text.trim_start_matches('-').trim_end()
        ))
    })
}

impl AttemptError {
    /// [`classify`](Self::classify) for a command on `channel`: a refused
    /// channel permission names the channel and what it is for (`what`,
    /// with the ACL rule that allows it); Redis's own message names none.
    pub(super) fn on_channel(e: RedisError, channel: &str, what: &str) -> Self {
        if e.code() == Some("NOPERM") {
            return Self::Fatal(channel_refused(e, channel, what));
        }
        Self::classify(e)
    }

    pub(super) fn classify(e: RedisError) -> Self {
        // A failover or restart in progress: the server was demoted
        // (READONLY), a replica lost its primary (MASTERDOWN), or the server
        // is loading its dataset (LOADING). Later attempts may meet a
        // primary again, so this costs the attempt, not the acquisition.
        if matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING")) {
            return Self::Transient(e);
        }
        if let Some(why) = refusal(&e) {
            return Self::Fatal(
                Error::new(ErrorKind::Redis, OP)
                    .with_reason(format!("{why}: {e}"))
                    .with_source(e),
            );
        }
        let auth = matches!(
            e.kind(),
            redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::Server(_)
        );
        if !auth
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal())
        {
            Self::Transient(e)
        } else {
            Self::Fatal(redis_error_any(e))
        }
    }
}

impl From<AttemptError> for Error {
    fn from(e: AttemptError) -> Self {
        match e {
            AttemptError::Transient(e) => redis_error_any(e),
            AttemptError::Fatal(e) => e,
        }
    }
}

pub(super) fn redis_error(channel: &str, e: RedisError) -> Error {
    Error::new(ErrorKind::Redis, OP)
        .with_channel(channel)
        .with_reason(e.to_string())
        .with_source(e)
}

pub(super) fn redis_error_any(e: RedisError) -> Error {
    Error::new(ErrorKind::Redis, OP)
        .with_reason(e.to_string())
        .with_source(e)
}

pub(super) fn timeout_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
