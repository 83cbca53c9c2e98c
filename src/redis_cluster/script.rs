//! The requests of a [`RedisClusterLock`](super::RedisClusterLock): the
//! scripts that grant, renew and release a record, the `WAIT` for the
//! slot's replicas, and which errors are worth another try. Every request
//! goes to the primary of the slot of the lock's keys.

use std::fmt;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisError, Value};

/// No record: takes the next token and writes the record (`<holder id>
/// <token> <host> <pid>`) with the lease TTL; `G <token>`. A record:
/// `B <remaining ms> <record>`.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  return 'B ' .. redis.call('PTTL', KEYS[1]) .. ' ' .. cur
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 'G ' .. t
";

/// Extends the record if it is still the holder's (`ARGV[1]`); 1, else 0.
/// A write either way when it is ours, so a `WAIT` after it covers it.
const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes the record if it is still the holder's; 1, else 0.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Who holds the lock, from its record.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub(super) holder_id: String,
    host: String,
    pid: String,
    token: u64,
    /// When the record expires unless renewed (`None`: it has no TTL,
    /// someone else wrote it).
    pub(super) expires_in: Option<Duration>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "holder {} on {} pid {} (token {}",
            self.holder_id, self.host, self.pid, self.token
        )?;
        match self.expires_in {
            Some(t) => write!(f, ", record expires in {})", crate::util::Rounded(t)),
            None => write!(f, ", record without a TTL: written by something else)"),
        }
    }
}

pub(super) enum Acquired {
    Granted(u64),
    Busy(Holder),
}

fn route(key: &str) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master))
}

fn eval(script: &str, key: &[String]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(key.len());
    for k in key {
        c.arg(k);
    }
    c
}

/// An answer the lock cannot use: the server's own error when it is one
/// (a script refused by an ACL, `BUSY`, `OOM`; [`transient`] decides by
/// its code), else a protocol error. Neither is a broken connection, so
/// neither is retried unless its code says so.
fn unexpected(what: &str, v: &Value) -> RedisError {
    if let Value::ServerError(e) = v {
        return RedisError::from(e.clone());
    }
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected answer",
        format!("to {what}: {v:?}"),
    ))
}

/// The node answered `ROLE` as a replica: the slot moved (a failover);
/// another try follows it.
fn not_primary() -> RedisError {
    RedisError::from(std::io::Error::other(
        "the node is no longer the primary of the lock's slot",
    ))
}

async fn run(
    conn: &mut ClusterConnection,
    cmd: redis::Cmd,
    key: &str,
) -> Result<Value, RedisError> {
    let routed = conn.route_command(cmd, RoutingInfo::SingleNode(route(key)));
    match tokio::time::timeout(super::REQUEST_TIMEOUT, routed).await {
        Ok(r) => r,
        Err(_) => Err(timeout("a request to the slot's primary")),
    }
}

/// One attempt: `keys` = [record, counter].
pub(super) async fn acquire(
    conn: &mut ClusterConnection,
    keys: &[String; 2],
    holder_id: &str,
    record: &str,
    ttl_ms: u64,
) -> Result<Acquired, RedisError> {
    let mut c = eval(ACQUIRE, keys);
    // The record: "<id> <token> <host> <pid>"; the script puts the token
    // after the id.
    let rest = record
        .strip_prefix(holder_id)
        .unwrap_or(record)
        .trim_start();
    c.arg(holder_id).arg(rest).arg(ttl_ms);
    let v = run(conn, c, &keys[0]).await?;
    let text: String =
        redis::from_redis_value(v.clone()).map_err(|_| unexpected("the grant", &v))?;
    match parse_acquired(&text) {
        // Our own record: an earlier try of this acquisition was granted,
        // but its answer was lost (a timeout, a broken connection). Its
        // token is in the record.
        Some(Acquired::Busy(h)) if h.holder_id == holder_id => Ok(Acquired::Granted(h.token)),
        Some(a) => Ok(a),
        None => Err(unexpected("the grant", &v)),
    }
}

fn parse_acquired(text: &str) -> Option<Acquired> {
    let mut w = text.split(' ');
    match w.next()? {
        "G" => Some(Acquired::Granted(w.next()?.parse().ok()?)),
        "B" => {
            let ms: i64 = w.next()?.parse().ok()?;
            let holder_id = w.next()?.to_string();
            let token = w.next()?.parse().ok()?;
            let host = w.next().unwrap_or("?").to_string();
            let pid = w.next().unwrap_or("?").to_string();
            Some(Acquired::Busy(Holder {
                holder_id,
                host,
                pid,
                token,
                expires_in: u64::try_from(ms).ok().map(Duration::from_millis),
            }))
        }
        _ => None,
    }
}

/// What one renewal found.
pub(super) enum Renewed {
    /// Still ours, and every replica the primary lists has it.
    Confirmed,
    /// Still ours, but not every replica confirmed within the wait.
    Unconfirmed,
    /// The record is gone or someone else's.
    Gone,
}

/// Extends the record `key` of `holder_id` to `ttl_ms` from now and waits
/// up to `wait` for every replica of the slot's primary to have it (and so
/// everything written before it). One pipeline on the primary's
/// connection: `ROLE`, the script, `WAIT` (for as many replicas as `ROLE`
/// lists; asked again with the right number if it listed more than the
/// last time).
pub(super) async fn renew(
    conn: &mut ClusterConnection,
    key: &str,
    holder_id: &str,
    ttl_ms: u64,
    wait: Duration,
    replicas_hint: &std::sync::atomic::AtomicUsize,
) -> Result<Renewed, RedisError> {
    use std::sync::atomic::Ordering;
    loop {
        let n = replicas_hint.load(Ordering::Relaxed);
        let mut p = redis::pipe();
        p.add_command(redis::cmd("ROLE"));
        let mut c = eval(RENEW, &[key.to_string()]);
        c.arg(holder_id).arg(ttl_ms);
        p.add_command(c);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        p.add_command(redis::cmd("WAIT").arg(n).arg(wait_ms).clone());
        let sent = conn.route_pipeline(p, 0, 3, route(key));
        let limit = wait + super::REQUEST_TIMEOUT;
        let answers = match tokio::time::timeout(limit, sent).await {
            Ok(r) => r?,
            Err(_) => return Err(timeout("a renewal")),
        };
        let [role, ours, acked] = answers.as_slice() else {
            return Err(unexpected("a renewal", &Value::Array(answers)));
        };
        let replicas = match role {
            Value::ServerError(_) => return Err(unexpected("ROLE", role)),
            _ => replicas_of(role).ok_or_else(not_primary)?,
        };
        let ours: i64 =
            redis::from_redis_value(ours.clone()).map_err(|_| unexpected("the renewal", ours))?;
        let acked: usize =
            redis::from_redis_value(acked.clone()).map_err(|_| unexpected("WAIT", acked))?;
        if ours != 1 {
            return Ok(Renewed::Gone);
        }
        if replicas > n {
            // More replicas than waited for: ask again for all of them.
            replicas_hint.store(replicas, Ordering::Relaxed);
            continue;
        }
        replicas_hint.store(replicas, Ordering::Relaxed);
        return Ok(if acked >= replicas {
            Renewed::Confirmed
        } else {
            Renewed::Unconfirmed
        });
    }
}

/// How many replicas a primary's `ROLE` lists; `None` for a replica's
/// answer (the slot moved: the caller's retry follows it).
fn replicas_of(role: &Value) -> Option<usize> {
    let Value::Array(items) = role else {
        return None;
    };
    let kind: String = redis::from_redis_value(items.first()?.clone()).ok()?;
    if kind != "master" {
        return None;
    }
    match items.get(2)? {
        Value::Array(r) => Some(r.len()),
        _ => None,
    }
}

/// Deletes the record if it is still `holder_id`'s; `Ok(false)` if it was
/// not.
pub(super) async fn release(
    conn: &mut ClusterConnection,
    key: &str,
    holder_id: &str,
) -> Result<bool, RedisError> {
    let mut c = eval(RELEASE, &[key.to_string()]);
    c.arg(holder_id);
    let v = run(conn, c, key).await?;
    let n: i64 = redis::from_redis_value(v.clone()).map_err(|_| unexpected("the release", &v))?;
    Ok(n == 1)
}

/// Whether another try may succeed: a redirection or a migration
/// (`MOVED`, `ASK`, `TRYAGAIN`), a failover or a restart (`CLUSTERDOWN`,
/// `MASTERDOWN`, `LOADING`, `READONLY`, and `UNBLOCKED`, which a `WAIT`
/// gets when its primary is demoted), a primary short of the replicas
/// `min-replicas-to-write` asks for (`NOREPLICAS`), a broken or silent
/// connection. Any other answer of the server (an ACL's refusal, `BUSY`,
/// `OOM`) is an error at once.
pub(super) fn transient(e: &RedisError) -> bool {
    if e.is_cluster_error() {
        return true;
    }
    if matches!(
        e.code(),
        Some(
            "MASTERDOWN"
                | "LOADING"
                | "READONLY"
                | "CLUSTERDOWN"
                | "TRYAGAIN"
                | "MOVED"
                | "ASK"
                | "UNBLOCKED"
                | "NOREPLICAS"
        )
    ) {
        return true;
    }
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// A hint for an error an ACL caused: what the lock needs.
pub(super) fn acl_hint(e: &RedisError) -> &'static str {
    let text = e.to_string();
    if e.code() == Some("NOPERM") || text.contains("can't run this command") {
        " (an ACL refused it: the lock needs ~portalocker:* and +eval +get +pttl +incr +set \
         +pexpire +del +role +wait +cluster|slots on every node)"
    } else {
        ""
    }
}

pub(super) fn timeout(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors the server sends as answers inside a script's or a
    /// pipeline's reply: the failover's are tried again, an ACL's refusal
    /// is not, and neither is an answer of the wrong shape.
    #[test]
    fn server_errors_in_answers_are_classified_by_their_code() {
        let answer =
            |raw: &str| unexpected("test", &redis::parse_redis_value(raw.as_bytes()).unwrap());
        for raw in [
            "-UNBLOCKED force unblock from blocking operation, instance state changed\r\n",
            "-NOREPLICAS Not enough good replicas to write.\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
        ] {
            assert!(transient(&answer(raw)), "{raw}");
        }
        for raw in [
            "-ERR The user executing the script can't run this command or subcommand\r\n",
            "-NOPERM this user has no permissions to run the 'wait' command\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            ":7\r\n",
        ] {
            assert!(!transient(&answer(raw)), "{raw}");
        }
        assert!(transient(&not_primary()));
        assert!(acl_hint(&answer(
            "-NOPERM no permissions to run the 'wait' command\r\n"
        ))
        .contains("+wait"));
        assert_eq!(acl_hint(&answer("-BUSY busy\r\n")), "");
    }

    #[test]
    fn records_parse() {
        match parse_acquired("G 42") {
            Some(Acquired::Granted(42)) => {}
            _ => panic!("a grant"),
        }
        match parse_acquired("B 1500 abc 7 host-a 123") {
            Some(Acquired::Busy(h)) => {
                assert_eq!(h.holder_id, "abc");
                assert_eq!(h.token, 7);
                assert_eq!(h.expires_in, Some(Duration::from_millis(1500)));
                let text = h.to_string();
                assert!(text.contains("host-a") && text.contains("123"), "{text}");
            }
            _ => panic!("busy"),
        }
        // A record with no TTL (someone wrote it without one): busy, with
        // no expiry to wait for.
        match parse_acquired("B -1 abc 7 h 1") {
            Some(Acquired::Busy(h)) => {
                assert_eq!(h.expires_in, None);
                assert!(h.to_string().contains("without a TTL"), "{h}");
            }
            _ => panic!("busy"),
        }
        assert!(parse_acquired("X").is_none());
        assert!(parse_acquired("G x").is_none());
    }

    #[test]
    fn role_answers_count_replicas() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let primary = Value::Array(vec![
            s("master"),
            Value::Int(10),
            Value::Array(vec![Value::Array(vec![s("127.0.0.1"), s("7003"), s("10")])]),
        ]);
        assert_eq!(replicas_of(&primary), Some(1));
        let replica = Value::Array(vec![s("slave"), s("127.0.0.1"), Value::Int(7000)]);
        assert_eq!(replicas_of(&replica), None);
    }
}
