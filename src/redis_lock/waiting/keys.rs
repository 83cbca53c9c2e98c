//! The names of the server-side queue's keys and the side channel, and the
//! scripts that keep the queue.

use std::time::Duration;

/// The message a releasing holder publishes on the side channel.
pub(in crate::redis_lock) const RELEASED: &str = "released";

/// The side channel on which holders of this crate announce releases.
pub(in crate::redis_lock) fn side_channel(channel: &str) -> String {
    format!("{channel} portalocker-released")
}

pub(in crate::redis_lock) fn queue_key(channel: &str) -> String {
    format!("{channel} portalocker-queue")
}

pub(super) fn seen_key(channel: &str) -> String {
    format!("{channel} portalocker-seen")
}

pub(super) fn seq_key(channel: &str) -> String {
    format!("{channel} portalocker-seq")
}

/// The foreign contenders in the queue, scored by when their place lapses.
pub(super) fn foreign_key(channel: &str) -> String {
    format!("{channel} portalocker-foreign")
}

/// The last foreign contender seen holding, until one of this crate's
/// waiters is granted.
pub(super) fn served_key(channel: &str) -> String {
    format!("{channel} portalocker-served")
}

/// The foreign place at the head that a poll saw with the channel free:
/// its turn has come (and is taken once a poll sees the channel busy).
pub(super) fn turn_key(channel: &str) -> String {
    format!("{channel} portalocker-turn")
}

/// How queue members that stand for foreign contenders begin (this
/// crate's own members are 32 hex digits).
pub(super) const FOREIGN: &str = "foreign:";

/// How long a foreign contender keeps its place in the queue after it was
/// last seen waiting. It is seen at each attempt it makes on a busy
/// channel (its own reply to its own ping), so this covers a Python peer
/// whose `check_interval` is up to 1.3 s (its pause is at most 1.5 times
/// that). A peer that pauses longer drops out between attempts and joins
/// again at the back.
pub(in crate::redis_lock) const FOREIGN_TTL: Duration = Duration::from_secs(2);

/// The longest pause between two attempts on a channel that stays busy
/// (unless `check_interval` is longer): a silent holder is reaped within
/// `1.5 × max(MAX_BACKOFF, check_interval) + unavailable_timeout`.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Joins (or stays in) the queue — in arrival order: the score is a counter,
/// so two waiters that join in the same millisecond are never tied —
/// refreshes this waiter's heartbeat, drops
/// waiters whose heartbeat is stale and foreign contenders whose place
/// lapsed, and answers this waiter's rank, the channel's subscriber count
/// and whether any waiter of this crate is ahead (1) or only foreign ones
/// (0), and the foreign contender whose turn the queue gave last (the
/// served key; empty if none since this crate's last grant), atomically
/// and in one round trip. A foreign place at the head
/// whose turn was seen taken (the channel free, then busy, at two polls)
/// is settled here: a Python writer that takes a free lock pings nobody,
/// so its reply may never be seen. The queue is read in chunks of
/// 16 from the head and the reading stops at the first of ours, so a
/// waiter far back in a long queue costs what it did before (foreign
/// places are few: one per waiting Python process).
pub(super) const POLL_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - stale)
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[4], id)
end
for i = 1, 4 do
  if redis.call('PTTL', KEYS[i]) < stale * 4 then
    redis.call('PEXPIRE', KEYS[i], stale * 4)
  end
end
local n = redis.call('PUBSUB', 'NUMSUB', ARGV[3])[2]
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if head and string.sub(head, 1, 8) == 'foreign:' then
  if n == 0 then
    redis.call('SET', KEYS[5], head, 'PX', stale * 4)
  elseif redis.call('GET', KEYS[5]) == head then
    redis.call('ZREM', KEYS[1], head)
    redis.call('ZREM', KEYS[4], head)
    redis.call('DEL', KEYS[5])
    redis.call('SET', KEYS[6], head, 'PX', stale * 4)
  end
end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1]) or 0
local ours = 0
local from = 0
while ours == 0 and from < rank do
  local to = math.min(from + 15, rank - 1)
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], from, to)) do
    if string.sub(id, 1, 8) ~= 'foreign:' then
      ours = 1
      break
    end
  end
  from = to + 1
end
return {rank, n, ours, redis.call('GET', KEYS[6]) or ''}
";

/// Gives a foreign contender seen waiting a place at the back of the queue
/// (or keeps the one it has for another `FOREIGN_TTL`), or settles the
/// turn of one seen holding (once per grant: the served key names the last
/// foreign holder, until one of this crate's waiters is granted). A
/// foreign holder leaves the queue; if it took the turn of another foreign
/// contender at the head (Python peers do not queue among themselves), it
/// hands that one its own later place, so that foreign contenders as a
/// whole get one turn per place and this crate's waiters theirs. KEYS:
/// queue, foreign, seq, served. ARGV: member, `1` (waiting) or `0`, the
/// TTL in ms.
pub(super) const FOREIGN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if ARGV[2] ~= '1' then
  if redis.call('GET', KEYS[4]) == ARGV[1] then
    return 0
  end
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ttl)
  local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if mine and head and head ~= ARGV[1] and string.sub(head, 1, 8) == 'foreign:' then
    redis.call('ZADD', KEYS[1], mine, head)
  end
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
for i = 1, 3 do
  if redis.call('PTTL', KEYS[i]) < ttl * 4 then
    redis.call('PEXPIRE', KEYS[i], ttl * 4)
  end
end
return 1
";
