//! Fencing tokens: drawn on database 0's counter so that they never repeat
//! across databases, and how many replicas must have one before it is
//! handed out.

use redis::aio::MultiplexedConnection;

use super::errors::AttemptError;
use super::{protocol, OP};
use crate::error::{Error, ErrorKind};

/// How many replicas a `ROLE` reply lists (0 if it is not a primary's).
pub(super) fn replicas_of(role: &redis::Value) -> usize {
    match protocol::role(role) {
        protocol::Role::Primary { replicas } => replicas,
        _ => 0,
    }
}

/// Says once that fencing tokens wait for no replica because `ROLE` is
/// refused to this user.
pub(super) fn role_refused_warning() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        diag!(
            warn,
            "portalocker: this Redis user may not run ROLE, so fencing tokens wait for no \
             replica (a failover could repeat one); grant +role, or set fence_replicas to a \
             number"
        );
    }
}

/// Draws a fencing token for a client on database `db` (not 0). A lock
/// channel is the same for every database of a server, but a key is not:
/// an `INCR` in the client's own database would repeat the tokens drawn on
/// another. So database 0's `<channel>-fence` is the counter every
/// database shares, and the token is also raised above this database's
/// own `<channel>-fence` (the counter Python peers on it increment); both
/// counters end at the token. One script, atomic; it ends on the caller's
/// database (Redis before 7.0 kept a script's `SELECT`).
const FENCE_ELSEWHERE: &str = r"
local db = ARGV[1]
redis.call('SELECT', 0)
local shared = redis.call('INCR', KEYS[1])
redis.call('SELECT', db)
local here = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local token = shared
if here >= token then token = here + 1 end
redis.call('SET', KEYS[1], token)
if token > shared then
  redis.call('SELECT', 0)
  redis.call('SET', KEYS[1], token)
  redis.call('SELECT', db)
end
return token
";

pub(super) async fn fence_elsewhere(
    cmd: &mut MultiplexedConnection,
    key: &str,
    db: i64,
) -> std::result::Result<u64, AttemptError> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(FENCE_ELSEWHERE));
    match script.key(key).arg(db).invoke_async::<u64>(cmd).await {
        Ok(t) => Ok(t),
        Err(e) if e.code() == Some("NOPERM") => Err(AttemptError::Fatal(
            Error::new(ErrorKind::Unsupported, OP)
                .with_reason(format!(
                    "fencing on database {db} draws its token with a script (so that tokens \
                         never repeat across databases), which this Redis user may not run ({e}); \
                         allow scripts, or lock through database 0"
                ))
                .with_source(e),
        )),
        Err(e) => Err(AttemptError::classify(e)),
    }
}
