//! The wire protocol of Python portalocker 4.4.2's Redis lock and its
//! decision rules, as pure functions (no I/O here), by concern:
//!
//! * `wire.rs`: pings, reply records, names of channels and connections;
//! * `decide.rs`: joining, election, forfeit, resolution, confirmation;
//! * `server.rs`: `ROLE` and `CLIENT LIST` replies, reaping.

mod decide;
mod server;
mod wire;

pub(crate) use decide::*;
pub(crate) use server::*;
pub(crate) use wire::*;

#[cfg(test)]
mod tests {
    #[test]
    fn holders_are_read_from_client_list() {
        let id = "0123456789abcdef0123456789abcdef";
        let list = format!(
            "id=3 addr=127.0.0.1:5000 laddr=x name=jobs-lock-{id} db=0 sub=1\n\
             id=4 addr=127.0.0.1:5001 name=jobs-lock-notanid db=0 sub=1\n\
             id=5 addr=127.0.0.1:5002 name=other-lock-{id} db=0 sub=1\n\
             id=6 addr=127.0.0.1:5003 name= db=0\n\
             id=7 addr=127.0.0.1:5004 name=jobs-lock-{id} db=0 sub=0 psub=1\n"
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
