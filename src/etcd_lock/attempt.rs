//! One attempt at the lock and the waits between attempts: the key put
//! under a fresh lease, the look at what is older, the watch on the one
//! key that blocks; retries of what a failover or a lost quorum answers.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use tokio::time::Instant;

use std::sync::Arc;

use super::lease::{LeaseState, PendingLease};
use super::{EtcdLock, EtcdLockGuard, ATTEMPT_TIMEOUT, DEFAULT_LEASE_TTL, OP, PAGE, REQUEST_FLOOR};
use crate::error::{Error, ErrorKind, Result};
use crate::options::WaitOptions;

impl EtcdLock {
    /// The bound for one request: the deadline, but at least
    /// [`REQUEST_FLOOR`] after the acquisition began.
    pub(super) fn request_bound(start: Instant, deadline: Instant) -> Instant {
        deadline.max(start + REQUEST_FLOOR)
    }

    pub(super) async fn attempt(
        &self,
        w: &WaitOptions,
        fail_fast: bool,
        start: Instant,
        deadline: Instant,
    ) -> Result<Option<EtcdLockGuard>> {
        let bound = Self::request_bound(start, deadline);
        let ttl = self.ttl_secs().unwrap_or(10);
        let sent = Instant::now();
        let grant = self
            .retry(
                bound,
                w.check_interval,
                "grant a lease",
                |mut c| async move { c.lease_grant(ttl, None).await },
            )
            .await?;
        let lease_id = grant.id();
        let granted = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0).max(1));
        let holder_id = crate::util::unguessable_hex32();
        let state = Arc::new(LeaseState::new(
            crate::loss::LeaseKind::Etcd,
            self.cfg.name.clone(),
            holder_id.clone(),
            sent.checked_add(granted)
                .unwrap_or(sent + DEFAULT_LEASE_TTL),
            self.cfg.on_lost.clone(),
        ));
        let pending = PendingLease::start(self.client.clone(), lease_id, granted, state.clone());
        let key = self.key_for(lease_id);
        let value = serde_json::json!({
            "holder_id": holder_id,
            "host": gethostname::gethostname().to_string_lossy(),
            "pid": std::process::id(),
            "mode": if self.shared() { "shared" } else { "exclusive" },
        })
        .to_string();
        let page = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(PAGE);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::get(self.prefix(), Some(page.clone())),
            ])
            .or_else([
                TxnOp::get(key.clone(), None),
                TxnOp::get(self.prefix(), Some(page)),
            ]);
        let put = self
            .retry(bound, w.check_interval, "create the lock's key", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let put = match put {
            Ok(r) => r,
            // The lease ran out before the key was written (a pause).
            Err(e) if state.is_lost() && Instant::now() < deadline => {
                drop(e);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let ops = put.op_responses();
        let (my_rev, first) = if put.succeeded() {
            let rev = put
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            let first = match ops.get(1) {
                Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
                _ => Vec::new(),
            };
            (rev, first)
        } else {
            // A retried transaction whose first try was applied.
            let rev = match ops.first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(KeyValue::create_revision),
                _ => None,
            };
            let Some(rev) = rev else {
                return Ok(None);
            };
            let first = match ops.get(1) {
                Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
                _ => Vec::new(),
            };
            (rev, first)
        };
        if my_rev <= 0 {
            return Err(self.etcd_error("create the lock's key", "etcd sent no revision"));
        }
        // Most acquisitions are decided by the first page.
        let seen_mine = first.iter().any(|kv| kv.create_revision() == my_rev);
        let blocked = first
            .iter()
            .filter(|kv| kv.create_revision() < my_rev)
            .any(|kv| !self.shared() || !self.is_reader_key(kv.key()));
        let free = !blocked && (seen_mine || first.len() < PAGE as usize);
        if !free {
            loop {
                let (blocker, at) = self
                    .last_blocker(my_rev, bound.max(deadline), w.check_interval)
                    .await?;
                let Some(b) = blocker else { break };
                if fail_fast || Instant::now() >= deadline {
                    return Err(self.busy().await);
                }
                if !self
                    .wait_gone(&b, at, deadline, w.check_interval, &state)
                    .await
                {
                    if state.is_lost() {
                        return Ok(None);
                    }
                    if Instant::now() >= deadline {
                        return Err(self.busy().await);
                    }
                }
            }
        }
        if state.is_lost() {
            return Ok(None);
        }
        let fence = u64::try_from(my_rev).unwrap_or(0);
        let tasks = pending.into_held(key.clone().into_bytes(), my_rev);
        let mut g = EtcdLockGuard::new(
            self.cfg.name.clone(),
            key,
            fence,
            lease_id,
            state,
            tasks,
            self.client.clone(),
            self.shared(),
        );
        g.set_waited(start.elapsed());
        Ok(Some(g))
    }

    /// The newest key older than `my_rev` that blocks this contender (any
    /// key for a writer, a writer's key for a reader), and the revision
    /// the answer was read at.
    pub(super) async fn last_blocker(
        &self,
        my_rev: i64,
        bound: Instant,
        pause: Duration,
    ) -> Result<(Option<Vec<u8>>, i64)> {
        let mut below = my_rev - 1;
        let mut at = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(below)
                .with_limit(PAGE);
            if at != 0 {
                // Later pages are read at the first one's revision, so that
                // the whole scan is one consistent view.
                opts = opts.with_revision(at);
            }
            let prefix = self.prefix();
            let r = self
                .retry(bound, pause, "read the lock's queue", |mut c| {
                    let (prefix, opts) = (prefix.clone(), opts.clone());
                    async move { c.get(prefix, Some(opts)).await }
                })
                .await?;
            if at == 0 {
                at = r.header().map_or(0, etcd_client::ResponseHeader::revision);
            }
            let kvs = r.kvs();
            for kv in kvs {
                if !self.shared() || !self.is_reader_key(kv.key()) {
                    return Ok((Some(kv.key().to_vec()), at));
                }
            }
            match kvs.last() {
                Some(last) if kvs.len() == PAGE as usize => {
                    below = last.create_revision() - 1;
                    if below <= 0 {
                        return Ok((None, at));
                    }
                }
                _ => return Ok((None, at)),
            }
        }
    }

    /// Waits until `key` is deleted (watching from revision `at + 1`), the
    /// lease is lost, or the deadline: `true` when the key went. A watch
    /// that ends or is cancelled (compaction) also returns `true`, so the
    /// caller looks again.
    pub(super) async fn wait_gone(
        &self,
        key: &[u8],
        at: i64,
        deadline: Instant,
        pause: Duration,
        state: &LeaseState,
    ) -> bool {
        let watch = async {
            let opts = WatchOptions::new()
                .with_start_revision(at + 1)
                .with_filters([WatchFilterType::NoPut]);
            let mut c = self.client.clone();
            let Ok(mut stream) = c.watch(key.to_vec(), Some(opts)).await else {
                // The cluster is unreachable: pause, then look again.
                tokio::time::sleep(pause).await;
                return;
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled()
                            || resp
                                .events()
                                .iter()
                                .any(|e| e.event_type() == EventType::Delete)
                        {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(pause).await;
                        return;
                    }
                }
            }
        };
        // A safety net against a watch stream that died without a word.
        let net = self.cfg.lease_ttl.max(Duration::from_secs(1));
        tokio::select! {
            () = watch => true,
            () = tokio::time::sleep(net) => true,
            () = state.lost() => false,
            () = tokio::time::sleep_until(deadline) => false,
        }
    }

    pub(super) fn etcd_error(&self, what: &str, why: &str) -> Error {
        Error::new(ErrorKind::Etcd, OP)
            .with_lock_name(self.cfg.name.clone())
            .with_reason(format!("could not {what}: {why}"))
    }

    /// Runs `f` until it succeeds, fails for good, or `bound` passes;
    /// answers that a failover or a lost quorum gives are retried after
    /// `pause` (jittered).
    pub(super) async fn retry<T, F, Fut>(
        &self,
        bound: Instant,
        pause: Duration,
        what: &str,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last: Option<String>;
        loop {
            let attempt = bound.min(Instant::now() + ATTEMPT_TIMEOUT);
            match tokio::time::timeout_at(attempt, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !transient(&e) => {
                    return Err(self.etcd_error(what, &e.to_string()));
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("no answer within 1 s".into()),
            }
            let now = Instant::now();
            if now >= bound {
                let why = match last {
                    Some(e) => format!("etcd did not answer before the deadline (last error: {e})"),
                    None => "etcd did not answer before the deadline".to_string(),
                };
                return Err(self.etcd_error(what, &why));
            }
            let nap = crate::deadline::jittered(pause.max(Duration::from_millis(1)));
            tokio::time::sleep_until(now.checked_add(nap).unwrap_or(bound).min(bound)).await;
        }
    }
}

/// Whether an etcd error is one a later try may not get: a failover, a
/// lost quorum, a member restarting, a connection that broke.
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    use tonic_code::*;
    match e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code() as i32,
            INVALID_ARGUMENT
                | NOT_FOUND
                | PERMISSION_DENIED
                | UNAUTHENTICATED
                | UNIMPLEMENTED
                | OUT_OF_RANGE
        ),
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::Utf8Error(_)
        | etcd_client::Error::InvalidMetadataValue(_)
        | etcd_client::Error::EndpointsNotManaged => false,
        _ => true,
    }
}

/// The gRPC status codes this module tells apart (`tonic::Code` as
/// numbers, so that `tonic` need not be a direct dependency).
mod tonic_code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const OUT_OF_RANGE: i32 = 11;
    pub(super) const UNIMPLEMENTED: i32 = 12;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}
