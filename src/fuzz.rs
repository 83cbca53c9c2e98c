//! Randomised tests of everything that parses outside input: pid files,
//! semaphore filename patterns, and the Redis lock's messages, replies and
//! `CLIENT LIST` output. They run in the normal test suite with a bounded
//! number of cases; `PORTALOCKER_FUZZ_ITERS=10000000 cargo test --lib
//! --all-features fuzz` runs a long campaign by hand.

use crate::deadline::random_u64;

fn iters() -> usize {
    std::env::var("PORTALOCKER_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Random bytes, biased towards the characters the parsers care about.
fn input(alphabet: &[u8]) -> Vec<u8> {
    let len = (random_u64() % 48) as usize;
    (0..len)
        .map(|_| {
            let r = random_u64();
            if r.is_multiple_of(4) {
                (r >> 8) as u8
            } else {
                alphabet[(r >> 8) as usize % alphabet.len()]
            }
        })
        .collect()
}

#[test]
fn pid_parsing_never_panics_and_only_accepts_plain_positive_decimals() {
    for _ in 0..iters() {
        let raw = input(b"0123456789 \t\n\r+-_x\x0b\x0c");
        if let Some(pid) = crate::pidfile::parse_pid(&raw) {
            let text = String::from_utf8(raw.clone()).expect("accepted input is ASCII");
            // Python's str.strip() whitespace, ASCII part.
            let trimmed =
                text.trim_matches(|c: char| " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f".contains(c));
            assert!(trimmed.bytes().all(|b| b.is_ascii_digit()), "{raw:?}");
            assert!(trimmed.len() <= 20 && pid > 0, "{raw:?}");
            assert_eq!(trimmed.parse::<u64>().ok(), Some(u64::from(pid)), "{raw:?}");
        }
    }
}

#[test]
fn pattern_parsing_never_panics_and_valid_patterns_number_every_slot() {
    for _ in 0..iters() {
        let raw = input(b"{}:0123dnameumberx.");
        let s = String::from_utf8_lossy(&raw);
        if let Ok(p) = crate::semaphore::Pattern::parse(&s) {
            let a = p.format("n", 3);
            let b = p.format("n", 4);
            assert_ne!(a, b, "{s:?}: two slots share a file name");
        }
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_payloads_never_panic_and_replies_are_classified() {
    use crate::redis_lock::fuzz_api::{ping_response_channel, replies_from, unavailable_from};
    let fragments: [&[u8]; 12] = [
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
    for _ in 0..iters() {
        // Structured: glue JSON-ish fragments; unstructured: raw bytes.
        let mut raw = Vec::new();
        if random_u64().is_multiple_of(2) {
            for _ in 0..(random_u64() % 12) {
                raw.extend_from_slice(fragments[(random_u64() % 12) as usize]);
            }
        } else {
            raw = input(b"{}\":, abc123");
        }
        if let Some(ch) = ping_response_channel(&raw) {
            assert!(!ch.is_empty());
        }
        // The same payload twice: one holder if it is a protocol record
        // (deduplicated by id), two distinct legacy holders otherwise.
        let (n, legacy) = replies_from(&[&raw, &raw]);
        assert_eq!(n, if legacy { 2 } else { 1 }, "{raw:?}");
        let list = String::from_utf8_lossy(&raw).replace(',', "\n");
        let _ = unavailable_from("ch", &list);
    }
}
