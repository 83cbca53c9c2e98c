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
    ConnectionAddr, ConnectionInfo, PushInfo, PushKind, RedisConnectionInfo, RedisError,
    RedisResult, Value,
};
use std::time::Duration;

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

/// Opens a subscription connection named `name` and subscribed to
/// `channel`, on `spare` (opened ahead, see [`Spare`]) where there is one.
/// Naming and subscribing go in one write (after `AUTH` where configured):
/// the server runs them in order, so the connection carries its name
/// before it is counted, and the pair costs one round trip. A refused
/// subscription is `Err(Ok(error))`, for the caller to explain. A spare
/// that turns out broken costs nothing but a fresh connection.
pub(super) async fn named_subscription(
    info: &ConnectionInfo,
    name: &str,
    channel: &str,
    spare: Option<Opened>,
) -> Result<SubConn, Result<RedisError, AttemptError>> {
    let settings = info.redis_settings();
    match spare.map(|s| s.conn) {
        Some(Fresh::Raw(sock)) => match handshake(sock, settings, name, channel).await {
            Ok(sock) => return pubsub(settings, sock).await,
            Err(Err(AttemptError::Transient(_))) => {}
            Err(e) => return Err(e),
        },
        #[cfg(feature = "redis-tls")]
        Some(Fresh::Tls(con, pushes)) => match tls_subscribe(con, pushes, name, channel).await {
            Ok(sub) => return Ok(sub),
            Err(TlsFailure::Broken) => {}
            Err(TlsFailure::Other(e)) => return Err(e),
        },
        None => {}
    }
    match Fresh::open(info).await.map_err(Err)? {
        Fresh::Raw(sock) => {
            let sock = handshake(sock, settings, name, channel).await?;
            pubsub(settings, sock).await
        }
        #[cfg(feature = "redis-tls")]
        Fresh::Tls(con, pushes) => tls_subscribe(con, pushes, name, channel)
            .await
            .map_err(|e| match e {
                TlsFailure::Broken => Err(AttemptError::Transient(RedisError::from(
                    std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                ))),
                TlsFailure::Other(e) => e,
            }),
    }
}

/// Hands a subscribed socket to redis-rs's `PubSub`.
async fn pubsub(
    settings: &RedisConnectionInfo,
    sock: Box<dyn Io>,
) -> Result<SubConn, Result<RedisError, AttemptError>> {
    PubSub::new(&without_auth(settings), sock)
        .await
        .map(SubConn::Resp2)
        .map_err(|e| Err(AttemptError::classify(e)))
}

/// How long a spare connection is trusted. An older one is closed unused:
/// a NAT or a firewall on the way may have dropped it without a word, and
/// the attempt would wait for the silence to time out.
const SPARE_MAX_AGE: Duration = Duration::from_secs(60);

/// The longest a spare connection may take to open.
const SPARE_CONNECT: Duration = Duration::from_secs(10);

/// A connection to the server, open but not yet named or subscribed.
enum Fresh {
    Raw(Box<dyn Io>),
    #[cfg(feature = "redis-tls")]
    Tls(MultiplexedConnection, UnboundedReceiver<PushInfo>),
}

impl Fresh {
    async fn open(info: &ConnectionInfo) -> Result<Self, AttemptError> {
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            return tls_open(info).await;
        }
        open(info).await.map(Self::Raw)
    }

    /// Whether the server has neither closed it nor sent anything (an idle
    /// connection gets nothing but an error such as `maxclients`).
    fn still_open(&mut self) -> bool {
        match self {
            Self::Raw(sock) => {
                let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
                let mut byte = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                std::pin::Pin::new(sock)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
            #[cfg(feature = "redis-tls")]
            Self::Tls(_, pushes) => pushes.try_recv().is_err() && !pushes.is_closed(),
        }
    }
}

/// A connection opened ahead of the next attempt, and the server it was
/// opened for.
pub(super) struct Opened {
    conn: Fresh,
    addr: ConnectionAddr,
    /// The credentials a TLS connection authenticated with (a plain socket
    /// sends them with its handshake).
    user: Option<String>,
    password: Option<String>,
    at: std::time::Instant,
}

/// The connection a lock keeps open for its next attempt
/// ([`RedisLock::preconnect`](super::RedisLock::preconnect)), so that the
/// attempt starts by naming and subscribing (one round trip) instead of
/// connecting first (one more; three over TLS). The next one is opened in
/// the background when an attempt of a value used before takes one, after
/// an attempt that lost, and when an acquisition starts by waiting.
#[derive(Default)]
pub(super) struct Spare {
    ready: std::sync::Mutex<Option<Opened>>,
    opening: std::sync::atomic::AtomicBool,
    /// An attempt of this lock value has subscribed before.
    used: std::sync::atomic::AtomicBool,
}

impl Spare {
    /// The spare, if it is for the server `info` names, young enough and
    /// still open; any other is closed.
    pub(super) fn take(&self, info: &ConnectionInfo) -> Option<Opened> {
        let mut spare = crate::util::lock(&self.ready).take()?;
        let settings = info.redis_settings();
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let same = spare.addr == *info.addr()
            && (!tls
                || (spare.user.as_deref() == settings.username()
                    && spare.password.as_deref() == settings.password()));
        (same && spare.at.elapsed() < SPARE_MAX_AGE && spare.conn.still_open()).then_some(spare)
    }

    /// Whether an earlier attempt of this lock value subscribed (and so
    /// the value is used more than once); marks this one.
    pub(super) fn used_before(&self) -> bool {
        self.used.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the next spare in the background, unless one is ready or on
    /// its way. Failures are silent: an attempt that finds no spare
    /// connects itself and reports what goes wrong.
    pub(super) fn refill(self: &std::sync::Arc<Self>, info: &ConnectionInfo) {
        use std::sync::atomic::Ordering;
        if crate::util::lock(&self.ready).is_some() || self.opening.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = std::sync::Arc::downgrade(self);
        let info = info.clone();
        tokio::spawn(async move {
            let opened = tokio::time::timeout(SPARE_CONNECT, Fresh::open(&info)).await;
            // A lock dropped meanwhile closes the connection here.
            let Some(me) = me.upgrade() else {
                return;
            };
            if let Ok(Ok(conn)) = opened {
                let settings = info.redis_settings();
                *crate::util::lock(&me.ready) = Some(Opened {
                    conn,
                    addr: info.addr().clone(),
                    user: settings.username().map(str::to_string),
                    password: settings.password().map(str::to_string),
                    at: std::time::Instant::now(),
                });
            }
            me.opening.store(false, Ordering::Release);
        });
    }
}

/// A socket whose first bytes were already read (into `head`): messages
/// the server sent right after the handshake's last reply.
struct Prefixed {
    head: Vec<u8>,
    at: usize,
    inner: Box<dyn Io>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.head.len() {
            let n = (me.head.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.head[me.at..me.at + n]);
            me.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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

/// A RESP3 connection over redis-rs's TLS (`HELLO 3` with the
/// credentials), not yet named: messages will arrive as pushes.
#[cfg(feature = "redis-tls")]
async fn tls_open(info: &ConnectionInfo) -> Result<Fresh, AttemptError> {
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
    let con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(AttemptError::classify)?;
    Ok(Fresh::Tls(con, rx))
}

#[cfg(not(feature = "redis-tls"))]
async fn tls_open(info: &ConnectionInfo) -> Result<Fresh, AttemptError> {
    Err(AttemptError::Fatal(Error::invalid(
        OP,
        unsupported(info.addr()).unwrap_or_default(),
    )))
}

/// Why naming and subscribing a TLS connection failed.
#[cfg(feature = "redis-tls")]
enum TlsFailure {
    /// The connection broke: another one may do.
    Broken,
    Other(Result<RedisError, AttemptError>),
}

/// Names the TLS connection by its first command and subscribes it by its
/// second, sent together.
#[cfg(feature = "redis-tls")]
async fn tls_subscribe(
    mut con: MultiplexedConnection,
    pushes: UnboundedReceiver<PushInfo>,
    name: &str,
    channel: &str,
) -> Result<SubConn, TlsFailure> {
    let mut sub = con.clone();
    let mut naming = redis::cmd("CLIENT");
    naming.arg("SETNAME").arg(name);
    // `join!` polls the naming first, which queues its request before the
    // subscription queues its own: one round trip, the name first.
    let (named, subscribed) =
        tokio::join!(naming.query_async::<()>(&mut con), sub.subscribe(channel));
    let broken = |e: &RedisError| e.is_io_error() || e.is_connection_dropped();
    if named.as_ref().err().is_some_and(broken) || subscribed.as_ref().err().is_some_and(broken) {
        return Err(TlsFailure::Broken);
    }
    named.map_err(|e| {
        TlsFailure::Other(Err(AttemptError::Fatal(
            Error::new(ErrorKind::Redis, OP).with_reason(format!(
                "naming the subscription connection {name:?} failed: {e}"
            )),
        )))
    })?;
    subscribed.map_err(|e| TlsFailure::Other(Ok(e)))?;
    Ok(SubConn::Resp3(con, pushes))
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

/// Sends `AUTH` (if configured), `CLIENT SETNAME` and `SUBSCRIBE` in one
/// write and reads one reply per command. Bytes read past the last reply
/// (a message published on the channel at once) stay in the returned
/// socket.
async fn handshake(
    sock: Box<dyn Io>,
    settings: &RedisConnectionInfo,
    name: &str,
    channel: &str,
) -> Result<Box<dyn Io>, Result<RedisError, AttemptError>> {
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
    packed.extend(redis::cmd("SUBSCRIBE").arg(channel).get_packed_command());
    let mut sock = BufReader::new(sock);
    sock.write_all(&packed)
        .await
        .map_err(|e| Err(AttemptError::Transient(e.into())))?;
    // Every reply is read, so an error in one does not leave the next for
    // `PubSub` to misread.
    let mut failure = None;
    for what in what {
        if let Err(e) = read_reply(&mut sock).await.map_err(Err)? {
            failure.get_or_insert((what, e));
        }
    }
    let subscribed = read_subscribed(&mut sock, channel).await.map_err(Err)?;
    if let Some((what, e)) = failure {
        return Err(Err(handshake_failure(what, name, &e)));
    }
    subscribed.map_err(Ok)?;
    let head = sock.buffer().to_vec();
    Ok(Box::new(Prefixed {
        head,
        at: 0,
        inner: sock.into_inner(),
    }))
}

/// The error for a failed `AUTH` or `CLIENT SETNAME` reply `e`.
fn handshake_failure(what: &str, name: &str, e: &str) -> AttemptError {
    // A server restarting or failing over: worth another attempt.
    let code = e
        .trim_start_matches('-')
        .split([' ', ':'])
        .next()
        .unwrap_or("");
    if matches!(code, "LOADING" | "MASTERDOWN") {
        return AttemptError::Transient(RedisError::from(std::io::Error::other(format!(
            "{what} the subscription connection {name:?} failed: {e}"
        ))));
    }
    let why = match super::errors::refusal_in(e) {
        Some(why) => format!("{why}: "),
        None => String::new(),
    };
    AttemptError::Fatal(Error::new(ErrorKind::Redis, OP).with_reason(format!(
        "{why}{what} the subscription connection {name:?} failed: {e}"
    )))
}

/// Reads the reply to `SUBSCRIBE channel`: `Ok(Ok(()))` for the
/// confirmation (`subscribe`, the channel, a count), `Ok(Err(error))` for
/// the server's error; anything else is a protocol error.
async fn read_subscribed<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    channel: &str,
) -> Result<Result<(), RedisError>, AttemptError> {
    let first = read_line(r).await?;
    if first.starts_with(b"-") {
        return match redis::parse_redis_value(&first) {
            Ok(Value::ServerError(e)) => Ok(Err(e.into())),
            Err(e) => Ok(Err(e)),
            _ => Err(protocol_error("unexpected subscription reply")),
        };
    }
    if first != b"*3\r\n" {
        return Err(protocol_error("unexpected subscription reply"));
    }
    let kind = read_bulk(r).await?;
    let named = read_bulk(r).await?;
    let count = read_line(r).await?;
    if !kind.eq_ignore_ascii_case(b"subscribe")
        || named != channel.as_bytes()
        || !count.starts_with(b":")
    {
        return Err(protocol_error("unexpected subscription reply"));
    }
    Ok(Ok(()))
}

/// One `\r\n`-terminated line of at most [`MAX_REPLY`] bytes.
async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Vec<u8>, AttemptError> {
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
    Ok(line)
}

/// One bulk string (`$len`, the bytes, `\r\n`) of at most [`MAX_REPLY`]
/// bytes: its bytes.
async fn read_bulk<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Vec<u8>, AttemptError> {
    let head = read_line(r).await?;
    let len = std::str::from_utf8(&head[..head.len() - 2])
        .ok()
        .and_then(|h| h.strip_prefix('$'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n <= MAX_REPLY)
        .ok_or_else(|| protocol_error("unexpected subscription reply"))?;
    let mut data = vec![0; usize::try_from(len).unwrap_or(0) + 2];
    r.read_exact(&mut data)
        .await
        .map_err(|e| AttemptError::Transient(e.into()))?;
    if !data.ends_with(b"\r\n") {
        return Err(protocol_error("unexpected subscription reply"));
    }
    data.truncate(data.len() - 2);
    Ok(data)
}

/// Reads one handshake reply: `Ok(Ok(()))` for `+OK`, `Ok(Err(message))`
/// for a server error. The reply is parsed by redis-rs's RESP parser;
/// anything but a simple status or error (or a reply over [`MAX_REPLY`]
/// bytes) is a protocol error.
async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Result<Result<(), String>, AttemptError> {
    let line = read_line(r).await?;
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

/// The settings `PubSub` gets for a connection [`handshake`] already
/// authenticated and subscribed: no credentials, database 0 and no library
/// name, so that it sends nothing (a subscribed connection may only
/// (un)subscribe and ping; channels belong to no database).
fn without_auth(settings: &RedisConnectionInfo) -> RedisConnectionInfo {
    RedisConnectionInfo::default()
        .set_protocol(settings.protocol())
        .set_skip_set_lib_name()
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

    async fn subscribed(bytes: &[u8]) -> Result<Result<(), RedisError>, AttemptError> {
        read_subscribed(&mut BufReader::new(bytes), "ch").await
    }

    #[tokio::test]
    async fn a_subscription_reply_is_checked() {
        assert!(matches!(
            subscribed(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n").await,
            Ok(Ok(()))
        ));
        match subscribed(b"-NOPERM no permissions to access one of the channels\r\n").await {
            Ok(Err(e)) => assert_eq!(e.code(), Some("NOPERM"), "{e}"),
            _ => panic!("a refusal is the server's error"),
        }
        for bad in [
            &b"*3\r\n$9\r\nsubscribe\r\n$2\r\nxx\r\n:1\r\n"[..],
            b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n",
            b"+OK\r\n",
            b"*3\r\n$999999\r\n",
        ] {
            assert!(
                matches!(subscribed(bad).await, Err(AttemptError::Fatal(_))),
                "{bad:?} is a protocol error"
            );
        }
        assert!(matches!(
            subscribed(b"*3\r\n$9\r\nsubs").await,
            Err(AttemptError::Transient(_))
        ));
    }

    /// A message the server sends right after confirming the subscription
    /// (read with the confirmation) reaches the `PubSub` reading the
    /// socket next. Without the carried-over bytes it was lost.
    #[tokio::test]
    async fn bytes_after_the_handshake_are_kept() {
        let (client, mut server) = tokio::io::duplex(4096);
        let served = tokio::spawn(async move {
            let mut request = vec![0; 4096];
            let n = server.read(&mut request).await.unwrap();
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            server
                .write_all(
                    b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
                      *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
                )
                .await
                .unwrap();
            (request, server)
        });
        let Ok(mut sock) = handshake(
            Box::new(client),
            &RedisConnectionInfo::default(),
            "ch-lock-x",
            "ch",
        )
        .await
        else {
            panic!("the handshake failed");
        };
        let (request, _server) = served.await.unwrap();
        let setname = request.find("SETNAME").expect("no SETNAME");
        let subscribe = request.find("SUBSCRIBE").expect("no SUBSCRIBE");
        assert!(setname < subscribe, "named after subscribing: {request:?}");
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        let mut rest = vec![0; message.len()];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sock.read_exact(&mut rest),
        );
        read.await.expect("the message was lost").unwrap();
        assert_eq!(rest, message);
    }

    #[test]
    fn the_subscribed_connection_is_set_up_with_nothing_to_send() {
        let s = RedisConnectionInfo::default()
            .set_username("u")
            .set_password("p")
            .set_db(3)
            .set_lib_name("app", "1.0");
        let plain = without_auth(&s);
        assert_eq!(plain.password(), None);
        assert_eq!(plain.username(), None);
        assert_eq!(plain.db(), 0);
        assert!(plain.skip_set_lib_name());
    }
}
