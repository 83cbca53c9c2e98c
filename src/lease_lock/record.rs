//! The owner record of a lease claim: what a claim file holds, written
//! and read whole.
//!
//! A few `key value` lines under a magic first line, fixed width where
//! they change (the beat counter), so that a heartbeat rewrites the
//! record in place with the same length and a reader never sees a
//! shorter record with a stale tail.

use std::time::Duration;

/// The first line of every record.
const MAGIC: &str = "portalocker-lease 1";

/// The longest record accepted.
pub(super) const MAX_RECORD: usize = 4096;

/// The shortest and longest TTL a record may carry.
pub(crate) const MIN_TTL: Duration = Duration::from_millis(100);
pub(crate) const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A claim's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Its holder holds it (or held it until it stopped beating).
    Held,
    /// Released: the next claim may be made at once.
    Free,
}

/// The contents of a claim file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) generation: u64,
    pub(super) state: State,
    /// Bumped by every heartbeat: a record whose bytes do not change for
    /// longer than its TTL belongs to a holder that stopped.
    pub(super) beat: u64,
    pub(super) ttl: Duration,
    pub(super) holder_id: String,
    pub(super) host: String,
    pub(super) pid: u32,
    /// When the holder's process started (Linux: clock ticks since boot;
    /// 0 where unknown): with host and pid, it tells whether the holder's
    /// process still runs.
    pub(super) started: u64,
}

impl Record {
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let state = match self.state {
            State::Held => "held",
            State::Free => "free",
        };
        // Host names come from the OS; anything that could break the line
        // format is replaced.
        let host: String = self
            .host
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(255)
            .collect();
        format!(
            "{MAGIC}\ngeneration {:020}\nstate {state}\nbeat {:020}\nttl_ms {:012}\nholder {}\n\
             host {host}\npid {}\nstarted {}\n",
            self.generation,
            self.beat,
            self.ttl.as_millis(),
            self.holder_id,
            self.pid,
            self.started
        )
        .into_bytes()
    }

    /// Parses a record; `Err` says what is wrong with it.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_RECORD {
            return Err(format!("longer than {MAX_RECORD} bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(if text.is_empty() {
                "empty (being written, or not a lease record)".into()
            } else {
                format!("not a lease record (the first line is not {MAGIC:?})")
            });
        }
        let mut generation = None;
        let mut state = None;
        let mut beat = None;
        let mut ttl = None;
        let mut holder_id = None;
        let mut host = None;
        let mut pid = None;
        let mut started = None;
        for line in lines {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad {k} {v:?}"));
            match k {
                "generation" => generation = Some(num(v)?),
                "state" => {
                    state = Some(match v {
                        "held" => State::Held,
                        "free" => State::Free,
                        _ => return Err(format!("bad state {v:?}")),
                    });
                }
                "beat" => beat = Some(num(v)?),
                "ttl_ms" => ttl = Some(Duration::from_millis(num(v)?)),
                "holder" => holder_id = Some(v.to_string()),
                "host" => host = Some(v.to_string()),
                "pid" => pid = Some(u32::try_from(num(v)?).map_err(|_| format!("bad pid {v}"))?),
                "started" => started = Some(num(v)?),
                // Fields of a later version are ignored.
                _ => {}
            }
        }
        let missing = |what: &str| format!("no {what} line");
        let ttl = ttl.ok_or_else(|| missing("ttl_ms"))?;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(format!("ttl_ms {} out of range", ttl.as_millis()));
        }
        Ok(Self {
            generation: generation.ok_or_else(|| missing("generation"))?,
            state: state.ok_or_else(|| missing("state"))?,
            beat: beat.ok_or_else(|| missing("beat"))?,
            ttl,
            holder_id: holder_id.ok_or_else(|| missing("holder"))?,
            host: host.unwrap_or_default(),
            pid: pid.unwrap_or(0),
            started: started.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            generation: 42,
            state: State::Held,
            beat: 7,
            ttl: Duration::from_secs(10),
            holder_id: "0123456789abcdef0123456789abcdef".into(),
            host: "build-1".into(),
            pid: 4242,
            started: 123_456,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = sample();
        assert_eq!(Record::parse(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn a_heartbeat_and_a_release_keep_the_length() {
        let r = sample();
        let beat = Record {
            beat: u64::MAX,
            ..r.clone()
        };
        let free = Record {
            state: State::Free,
            ..r.clone()
        };
        assert_eq!(r.to_bytes().len(), beat.to_bytes().len());
        assert_eq!(r.to_bytes().len(), free.to_bytes().len());
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (bytes, why) in [
            (&b""[..], "empty"),
            (b"hello\n", "not a lease record"),
            (b"portalocker-lease 1\ngeneration x\n", "bad generation"),
            (b"portalocker-lease 1\ngeneration 1\n", "no ttl_ms"),
            (
                b"portalocker-lease 1\ngeneration 1\nstate held\nbeat 0\nttl_ms 0\nholder a\n",
                "out of range",
            ),
            (&[0xff, 0xfe][..], "UTF-8"),
        ] {
            let e = Record::parse(bytes).unwrap_err();
            assert!(e.contains(why), "{e:?} for {bytes:?}");
        }
    }

    #[test]
    fn a_host_name_cannot_break_the_format() {
        let r = Record {
            host: "evil\nstate free".into(),
            ..sample()
        };
        let back = Record::parse(&r.to_bytes()).unwrap();
        assert_eq!(back.state, State::Held);
        assert_eq!(back.host, "evil?state free");
    }
}
