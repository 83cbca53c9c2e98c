//! What the server's own replies say: `ROLE`, and the clients of
//! `CLIENT LIST` that hold a channel (for `holders()`, error messages and
//! reaping).

use super::Replies;

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
            let mut channels = None;
            for field in line.split(' ') {
                if let Some(rest) = field
                    .strip_prefix("name=")
                    .and_then(|n| n.strip_prefix(&prefix))
                {
                    id = Some(rest);
                } else if let Some(a) = field.strip_prefix("addr=") {
                    addr = a;
                } else if let Some(n) = field.strip_prefix("sub=") {
                    channels = n.parse::<u64>().ok();
                }
            }
            // A connection that unsubscribed (a release whose socket is
            // still closing) holds nothing.
            if channels == Some(0) {
                return None;
            }
            let id = id.filter(|i| is_holder_id(i))?;
            Some((id.to_string(), addr.to_string()))
        })
        .collect()
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
