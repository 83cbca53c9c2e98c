//! The `tracing` feature: an `acquire` span per call with the lock's
//! context, and outcome events — granted (attempts, waits), not acquired
//! (naming the holder) — recorded by a minimal subscriber of this test.
#![cfg(feature = "tracing")]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portalocker::{BoundedSemaphore, Lock};
use support::Proc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

support::child_entry!();

/// One recorded span or event: its name (span) or message (event), its
/// fields, and for an event the name of the span it happened in.
#[derive(Clone, Debug, Default)]
struct Seen {
    name: String,
    fields: HashMap<String, String>,
    parent: Option<String>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<HashMap<u64, Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
    stack: Arc<Mutex<Vec<u64>>>,
    next: Arc<AtomicU64>,
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut f = Fields::default();
        span.record(&mut f);
        let seen = Seen {
            name: span.metadata().name().to_string(),
            fields: f.0,
            parent: None,
        };
        self.spans.lock().unwrap().insert(id, seen);
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let parent = self.stack.lock().unwrap().last().copied();
        let parent =
            parent.and_then(|p| self.spans.lock().unwrap().get(&p).map(|s| s.name.clone()));
        let name = f.0.remove("message").unwrap_or_default();
        self.events.lock().unwrap().push(Seen {
            name,
            fields: f.0,
            parent,
        });
    }
    fn enter(&self, span: &Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut stack = self.stack.lock().unwrap();
        if let Some(i) = stack.iter().rposition(|s| *s == span.into_u64()) {
            stack.remove(i);
        }
    }
}

/// A recorder set as this thread's default subscriber (while the guard
/// lives), and a current-thread runtime whose tasks it sees.
fn recording() -> (
    Recorder,
    tokio::runtime::Runtime,
    tracing::subscriber::DefaultGuard,
) {
    let rec = Recorder::default();
    let guard = tracing::subscriber::set_default(rec.clone());
    let rt = support::current_thread();
    (rec, rt, guard)
}

impl Recorder {
    /// What a lease-based lock traced for one grant, one refusal and one
    /// loss: two `acquire` spans whose `field` is `name`; a `granted`
    /// event inside the span with the guard's `token`; a `not acquired`
    /// event whose error says `refused`; a `lost` event whose reason says
    /// `lost`.
    fn assert_grant_refusal_loss(
        &self,
        (field, name): (&str, &str),
        token: u64,
        refused: &str,
        lost: &str,
    ) {
        let spans = self.spans("acquire");
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_eq!(spans[0].fields[field], name, "{spans:?}");
        let granted = self.events("granted");
        assert_eq!(granted.len(), 1, "{granted:?}");
        assert_eq!(granted[0].fields["fence_token"], token.to_string());
        assert_eq!(granted[0].parent.as_deref(), Some("acquire"));
        let not = self.events("not acquired");
        assert_eq!(not.len(), 1, "{not:?}");
        assert!(not[0].fields["error"].contains(refused), "{not:?}");
        let seen = self.events("lost");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].fields["reason"].contains(lost), "{seen:?}");
    }

    fn events(&self, message: &str) -> Vec<Seen> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.name == message)
            .cloned()
            .collect()
    }
    fn spans(&self, name: &str) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        spans.values().filter(|s| s.name == name).cloned().collect()
    }
}

#[test]
fn file_locks_trace_their_acquisitions() {
    let (rec, rt, _default) = recording();
    let (_d, path) = support::temp_path("traced.lock");
    rt.block_on(async {
        let lock = Lock::new(&path);
        drop(lock.acquire().await.unwrap());
        drop(lock.acquire().await.unwrap());
    });
    let spans = rec.spans("acquire");
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(
        spans[0].fields["path"].ends_with("traced.lock"),
        "{spans:?}"
    );
    assert!(spans[0].fields.contains_key("timeout"), "{spans:?}");
    let granted = rec.events("granted");
    assert_eq!(granted.len(), 1, "the first acquisition opened the file");
    assert_eq!(granted[0].fields["attempts"], "1");
    assert_eq!(granted[0].parent.as_deref(), Some("acquire"));
    let at_once = rec.events("granted at once");
    assert_eq!(at_once.len(), 1, "the second took the fast path");

    // Contention with another process: the event names the holder.
    let mut child = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    child.expect("LOCKED");
    rt.block_on(async {
        let err = Lock::new(&path).try_acquire().await.unwrap_err();
        assert!(err.is_already_locked(), "{err}");
    });
    let failed = rec.events("not acquired");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].parent.as_deref(), Some("acquire"));
    #[cfg(all(target_os = "linux", not(portalocker_portable)))]
    assert_eq!(
        failed[0].fields["holder_pid"],
        format!("Some({})", child.pid()),
        "{failed:?}"
    );
    child.finish();
}

#[test]
fn a_semaphore_traces_one_span_per_call_with_its_slot() {
    let (rec, rt, _default) = recording();
    let d = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let sem = BoundedSemaphore::new(3).name("traced").directory(d.path());
        let a = sem.acquire().await.unwrap();
        let b = sem.acquire().await.unwrap();
        drop((a, b));
    });
    let spans = rec.spans("acquire");
    assert_eq!(
        spans.len(),
        2,
        "the slots' attempts have no span of their own: {spans:?}"
    );
    assert_eq!(spans[0].fields["semaphore"], "traced");
    let slots: Vec<String> = rec
        .events("granted")
        .iter()
        .filter_map(|e| e.fields.get("slot").cloned())
        .collect();
    assert_eq!(slots, ["0", "1"]);
}

/// The etcd lock: an `acquire` span with the lock's name, `granted` with
/// the token, `not acquired` when busy, and a `lost` event when its key
/// goes.
#[cfg(all(feature = "etcd", unix))]
#[test]
fn the_etcd_lock_traces_grants_refusals_and_losses() {
    let (rec, rt, _default) = recording();
    rt.block_on(async {
        let cluster = support::etcd::EtcdCluster::start(1).await;
        let lock = portalocker::EtcdLock::new("traced", cluster.client().await);
        let g = lock.acquire().await.unwrap();
        assert!(lock.try_acquire().await.unwrap_err().is_already_locked());
        let mut rx = g.watch_lost();
        cluster.client().await.delete(g.key(), None).await.unwrap();
        rx.wait_for(|l| *l).await.unwrap();
        rec.assert_grant_refusal_loss(
            ("etcd_lock", "traced"),
            g.fence_token(),
            "already locked",
            "deleted",
        );
    });
}

/// `LeaseLock`: the same span and events, with the lease directory.
#[test]
fn the_lease_lock_traces_grants_refusals_and_losses() {
    let (rec, rt, _default) = recording();
    rt.block_on(async {
        let (_d, path) = support::temp_path("traced.lease");
        let lock =
            portalocker::LeaseLock::new(&path).lease_ttl(std::time::Duration::from_millis(300));
        let g = lock.acquire().await.unwrap();
        assert!(lock.try_acquire().await.unwrap_err().is_already_locked());
        let mut rx = g.watch_lost();
        std::fs::remove_file(g.claim_path()).unwrap();
        rx.wait_for(|l| *l).await.unwrap();
        rec.assert_grant_refusal_loss(
            ("lease_lock", &path.display().to_string()),
            g.fence_token(),
            "held by holder",
            "removed",
        );
    });
}
