//! Who holds and who waits, as etcd lists the lock's keys.

use std::time::Duration;

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget};

use super::{EtcdLock, OP};
use crate::error::{Error, ErrorKind, Result};

/// A contender of an [`EtcdLock`] as etcd lists it
/// ([`EtcdLock::holders`]): the holders first, then the waiters, in the
/// order they will be served.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdHolder {
    /// The key (`<name>/<lease>` or `<name>/read/<lease>`).
    pub key: String,
    /// The key's create revision: the fencing token it holds or will hold.
    pub revision: u64,
    /// Whether it is a reader.
    pub shared: bool,
    /// The holder id it recorded (`None` for a key written by another
    /// program, e.g. `etcdctl lock`).
    pub holder_id: Option<String>,
    /// The host it recorded.
    pub host: Option<String>,
    /// The process id it recorded (on its host).
    pub pid: Option<u32>,
}

impl std::fmt::Display for EtcdHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.holder_id {
            Some(id) => write!(f, "holder {id}")?,
            None => write!(f, "key {}", self.key)?,
        }
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        write!(f, " (revision {})", self.revision)
    }
}

impl EtcdLock {
    /// The error for a busy lock, naming its first holder when etcd says.
    pub(super) async fn busy(&self) -> Error {
        let holder = tokio::time::timeout(Duration::from_secs(1), self.first_holder())
            .await
            .ok()
            .flatten();
        let e = Error::new(ErrorKind::AlreadyLocked, OP).with_lock_name(self.cfg.name.clone());
        match holder {
            Some(h) => e
                .with_reason(format!("already locked by {h}"))
                .with_holder_id(h.holder_id),
            None => e.with_reason("already locked"),
        }
    }

    pub(super) async fn first_holder(&self) -> Option<EtcdHolder> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let r = self
            .client
            .clone()
            .get(self.prefix(), Some(opts))
            .await
            .ok()?;
        r.kvs().first().map(|kv| self.describe(kv))
    }

    pub(super) fn describe(&self, kv: &KeyValue) -> EtcdHolder {
        let record: Option<serde_json::Value> = serde_json::from_slice(kv.value()).ok();
        let field = |k: &str| {
            record
                .as_ref()
                .and_then(|r| r.get(k))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        EtcdHolder {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            revision: u64::try_from(kv.create_revision()).unwrap_or(0),
            shared: self.is_reader_key(kv.key()),
            holder_id: field("holder_id"),
            host: field("host"),
            pid: record
                .as_ref()
                .and_then(|r| r.get("pid"))
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
        }
    }

    /// The lock's contenders in the order they are served: the holders
    /// first (the first key, and for readers every reader before the first
    /// writer), then the waiters.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Etcd`] when etcd cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn f(client: portalocker::etcd_client::Client) -> portalocker::Result<()> {
    /// for h in portalocker::EtcdLock::new("jobs", client).holders().await? {
    ///     println!("{h}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holders(&self) -> Result<Vec<EtcdHolder>> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let r = self
            .client
            .clone()
            .get(self.prefix(), Some(opts))
            .await
            .map_err(|e| self.etcd_error("list the lock's keys", &e.to_string()))?;
        Ok(r.kvs().iter().map(|kv| self.describe(kv)).collect())
    }
}
