//! The wire format: pings, reply records (Python's, and what this crate
//! adds), the subscription connection's name, reply channels.

use serde_json::Value;

use super::is_holder_id;

/// The protocol version in replies.
pub(crate) const PROTOCOL: u64 = 1;
/// Payloads larger than this on a lock channel are ignored unparsed.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

/// A holder's mode, as advertised in replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HolderMode {
    Exclusive,
    Pending,
    Shared,
}

impl HolderMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::Pending => "pending",
            Self::Shared => "shared",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "exclusive" => Some(Self::Exclusive),
            "pending" => Some(Self::Pending),
            "shared" => Some(Self::Shared),
            _ => None,
        }
    }
}

/// One holder, as its reply to a ping describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) id: String,
    pub(crate) mode: HolderMode,
    pub(crate) legacy: bool,
    /// `None` for pre-4.2 peers (and legacy holders).
    pub(crate) elected: Option<bool>,
    /// A contender of this crate, which keeps its own place in the queue.
    pub(crate) queues: bool,
}

/// The subscription connection's name: `<channel>-lock-<holder_id>`.
pub(crate) fn client_name(channel: &str, id: &str) -> String {
    format!("{channel}-lock-{id}")
}

/// A ping, byte for byte as Python writes it.
pub(crate) fn ping(response_channel: &str) -> String {
    format!(
        "{{\"message\": \"ping\", \"response_channel\": {}}}",
        Value::from(response_channel)
    )
}

/// A reply record: Python's keys, in Python's order and spacing, and then
/// `"queues": true`, which tells this crate's waiters that the replying
/// contender keeps its own place in the server-side queue (Python ignores
/// keys it does not know).
pub(crate) fn reply(id: &str, mode: HolderMode, elected: bool) -> String {
    format!(
        "{{\"holder_id\": {}, \"mode\": \"{}\", \"protocol\": {PROTOCOL}, \"elected\": {elected}, \"{QUEUES}\": true}}",
        Value::from(id),
        mode.as_str()
    )
}

/// The key by which a reply says that its contender queues itself.
const QUEUES: &str = "queues";

/// What a reply says about a contender that does not queue itself (a
/// Python peer, or any other implementation of the protocol): its id and
/// whether it is waiting for the lock as a writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Foreign {
    pub(crate) id: String,
    /// `pending`: a writer that wants the lock. Otherwise it holds
    /// (`exclusive`) or reads (`shared`), and has no place to keep.
    pub(crate) waiting: bool,
}

/// The foreign contender a reply describes, if the reply is a protocol
/// record of one that does not queue itself. Legacy replies name nobody.
pub(crate) fn foreign(payload: &[u8]) -> Option<Foreign> {
    let holder = parse_record(payload)?;
    if holder.queues || !is_holder_id(&holder.id) {
        return None;
    }
    Some(Foreign {
        id: holder.id,
        waiting: holder.mode == HolderMode::Pending,
    })
}

/// The pattern that matches every reply channel of `channel`'s pings
/// (`<channel>-*`, the channel's own glob characters escaped); a matched
/// name is a reply channel only if [`is_reply_channel`] says so.
pub(crate) fn reply_pattern(channel: &str) -> String {
    let mut p = String::with_capacity(channel.len() + 2);
    for c in channel.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str("-*");
    p
}

/// Whether `name` is a reply channel of `channel`: `<channel>-` and 32
/// lowercase hex digits, as a probe names it.
pub(crate) fn is_reply_channel(channel: &str, name: &str) -> bool {
    name.strip_prefix(channel)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(is_holder_id)
}

/// The response channel of a message on the lock channel, if it is a
/// ping to answer: a JSON object with a non-empty string
/// `response_channel`. Anything else is ignored.
pub(crate) fn ping_response_channel(payload: &[u8]) -> Option<String> {
    if payload.is_empty() || payload.len() > MAX_PAYLOAD {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    match v.get("response_channel")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The replies collected by one probe, de-duplicated by holder id.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    pub(crate) holders: Vec<Holder>,
    legacy: usize,
}

impl Replies {
    /// Records one reply. Anything that is not a protocol-1 record is a
    /// legacy exclusive holder `legacy-<n>`.
    pub(crate) fn add(&mut self, payload: &[u8]) {
        let holder = match parse_record(payload) {
            Some(h) => h,
            None => {
                let h = Holder {
                    id: format!("legacy-{}", self.legacy),
                    mode: HolderMode::Exclusive,
                    legacy: true,
                    elected: None,
                    queues: false,
                };
                self.legacy += 1;
                h
            }
        };
        if !self.holders.iter().any(|h| h.id == holder.id) {
            self.holders.push(holder);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.holders.len()
    }

    pub(super) fn any_legacy(&self) -> bool {
        self.legacy > 0
    }
}

fn parse_record(payload: &[u8]) -> Option<Holder> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let obj = v.as_object()?;
    let protocol_ok = match obj.get("protocol")? {
        Value::Number(n) => n.as_u64() == Some(PROTOCOL) || n.as_f64() == Some(1.0),
        Value::Bool(b) => *b, // Python: True == 1
        _ => false,
    };
    if !protocol_ok {
        return None;
    }
    let id = obj.get("holder_id")?.as_str()?.to_string();
    let mode = HolderMode::parse(obj.get("mode")?.as_str()?)?;
    let elected = obj.get("elected").and_then(Value::as_bool);
    Some(Holder {
        id,
        mode,
        legacy: false,
        elected,
        queues: obj.get(QUEUES) == Some(&Value::Bool(true)),
    })
}
