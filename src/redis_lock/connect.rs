//! The holder's subscription connection, named before it subscribes.
//!
//! A holder is recognised by its client name (`CLIENT LIST` shows it;
//! contenders reap silent holders by it), so the subscription connection
//! must carry the name before it subscribes or is counted.
//!
//! * **TCP and Unix sockets (RESP2).** redis-rs's `PubSub` cannot send
//!   `CLIENT SETNAME`, so the handshake — `AUTH` where configured, then
//!   `CLIENT SETNAME` — is sent here on the raw socket, which is then
//!   handed to `PubSub::new` with settings that no longer carry the
//!   password: `AUTH` goes over the wire once.
//! * **TLS (feature `redis-tls`, RESP3).** The TLS stream is redis-rs's
//!   own (it alone knows the client's certificates), and a RESP3
//!   connection may send commands while subscribed: redis-rs connects it
//!   (`HELLO 3` with the credentials), `CLIENT SETNAME` is its first
//!   command, and `SUBSCRIBE` follows; messages arrive as pushes. TLS needs
//!   Redis 6, which has RESP3.

use redis::aio::{MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::{
    ConnectionAddr, ConnectionInfo, PushInfo, PushKind, RedisConnectionInfo, RedisResult, Value,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::UnboundedReceiver;

use super::errors::AttemptError;
use super::OP;
use crate::error::{Error, ErrorKind};

/// The longest handshake reply accepted (an error message, in practice).
const MAX_REPLY: u64 = 16 * 1024;

/// A socket for the subscription connection.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A named subscription connection, not yet subscribed.
pub(super) enum SubConn {
    Resp2(PubSub),
    #[cfg_attr(not(feature = "redis-tls"), allow(dead_code))]
    Resp3(MultiplexedConnection, UnboundedReceiver<PushInfo>),
}

/// The sending half of a subscription connection (cheap to clone).
#[derive(Clone)]
pub(super) enum SubSink {
    Resp2(PubSubSink),
    Resp3(MultiplexedConnection),
}

/// The receiving half: the messages of the subscribed channel and of the
/// subscribed patterns.
pub(super) enum SubStream {
    Resp2(PubSubStream),
    Resp3(UnboundedReceiver<PushInfo>),
}

impl SubConn {
    /// Subscribes, returning once the server confirmed.
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Resp2(ps) => ps.subscribe(channel).await,
            Self::Resp3(con, _) => con.subscribe(channel).await,
        }
    }

    pub(super) fn split(self) -> (SubSink, SubStream) {
        match self {
            Self::Resp2(ps) => {
                let (sink, stream) = ps.split();
                (SubSink::Resp2(sink), SubStream::Resp2(stream))
            }
            Self::Resp3(con, pushes) => (SubSink::Resp3(con), SubStream::Resp3(pushes)),
        }
    }
}

impl SubSink {
    pub(super) async fn ping(&mut self) -> RedisResult<Value> {
        match self {
            Self::Resp2(sink) => sink.ping().await,
            Self::Resp3(con) => redis::cmd("PING").query_async(con).await,
        }
    }

    /// Subscribes to a pattern, returning once the server confirmed.
    pub(super) async fn psubscribe(&mut self, pattern: &str) -> RedisResult<()> {
        match self {
            Self::Resp2(sink) => sink.psubscribe(pattern).await,
            Self::Resp3(con) => con.psubscribe(pattern).await,
        }
    }

    /// Unsubscribes, returning once the server confirmed.
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Resp2(sink) => sink.unsubscribe(channel).await,
            Self::Resp3(con) => con.unsubscribe(channel).await,
        }
    }
}

impl SubStream {
    /// The next message: its channel and payload. `None`: the connection
    /// closed.
    pub(super) async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        use futures_util::StreamExt;
        match self {
            Self::Resp2(stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_string(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Self::Resp3(pushes) => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::Message => {
                        if let [Value::BulkString(ch), Value::BulkString(payload)] =
                            push.data.as_slice()
                        {
                            return Some((
                                String::from_utf8_lossy(ch).into_owned(),
                                payload.clone(),
                            ));
                        }
                    }
                    PushKind::PMessage => {
                        if let [_, Value::BulkString(ch), Value::BulkString(payload)] =
                            push.data.as_slice()
                        {
                            return Some((
                                String::from_utf8_lossy(ch).into_owned(),
                                payload.clone(),
                            ));
                        }
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

/// Opens a subscription connection named `name`.
pub(super) async fn named_subscription(
    info: &ConnectionInfo,
    name: &str,
) -> Result<SubConn, AttemptError> {
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return over_tls(info, name).await;
    }
    let sock = open(info).await?;
    let settings = info.redis_settings();
    let sock = handshake(sock, settings, name).await?;
    PubSub::new(&without_auth(settings), sock)
        .await
        .map(SubConn::Resp2)
        .map_err(AttemptError::classify)
}

/// Why `addr` cannot carry a lock, checked before anything connects.
pub(super) fn unsupported(addr: &ConnectionAddr) -> Option<String> {
    match addr {
        ConnectionAddr::Tcp(..) => None,
        #[cfg(unix)]
        ConnectionAddr::Unix(_) => None,
        #[cfg(feature = "redis-tls")]
        ConnectionAddr::TcpTls { .. } => None,
        #[cfg(not(feature = "redis-tls"))]
        ConnectionAddr::TcpTls { host, port, .. } => Some(format!(
            "rediss://{host}:{port}: TLS needs portalocker's `redis-tls` feature"
        )),
        #[cfg(not(unix))]
        ConnectionAddr::Unix(path) => Some(format!(
            "{}: Unix-socket servers are supported on Unix only",
            path.display()
        )),
        other => Some(format!(
            "{other}: only TCP, TLS (feature `redis-tls`) and, on Unix, Unix-socket servers are \
             supported"
        )),
    }
}

/// A RESP3 connection over redis-rs's TLS, named by its first command.
#[cfg(feature = "redis-tls")]
async fn over_tls(info: &ConnectionInfo, name: &str) -> Result<SubConn, AttemptError> {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.clone().set_redis_settings(settings))
        .map_err(AttemptError::classify)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Every wait on this connection has its own bound.
    let config = redis::AsyncConnectionConfig::new()
        .set_push_sender(tx)
        .set_connection_timeout(None)
        .set_response_timeout(None);
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(AttemptError::classify)?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| {
            AttemptError::Fatal(Error::new(ErrorKind::Redis, OP).with_reason(format!(
                "naming the subscription connection {name:?} failed: {e}"
            )))
        })?;
    Ok(SubConn::Resp3(con, rx))
}

#[cfg(not(feature = "redis-tls"))]
async fn over_tls(info: &ConnectionInfo, _name: &str) -> Result<SubConn, AttemptError> {
    Err(AttemptError::Fatal(Error::invalid(
        OP,
        unsupported(info.addr()).unwrap_or_default(),
    )))
}

async fn open(info: &ConnectionInfo) -> Result<Box<dyn Io>, AttemptError> {
    let transient = |e: std::io::Error| AttemptError::Transient(e.into());
    if let Some(local) = crate::sys::connect_local(info.addr()).await {
        return Ok(Box::new(local.map_err(transient)?));
    }
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(transient)?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        other => Err(AttemptError::Fatal(Error::invalid(
            OP,
            unsupported(other).unwrap_or_else(|| format!("{other}: not supported")),
        ))),
    }
}

/// Sends `AUTH` (if configured) and `CLIENT SETNAME` in one write and
/// reads one reply per command.
async fn handshake(
    sock: Box<dyn Io>,
    settings: &RedisConnectionInfo,
    name: &str,
) -> Result<Box<dyn Io>, AttemptError> {
    let mut packed = Vec::new();
    let mut what = Vec::new();
    if let Some(pw) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            auth.arg(user);
        }
        packed.extend(auth.arg(pw).get_packed_command());
        what.push("authenticating");
    }
    packed.extend(
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .get_packed_command(),
    );
    what.push("naming");
    let mut sock = BufReader::new(sock);
    sock.write_all(&packed)
        .await
        .map_err(|e| AttemptError::Transient(e.into()))?;
    // Every reply is read, so an error in the first does not leave the
    // second for `PubSub` to misread.
    let mut failure = None;
    for what in what {
        if let Err(e) = read_reply(&mut sock).await? {
            failure.get_or_insert((what, e));
        }
    }
    if let Some((what, e)) = failure {
        // A server restarting or failing over: worth another attempt.
        let code = e
            .trim_start_matches('-')
            .split([' ', ':'])
            .next()
            .unwrap_or("");
        if matches!(code, "LOADING" | "MASTERDOWN") {
            return Err(AttemptError::Transient(redis::RedisError::from(
                std::io::Error::other(format!(
                    "{what} the subscription connection {name:?} failed: {e}"
                )),
            )));
        }
        let why = match super::errors::refusal_in(&e) {
            Some(why) => format!("{why}: "),
            None => String::new(),
        };
        return Err(AttemptError::Fatal(
            Error::new(ErrorKind::Redis, OP).with_reason(format!(
                "{why}{what} the subscription connection {name:?} failed: {e}"
            )),
        ));
    }
    if !sock.buffer().is_empty() {
        return Err(protocol_error(
            "the server sent more than the handshake's replies",
        ));
    }
    Ok(sock.into_inner())
}

/// Reads one handshake reply: `Ok(Ok(()))` for `+OK`, `Ok(Err(message))`
/// for a server error. The reply is parsed by redis-rs's RESP parser;
/// anything but a simple status or error (or a reply over [`MAX_REPLY`]
/// bytes) is a protocol error.
async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Result<Result<(), String>, AttemptError> {
    let mut line = Vec::new();
    let n = r
        .take(MAX_REPLY)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| AttemptError::Transient(e.into()))?;
    if n == 0 {
        return Err(AttemptError::Transient(
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error("a handshake reply is truncated or too long"));
    }
    match redis::parse_redis_value(&line) {
        Ok(Value::Okay) => Ok(Ok(())),
        Ok(Value::SimpleString(s)) if s == "OK" => Ok(Ok(())),
        Ok(Value::ServerError(e)) => Ok(Err(e.to_string())),
        // Some versions surface an error reply as an `Err`.
        Err(e) if line.starts_with(b"-") => Ok(Err(e.to_string())),
        _ => Err(protocol_error("unexpected handshake reply")),
    }
}

fn protocol_error(why: &str) -> AttemptError {
    AttemptError::Fatal(Error::new(ErrorKind::Redis, OP).with_reason(why.to_string()))
}

/// `settings` without the credentials (already sent by [`handshake`]).
fn without_auth(settings: &RedisConnectionInfo) -> RedisConnectionInfo {
    let plain = RedisConnectionInfo::default()
        .set_db(settings.db())
        .set_protocol(settings.protocol());
    if settings.skip_set_lib_name() {
        plain.set_skip_set_lib_name()
    } else if let (Some(name), Some(ver)) = (settings.lib_name(), settings.lib_ver()) {
        plain.set_lib_name(name, ver)
    } else {
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reply(bytes: &[u8]) -> Result<Result<(), String>, AttemptError> {
        read_reply(&mut BufReader::new(bytes)).await
    }

    #[tokio::test]
    async fn replies_are_parsed_whole() {
        assert!(matches!(reply(b"+OK\r\n").await, Ok(Ok(()))));
        match reply(b"-WRONGPASS invalid username-password pair\r\n").await {
            Ok(Err(e)) => assert!(e.contains("WRONGPASS"), "{e}"),
            _ => panic!("an error reply is a server error"),
        }
        for bad in [&b"+OK"[..], b":1\r\n", b"$2\r\nOK\r\n", b"garbage\r\n"] {
            assert!(
                matches!(reply(bad).await, Err(AttemptError::Fatal(_))),
                "{bad:?} is a protocol error"
            );
        }
        assert!(matches!(reply(b"").await, Err(AttemptError::Transient(_))));
        let long = [b"-".as_slice(), &vec![b'x'; 20_000], b"\r\n"].concat();
        assert!(matches!(reply(&long).await, Err(AttemptError::Fatal(_))));
    }

    #[tokio::test]
    async fn two_replies_in_one_read_are_two_replies() {
        let mut r = BufReader::new(&b"+OK\r\n-ERR no\r\n"[..]);
        assert!(matches!(read_reply(&mut r).await, Ok(Ok(()))));
        assert!(matches!(read_reply(&mut r).await, Ok(Err(_))));
    }

    #[test]
    fn credentials_are_dropped_and_the_rest_kept() {
        let s = RedisConnectionInfo::default()
            .set_username("u")
            .set_password("p")
            .set_db(3)
            .set_skip_set_lib_name();
        let plain = without_auth(&s);
        assert_eq!(plain.password(), None);
        assert_eq!(plain.username(), None);
        assert_eq!(plain.db(), 3);
        assert!(plain.skip_set_lib_name());
    }
}
