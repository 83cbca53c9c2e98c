//! The wire protocol of Python portalocker 4.4.2's Redis lock and its
//! decision rules (joining, election, forfeit, confirmation, reaping), as
//! pure functions. No I/O here.

use serde_json::Value;

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

/// What a server said it is (the reply to `ROLE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A primary, with how many replicas it lists.
    Primary {
        replicas: usize,
    },
    /// A replica, with its primary's address when the reply gave it.
    Replica(Option<String>),
    Sentinel,
    Unknown,
}

/// Reads a `ROLE` reply: `["master", offset, replicas]`,
/// `["slave", host, port, state, offset]` or `["sentinel", names]`.
pub(crate) fn role(v: &redis::Value) -> Role {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    let Value::Array(items) = v else {
        return Role::Unknown;
    };
    match items.first().and_then(text).as_deref() {
        Some("master") => Role::Primary {
            replicas: match items.get(2) {
                Some(Value::Array(r)) => r.len(),
                _ => 0,
            },
        },
        Some("slave" | "replica") => {
            let primary = match (items.get(1).and_then(text), items.get(2).and_then(text)) {
                (Some(host), Some(port)) => Some(format!("{host}:{port}")),
                _ => None,
            };
            Role::Replica(primary)
        }
        Some("sentinel") => Role::Sentinel,
        _ => Role::Unknown,
    }
}

/// The `addr=` of the client named `name` in a `CLIENT LIST` reply.
pub(crate) fn client_addr(client_list: &str, name: &str) -> Option<String> {
    client_list.lines().find_map(|line| {
        let mut addr = None;
        let mut named = false;
        for field in line.split(' ') {
            if let Some(a) = field.strip_prefix("addr=") {
                addr = Some(a);
            } else if let Some(n) = field.strip_prefix("name=") {
                named = n == name;
            }
        }
        named.then(|| addr.map(str::to_string)).flatten()
    })
}

/// The holders of `channel` in a `CLIENT LIST` reply, by the names of
/// their subscription connections (`<channel>-lock-<holder id>`): (holder
/// id, client address).
pub(crate) fn named_holders(channel: &str, client_list: &str) -> Vec<(String, String)> {
    let prefix = format!("{channel}-lock-");
    client_list
        .lines()
        .filter_map(|line| {
            let mut id = None;
            let mut addr = "?";
            for field in line.split(' ') {
                if let Some(rest) = field
                    .strip_prefix("name=")
                    .and_then(|n| n.strip_prefix(&prefix))
                {
                    id = Some(rest);
                } else if let Some(a) = field.strip_prefix("addr=") {
                    addr = a;
                }
            }
            let id = id.filter(|i| is_holder_id(i))?;
            Some((id.to_string(), addr.to_string()))
        })
        .collect()
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

    fn any_legacy(&self) -> bool {
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

/// Who this lock is, for the decisions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Me<'a> {
    pub(crate) id: &'a str,
    pub(crate) writer: bool,
    /// `writer_elected`: this writer already won an election.
    pub(crate) elected: bool,
}

fn others<'a>(me: &'a Me<'_>, holders: &'a [Holder]) -> impl Iterator<Item = &'a Holder> {
    holders.iter().filter(move |h| h.id != me.id)
}

/// Joining: a reader may join only pure readers.
pub(crate) fn compatible(me: &Me<'_>, holders: &[Holder]) -> bool {
    !me.writer && holders.iter().all(|h| h.mode == HolderMode::Shared)
}

/// Election: a fresh writer is elected if nobody is exclusive, no other
/// holder advertises an election, and it has the lowest pending id.
pub(crate) fn wins_election(me: &Me<'_>, holders: &[Holder]) -> bool {
    if holders.iter().any(|h| h.mode == HolderMode::Exclusive) {
        return false;
    }
    if others(me, holders).any(|h| h.elected == Some(true)) {
        return false;
    }
    holders
        .iter()
        .filter(|h| h.mode == HolderMode::Pending)
        .map(|h| h.id.as_str())
        .min()
        == Some(me.id)
}

/// Forfeit: an incumbent forfeits to an exclusive holder, to a lower-id
/// incumbent, or to a lower-id pre-4.2 pending writer.
pub(crate) fn must_forfeit(me: &Me<'_>, holders: &[Holder]) -> bool {
    others(me, holders).any(|h| {
        h.mode == HolderMode::Exclusive
            || (h.elected == Some(true) && h.id.as_str() < me.id)
            || (h.mode == HolderMode::Pending && h.elected.is_none() && h.id.as_str() < me.id)
    })
}

/// What one probe result means for this lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Held as is (a reader joining readers).
    Held,
    /// A writer promotes to exclusive; `elect` sets `writer_elected`.
    Promote { elect: bool },
    /// Keep the subscription and try again; `elect` sets `writer_elected`.
    Retry { elect: bool },
    /// Leave: drop the subscription (and the election).
    GiveUp { conclusive: bool },
    /// `fail_when_locked` with readers present after a fresh election win:
    /// leave without advertising the election, and fail.
    FailFast,
}

/// The decision for a probe result (`None` = inconclusive).
pub(crate) fn resolve(me: &Me<'_>, probe: Option<&[Holder]>, fail_when_locked: bool) -> Resolution {
    let Some(holders) = probe else {
        return if me.writer && me.elected {
            Resolution::Retry { elect: false }
        } else {
            Resolution::GiveUp { conclusive: false }
        };
    };
    if compatible(me, holders) {
        return Resolution::Held;
    }
    if !me.writer {
        return Resolution::GiveUp { conclusive: true };
    }
    let shared_present = others(me, holders).any(|h| h.mode == HolderMode::Shared);
    if me.elected {
        if must_forfeit(me, holders) {
            return Resolution::GiveUp { conclusive: true };
        }
        if shared_present {
            return Resolution::Retry { elect: false };
        }
        let hold_off = others(me, holders).any(|h| {
            h.mode == HolderMode::Pending && h.elected == Some(false) && h.id.as_str() < me.id
        });
        if hold_off {
            return Resolution::Retry { elect: false };
        }
        return Resolution::Promote { elect: false };
    }
    if !wins_election(me, holders) {
        return Resolution::GiveUp { conclusive: true };
    }
    if !shared_present {
        return Resolution::Promote { elect: true };
    }
    if fail_when_locked {
        return Resolution::FailFast;
    }
    Resolution::Retry { elect: true }
}

/// The verdict of one conclusive confirm probe after a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Confirmed,
    Demote,
    Retry,
}

/// Confirmation: demote beats retry; otherwise confirmed.
pub(crate) fn confirm_verdict(me_id: &str, holders: &[Holder]) -> Verdict {
    let mut retry = false;
    for h in holders.iter().filter(|h| h.id != me_id) {
        let lower = h.id.as_str() < me_id;
        match h.mode {
            HolderMode::Shared => return Verdict::Demote,
            HolderMode::Exclusive if h.legacy || h.elected.is_none() || lower => {
                return Verdict::Demote
            }
            HolderMode::Exclusive => {}
            HolderMode::Pending if !lower => {}
            HolderMode::Pending if h.elected.is_none() => return Verdict::Demote,
            HolderMode::Pending => retry = true,
        }
    }
    if retry {
        Verdict::Retry
    } else {
        Verdict::Confirmed
    }
}

/// Reaping: the ids of clients in `CLIENT LIST` output that hold `channel`
/// under a conforming name yet did not answer this probe.
pub(crate) fn unavailable_clients(channel: &str, client_list: &str, replies: &Replies) -> Vec<u64> {
    let legacy_name = format!("{channel}-lock");
    let prefix = format!("{channel}-lock-");
    let replied: Vec<&str> = replies
        .holders
        .iter()
        .filter(|h| !h.legacy)
        .map(|h| h.id.as_str())
        .collect();
    let mut ids = Vec::new();
    for line in client_list.lines() {
        let mut id = None;
        let mut name = "";
        for field in line.split(' ') {
            if let Some(v) = field.strip_prefix("id=") {
                id = v.parse::<u64>().ok();
            } else if let Some(v) = field.strip_prefix("name=") {
                name = v;
            }
        }
        let Some(id) = id else { continue };
        let dead = if name == legacy_name {
            !replies.any_legacy()
        } else if let Some(holder) = name.strip_prefix(&prefix) {
            is_holder_id(holder) && !replied.contains(&holder)
        } else {
            false
        };
        if dead {
            ids.push(id);
        }
    }
    ids
}

/// Exactly 32 lowercase hex characters.
pub(crate) fn is_holder_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn holders_are_read_from_client_list() {
        let id = "0123456789abcdef0123456789abcdef";
        let list = format!(
            "id=3 addr=127.0.0.1:5000 laddr=x name=jobs-lock-{id} db=0\n\
             id=4 addr=127.0.0.1:5001 name=jobs-lock-notanid db=0\n\
             id=5 addr=127.0.0.1:5002 name=other-lock-{id} db=0\n\
             id=6 addr=127.0.0.1:5003 name= db=0\n"
        );
        assert_eq!(
            super::named_holders("jobs", &list),
            vec![(id.to_string(), "127.0.0.1:5000".to_string())]
        );
    }

    #[test]
    fn role_replies_are_read() {
        use redis::Value;
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            role(&Value::Array(vec![
                b("master"),
                Value::Int(0),
                Value::Array(vec![])
            ])),
            Role::Primary { replicas: 0 }
        );
        let replica = |port: &str| Value::Array(vec![b("127.0.0.1"), b(port), b("42")]);
        assert_eq!(
            role(&Value::Array(vec![
                b("master"),
                Value::Int(42),
                Value::Array(vec![replica("6380"), replica("6381")])
            ])),
            Role::Primary { replicas: 2 }
        );
        assert_eq!(
            role(&Value::Array(vec![
                b("slave"),
                b("10.0.0.1"),
                Value::Int(6379),
                b("connected"),
                Value::Int(5)
            ])),
            Role::Replica(Some("10.0.0.1:6379".into()))
        );
        assert_eq!(role(&Value::Array(vec![b("slave")])), Role::Replica(None));
        assert_eq!(
            role(&Value::Array(vec![b("sentinel"), Value::Array(vec![])])),
            Role::Sentinel
        );
        assert_eq!(role(&Value::Nil), Role::Unknown);
        assert_eq!(role(&Value::Array(vec![b("what")])), Role::Unknown);
    }

    #[test]
    fn a_client_address_is_found_by_connection_name() {
        let list = "id=1 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 fd=8 name=jobs-lock-ab sub=1\n\
                    id=2 addr=10.0.0.2:6001 fd=9 name=jobs-lock-cd sub=1\n\
                    id=3 addr=10.0.0.3:6002 fd=9 name= sub=0\n";
        assert_eq!(
            super::client_addr(list, "jobs-lock-cd").as_deref(),
            Some("10.0.0.2:6001")
        );
        assert_eq!(
            super::client_addr(list, "jobs-lock-ab").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(super::client_addr(list, "jobs-lock-ef"), None);
        assert_eq!(super::client_addr("garbage", "x"), None);
    }

    use super::*;

    fn h(id: &str, mode: HolderMode, elected: Option<bool>) -> Holder {
        Holder {
            id: id.into(),
            mode,
            legacy: false,
            elected,
            queues: false,
        }
    }
    fn legacy(n: usize) -> Holder {
        Holder {
            id: format!("legacy-{n}"),
            mode: HolderMode::Exclusive,
            legacy: true,
            elected: None,
            queues: false,
        }
    }
    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccc";

    #[test]
    fn payloads_are_python_s_plus_one_key() {
        assert_eq!(
            ping("jobs-5e5e"),
            r#"{"message": "ping", "response_channel": "jobs-5e5e"}"#
        );
        assert_eq!(
            reply(A, HolderMode::Exclusive, false),
            format!(
                r#"{{"holder_id": "{A}", "mode": "exclusive", "protocol": 1, "elected": false, "queues": true}}"#
            )
        );
        assert_eq!(
            reply(A, HolderMode::Pending, true)
                .matches("\"elected\": true")
                .count(),
            1
        );
        assert_eq!(client_name("jobs", A), format!("jobs-lock-{A}"));
    }

    #[test]
    fn foreign_contenders_are_told_from_this_crate_s() {
        let python = format!(
            r#"{{"holder_id": "{A}", "mode": "pending", "protocol": 1, "elected": false}}"#
        );
        assert_eq!(
            foreign(python.as_bytes()),
            Some(Foreign {
                id: A.into(),
                waiting: true
            })
        );
        let held = format!(r#"{{"holder_id": "{B}", "mode": "exclusive", "protocol": 1}}"#);
        assert_eq!(foreign(held.as_bytes()).map(|f| f.waiting), Some(false));
        // Ours, legacy and malformed replies name no foreign contender.
        assert_eq!(
            foreign(reply(C, HolderMode::Pending, false).as_bytes()),
            None
        );
        assert_eq!(foreign(b"1716112345.123456"), None);
        let odd = r#"{"holder_id": "x", "mode": "pending", "protocol": 1}"#;
        assert_eq!(foreign(odd.as_bytes()), None);
    }

    #[test]
    fn reply_channels_are_matched_exactly() {
        assert_eq!(reply_pattern("jobs"), "jobs-*");
        assert_eq!(reply_pattern(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d-*");
        assert!(is_reply_channel("jobs", &format!("jobs-{A}")));
        assert!(!is_reply_channel("jobs", "jobs-fence"));
        assert!(!is_reply_channel("jobs", &format!("jobs-x-{A}")));
        assert!(!is_reply_channel("jobs", &format!("jobsx{A}")));
    }

    #[test]
    fn only_well_formed_pings_are_answered() {
        let ok = br#"{"message": "ping", "response_channel": "jobs-1"}"#;
        assert_eq!(ping_response_channel(ok).as_deref(), Some("jobs-1"));
        // The message field is not checked; key order and spacing do not matter.
        assert_eq!(
            ping_response_channel(br#"{"response_channel":"r","message":"x"}"#).as_deref(),
            Some("r")
        );
        for bad in [
            &b""[..],
            b"not-json",
            b"[]",
            b"{}",
            br#"{"response_channel": 123}"#,
            br#"{"response_channel": ""}"#,
            br#"{"response_channel": null}"#,
            b"1716112345.123456",
            b"\xff\xfe",
        ] {
            assert_eq!(
                ping_response_channel(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(ping_response_channel(deep.as_bytes()), None);
        let huge = format!(r#"{{"response_channel": "{}"}}"#, "x".repeat(MAX_PAYLOAD));
        assert_eq!(ping_response_channel(huge.as_bytes()), None);
    }

    #[test]
    fn replies_parse_leniently_and_deduplicate() {
        let mut r = Replies::default();
        r.add(reply(A, HolderMode::Exclusive, false).as_bytes());
        r.add(reply(A, HolderMode::Exclusive, false).as_bytes()); // duplicate
        r.add(format!(r#"{{"holder_id": "{B}", "mode": "pending", "protocol": 1}}"#).as_bytes());
        r.add(
            format!(
                r#"{{"holder_id": "{C}", "mode": "shared", "protocol": 1.0, "elected": "yes"}}"#
            )
            .as_bytes(),
        );
        r.add(b"1716112345.123456"); // legacy 3.2 timestamp
        r.add(format!(r#"{{"holder_id": "{C}", "mode": "shared", "protocol": 2}}"#).as_bytes());
        r.add(br#"{"holder_id": 5, "mode": "shared", "protocol": 1}"#);
        r.add(br#"{"holder_id": "x", "mode": "writer", "protocol": 1}"#);
        r.add(br#"{"holder_id": "x", "mode": "shared", "protocol": true}"#);
        let hs = &r.holders;
        assert_eq!(
            hs[0],
            Holder {
                queues: true,
                ..h(A, HolderMode::Exclusive, Some(false))
            },
            "this crate's record says it queues"
        );
        assert_eq!(
            hs[1],
            h(B, HolderMode::Pending, None),
            "pre-4.2 record: elected absent"
        );
        assert_eq!(
            hs[2],
            h(C, HolderMode::Shared, None),
            "elected read strictly"
        );
        assert_eq!(hs[3], legacy(0));
        assert_eq!(hs[4], legacy(1), "protocol 2 is treated as legacy");
        assert_eq!(hs[5], legacy(2));
        assert_eq!(hs[6], legacy(3));
        assert_eq!(
            hs[7],
            h("x", HolderMode::Shared, None),
            "protocol true equals 1 in Python"
        );
        assert_eq!(r.len(), 8);
    }

    #[test]
    fn readers_join_only_readers() {
        let me = Me {
            id: B,
            writer: false,
            elected: false,
        };
        let readers = [
            h(A, HolderMode::Shared, Some(false)),
            h(B, HolderMode::Shared, Some(false)),
        ];
        assert_eq!(resolve(&me, Some(&readers), false), Resolution::Held);
        let with_pending = [
            h(A, HolderMode::Pending, Some(false)),
            h(B, HolderMode::Shared, Some(false)),
        ];
        assert_eq!(
            resolve(&me, Some(&with_pending), false),
            Resolution::GiveUp { conclusive: true }
        );
        let with_legacy = [legacy(0), h(B, HolderMode::Shared, Some(false))];
        assert_eq!(
            resolve(&me, Some(&with_legacy), true),
            Resolution::GiveUp { conclusive: true }
        );
        assert_eq!(
            resolve(&me, None, false),
            Resolution::GiveUp { conclusive: false }
        );
    }

    #[test]
    fn lowest_pending_writer_is_elected() {
        let a = Me {
            id: A,
            writer: true,
            elected: false,
        };
        let b = Me {
            id: B,
            writer: true,
            elected: false,
        };
        let both = [
            h(A, HolderMode::Pending, Some(false)),
            h(B, HolderMode::Pending, Some(false)),
        ];
        assert_eq!(
            resolve(&a, Some(&both), false),
            Resolution::Promote { elect: true }
        );
        assert_eq!(
            resolve(&b, Some(&both), false),
            Resolution::GiveUp { conclusive: true }
        );
        assert_eq!(
            resolve(&b, Some(&both), true),
            Resolution::GiveUp { conclusive: true }
        );
        // An exclusive holder blocks every election.
        let held = [
            h(C, HolderMode::Exclusive, Some(false)),
            h(A, HolderMode::Pending, Some(false)),
        ];
        assert_eq!(
            resolve(&a, Some(&held), false),
            Resolution::GiveUp { conclusive: true }
        );
        // Defer to an incumbent even with a lower id (#143).
        let incumbent = [
            h(C, HolderMode::Pending, Some(true)),
            h(A, HolderMode::Pending, Some(false)),
        ];
        assert_eq!(
            resolve(&a, Some(&incumbent), false),
            Resolution::GiveUp { conclusive: true }
        );
    }

    #[test]
    fn fresh_winner_with_readers_waits_or_fails_fast() {
        let a = Me {
            id: A,
            writer: true,
            elected: false,
        };
        let hs = [
            h(A, HolderMode::Pending, Some(false)),
            h(C, HolderMode::Shared, Some(false)),
        ];
        assert_eq!(
            resolve(&a, Some(&hs), false),
            Resolution::Retry { elect: true }
        );
        assert_eq!(resolve(&a, Some(&hs), true), Resolution::FailFast);
    }

    #[test]
    fn incumbent_rules() {
        let b = Me {
            id: B,
            writer: true,
            elected: true,
        };
        let mine = h(B, HolderMode::Pending, Some(true));
        // Readers still present: keep waiting.
        let hs = [mine.clone(), h(C, HolderMode::Shared, Some(false))];
        assert_eq!(
            resolve(&b, Some(&hs), true),
            Resolution::Retry { elect: false }
        );
        // Readers drained: promote.
        assert_eq!(
            resolve(&b, Some(std::slice::from_ref(&mine)), false),
            Resolution::Promote { elect: false }
        );
        // A lower-id pending writer that may not know yet: hold off.
        let hs = [mine.clone(), h(A, HolderMode::Pending, Some(false))];
        assert_eq!(
            resolve(&b, Some(&hs), false),
            Resolution::Retry { elect: false }
        );
        // A higher-id pending writer: promote.
        let hs = [mine.clone(), h(C, HolderMode::Pending, Some(false))];
        assert_eq!(
            resolve(&b, Some(&hs), false),
            Resolution::Promote { elect: false }
        );
        // Forfeit: exclusive, lower incumbent, lower pre-4.2 pending.
        for other in [
            h(C, HolderMode::Exclusive, Some(false)),
            legacy(0),
            h(A, HolderMode::Pending, Some(true)),
            h(A, HolderMode::Pending, None),
        ] {
            let hs = [mine.clone(), other.clone()];
            assert_eq!(
                resolve(&b, Some(&hs), false),
                Resolution::GiveUp { conclusive: true },
                "{other:?}"
            );
        }
        // A higher-id incumbent does not make us forfeit.
        let hs = [mine, h(C, HolderMode::Pending, Some(true))];
        assert!(!must_forfeit(&b, &hs));
        // Inconclusive: an incumbent keeps its election.
        assert_eq!(resolve(&b, None, true), Resolution::Retry { elect: false });
    }

    #[test]
    fn confirm_verdicts() {
        use Verdict::*;
        let me = B;
        let cases = [
            (h(A, HolderMode::Shared, Some(false)), Demote),
            (legacy(0), Demote),
            (h(C, HolderMode::Exclusive, None), Demote),
            (h(A, HolderMode::Exclusive, Some(true)), Demote),
            (h(C, HolderMode::Exclusive, Some(true)), Confirmed),
            (h(C, HolderMode::Pending, None), Confirmed),
            (h(A, HolderMode::Pending, None), Demote),
            (h(A, HolderMode::Pending, Some(false)), Retry),
            (h(A, HolderMode::Pending, Some(true)), Retry),
        ];
        for (other, want) in cases {
            let hs = [h(B, HolderMode::Exclusive, Some(false)), other.clone()];
            assert_eq!(confirm_verdict(me, &hs), want, "{other:?}");
        }
        // Demote takes precedence over retry.
        let hs = [
            h(A, HolderMode::Pending, Some(false)),
            h(C, HolderMode::Shared, None),
        ];
        assert_eq!(confirm_verdict(me, &hs), Demote);
        assert_eq!(
            confirm_verdict(me, &[h(B, HolderMode::Exclusive, None)]),
            Confirmed
        );
    }

    #[test]
    fn reaping_matches_exact_names_only() {
        let list = format!(
            "id=1 addr=x name=jobs-lock-{A} sub=1\n\
             id=2 addr=x name=jobs-lock-{B} sub=1\n\
             id=3 addr=x name=jobs-lock sub=1\n\
             id=4 addr=x name=jobs-lock-{B}-lock-{C} sub=1\n\
             id=5 addr=x name=a-lock-b-lock-{C} sub=1\n\
             id=6 addr=x name= sub=0\n\
             id=7 addr=x name=jobs-lock-{}\n\
             id=8 addr=x name=jobs-lock-{} sub=1\n",
            A.to_uppercase(),
            &A[..31]
        );
        let mut replies = Replies::default();
        replies.add(reply(A, HolderMode::Exclusive, false).as_bytes());
        assert_eq!(unavailable_clients("jobs", &list, &replies), vec![2, 3]);
        // One legacy reply spares every legacy-named client.
        replies.add(b"1716112345.1");
        assert_eq!(unavailable_clients("jobs", &list, &replies), vec![2]);
        // Channel `a` never reaps holders of channel `a-lock-b` (#142).
        assert!(unavailable_clients("a", &list, &Replies::default()).is_empty());
    }
}

/// Randomised: JSON-ish fragments glued together, and raw bytes.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::{ping_response_channel, unavailable_clients, Replies};

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let fragments: Vec<&'static [u8]> = vec![
            b"{",
            b"}",
            b"\"response_channel\"",
            b"\"holder_id\"",
            b"\"mode\"",
            b"\"protocol\"",
            b": ",
            b", ",
            b"\"shared\"",
            b"1",
            b"true",
            b"[",
        ];
        prop_oneof![
            proptest::collection::vec(proptest::sample::select(fragments), 0..12)
                .prop_map(|f| f.concat()),
            proptest::collection::vec(
                prop_oneof![
                    3 => proptest::sample::select(b"{}\":, abc123".to_vec()),
                    1 => any::<u8>()
                ],
                0..48,
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::util::proptest_cases()))]

        #[test]
        fn payloads_never_panic_and_replies_are_deduplicated(raw in payload()) {
            if let Some(ch) = ping_response_channel(&raw) {
                prop_assert!(!ch.is_empty());
            }
            // The same payload twice: one holder if it is a protocol record
            // (deduplicated by id), two distinct legacy holders otherwise.
            let mut r = Replies::default();
            r.add(&raw);
            r.add(&raw);
            let legacy = r.holders.iter().all(|h| h.legacy);
            prop_assert_eq!(r.len(), if legacy { 2 } else { 1 });
            let list = String::from_utf8_lossy(&raw).replace(',', "\n");
            let _ = unavailable_clients("ch", &list, &Replies::default());
        }
    }
}
