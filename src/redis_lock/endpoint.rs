//! Where the lock's server is: a fixed client, or the primary that Redis
//! Sentinel names now.
//!
//! A Sentinel endpoint asks the sentinels for the primary when the lock
//! first needs it and again after a sign that it moved (a connection that
//! failed, a `READONLY` answer, a server that says it is a replica): the
//! address is cached meanwhile, so each new connection (one subscription
//! per grant) costs no question to the sentinels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::RedisError;

use crate::error::{Error, ErrorKind, Result};

/// The lock's server.
pub(super) struct Endpoint {
    /// The primary's client: the one given, or the last a Sentinel named
    /// (`None` until the first question).
    current: Mutex<Option<redis::Client>>,
    sentinel: Option<Sentinel>,
    /// What names this endpoint in messages and in the per-process queue
    /// of its waiters.
    name: String,
}

/// A caller's way to find the server ([`super::RedisLock::with_client_factory`]).
pub(super) type ClientFactory = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = redis::RedisResult<redis::Client>> + Send>,
        > + Send
        + Sync,
>;

enum Source {
    Sentinel(Box<tokio::sync::Mutex<SentinelClient>>),
    Factory(ClientFactory, tokio::sync::Mutex<()>),
}

struct Sentinel {
    client: Source,
    /// The service whose primary is asked for, where known (from a URL).
    service: Option<String>,
    /// Set when the primary may have moved: the next connection asks.
    stale: AtomicBool,
}

impl Endpoint {
    pub(super) fn fixed(client: redis::Client) -> Self {
        let name = client.get_connection_info().addr().to_string();
        Self {
            current: Mutex::new(Some(nodelay(client))),
            sentinel: None,
            name,
        }
    }

    /// A server found by calling `factory`, again whenever it may have
    /// moved, as the sentinels are asked.
    pub(super) fn factory(factory: ClientFactory, name: String) -> Self {
        Self {
            current: Mutex::new(None),
            sentinel: Some(Sentinel {
                client: Source::Factory(factory, tokio::sync::Mutex::new(())),
                service: None,
                stale: AtomicBool::new(true),
            }),
            name,
        }
    }

    pub(super) fn sentinel(client: SentinelClient, service: Option<String>, name: String) -> Self {
        Self {
            current: Mutex::new(None),
            sentinel: Some(Sentinel {
                client: Source::Sentinel(Box::new(tokio::sync::Mutex::new(client))),
                service,
                stale: AtomicBool::new(true),
            }),
            name,
        }
    }

    /// What to check when no primary could be named at the start.
    pub(super) fn hint(&self) -> &'static str {
        match self.sentinel.as_ref().map(|s| &s.client) {
            Some(Source::Sentinel(_)) => " (check the sentinels' addresses and the service name)",
            _ => "",
        }
    }

    pub(super) fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The endpoint's name (a fixed server's address, or the sentinels and
    /// the primary's service name).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The primary's client as last known; `None` only for a Sentinel
    /// endpoint that has not been asked yet ([`resolve`](Self::resolve)).
    pub(super) fn current(&self) -> Option<redis::Client> {
        crate::util::lock(&self.current).clone()
    }

    /// The primary's client, asking the sentinels first if it may have
    /// moved. A fixed endpoint returns its client.
    pub(super) async fn resolve(&self) -> std::result::Result<redis::Client, RedisError> {
        let Some(s) = &self.sentinel else {
            if let Some(c) = self.current() {
                return Ok(c);
            }
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no Redis client",
            )));
        };
        if !s.stale.load(Ordering::Acquire) {
            if let Some(c) = self.current() {
                return Ok(c);
            }
        }
        let asked = match &s.client {
            Source::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                // Someone else may have asked while this task waited.
                if !s.stale.load(Ordering::Acquire) {
                    if let Some(c) = self.current() {
                        return Ok(c);
                    }
                }
                sentinel.async_get_client().await
            }
            Source::Factory(factory, one_at_a_time) => {
                let _turn = one_at_a_time.lock().await;
                if !s.stale.load(Ordering::Acquire) {
                    if let Some(c) = self.current() {
                        return Ok(c);
                    }
                }
                factory().await
            }
        };
        // No primary named now is a passing state as far as a wait is
        // concerned (a failover in progress, sentinels restarting): an
        // I/O error, which costs an attempt. `knows_service` tells a wrong
        // name apart at the start.
        let client = asked.map(nodelay).map_err(|e| {
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("{}: no primary named now ({e})", self.name),
            ))
        })?;
        *crate::util::lock(&self.current) = Some(client.clone());
        s.stale.store(false, Ordering::Release);
        Ok(client)
    }

    /// Whether a sentinel knows the service at all (`SENTINEL
    /// get-master-addr-by-name`): `Some(false)` for a name no sentinel
    /// monitors, `None` if no sentinel answers or the service's name is
    /// not known here. A fixed endpoint: `Some(true)`.
    pub(super) async fn knows_service(&self) -> Option<bool> {
        let Some(s) = &self.sentinel else {
            return Some(true);
        };
        let service = s.service.as_deref()?;
        let Source::Sentinel(sentinel) = &s.client else {
            return None;
        };
        let mut sentinel = sentinel.lock().await;
        let client = sentinel.async_get_sentinel_client().await.ok()?;
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let addr: Option<Vec<String>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(service)
            .query_async(&mut con)
            .await
            .ok()?;
        Some(addr.is_some())
    }

    /// The primary may have moved (a failed connection, `READONLY`, a
    /// replica where the primary was): the next connection asks the
    /// sentinels again. Nothing for a fixed endpoint.
    pub(super) fn moved(&self) {
        if let Some(s) = &self.sentinel {
            s.stale.store(true, Ordering::Release);
        }
    }
}

/// `client` with `TCP_NODELAY` on the connections it opens (redis-rs's
/// default is off). The lock writes small commands back to back on one
/// connection; with Nagle's algorithm a second one waits for the
/// acknowledgement of the first, which the server delays (up to 40 ms)
/// when it has nothing to send yet: behind a 1 ms link that made an
/// uncontended acquire + release take 42 ms instead of a few.
fn nodelay(client: redis::Client) -> redis::Client {
    let info = client.get_connection_info().clone();
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp)).unwrap_or(client)
}

/// `url` as error messages show it: a password in it replaced by `***`
/// (`redis://user:***@host:port/`), so that it never reaches a log. A lone
/// userinfo (`redis://secret@host`) is hidden too: some clients take it as
/// the password.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{user}@{hosts}{tail}")
}

/// Parses `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]`
/// (or `rediss+sentinel://`, with the `redis-tls` feature) into a client
/// of the sentinels for the primary of SERVICE. USER and PASSWORD (percent
/// encoded, as in `redis://`) and DB are for the data servers; the
/// sentinels are asked without them.
pub(super) fn parse_sentinel_url(url: &str) -> Result<(SentinelClient, String, String)> {
    let bad = |why: String| Err(Error::invalid("invalid Redis Sentinel URL", why));
    // What the messages show: never the password.
    let shown = redacted(url);
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
        (true, r)
    } else {
        return bad(format!(
            "{shown:?} does not start with redis+sentinel:// or rediss+sentinel://"
        ));
    };
    if tls && !cfg!(feature = "redis-tls") {
        return Err(
            Error::new(ErrorKind::Unsupported, "invalid Redis Sentinel URL").with_reason(format!(
                "{shown:?} asks for TLS, which this build lacks (enable the `redis-tls` feature)"
            )),
        );
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return bad(format!(
            "{shown:?} names no sentinel (HOST:PORT[,HOST:PORT…])"
        ));
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let Some(service) = segments.next() else {
        return bad(format!(
            "{shown:?} names no service: redis+sentinel://HOST:PORT[,…]/SERVICE[/DB]"
        ));
    };
    let db = segments.next().unwrap_or("0");
    if segments.next().is_some() {
        return bad(format!(
            "{shown:?} has more than /SERVICE/DB after the sentinels"
        ));
    }
    // The credentials and the database, decoded as redis:// decodes them,
    // from a URL of the first sentinel's address.
    let scheme = if tls { "rediss" } else { "redis" };
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let node_url = format!("{scheme}://{user}{}/{db}", hosts[0]);
    let node = match redis::IntoConnectionInfo::into_connection_info(node_url.as_str()) {
        Ok(info) => info,
        Err(e) => return bad(format!("{shown:?}: {e}")),
    };
    let mut node_info = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(node.redis_settings().clone());
    if tls {
        node_info = node_info.set_tls_mode(redis::TlsMode::Secure);
    }
    let sentinels: Vec<String> = hosts.iter().map(|h| format!("{scheme}://{h}/")).collect();
    // redis-rs takes a `String` here without its rustls feature and any
    // `AsRef<str>` with it: a `String` suits both.
    #[allow(clippy::unnecessary_to_owned)]
    let built = SentinelClient::build(
        sentinels,
        service.to_string(),
        Some(node_info),
        SentinelServerType::Master,
    );
    let client = match built {
        Ok(c) => c,
        Err(e) => return bad(format!("{shown:?}: {e}")),
    };
    Ok((
        client,
        service.to_string(),
        format!("sentinel {}/{service}", hosts.join(",")),
    ))
}

#[cfg(test)]
mod tests {
    use super::{parse_sentinel_url, redacted};

    #[test]
    fn passwords_are_hidden_in_what_errors_show() {
        for (url, shown) in [
            ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:pw@h:1", "redis://:***@h:1"),
            ("rediss://pw@h", "rediss://***@h"),
            (
                "redis+sentinel://u:p@w@a:1,b:2/m",
                "redis+sentinel://u:***@a:1,b:2/m",
            ),
            ("redis://h:1/0?x=1", "redis://h:1/0?x=1"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
        let Err(e) = parse_sentinel_url("redis+sentinel://u:hunter2@/svc") else {
            panic!("a URL without sentinels was read");
        };
        assert!(e.to_string().contains("names no sentinel"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn sentinel_urls_are_read_or_refused_with_a_reason() {
        let (_, _, name) =
            parse_sentinel_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/3")
                .unwrap();
        assert_eq!(name, "sentinel 127.0.0.1:26379,127.0.0.1:26380/mymaster");
        assert!(parse_sentinel_url("redis+sentinel://u:p%40ss@h:1/m").is_ok());
        for (url, why) in [
            ("redis://h:1/m", "does not start with"),
            ("redis+sentinel:///m", "names no sentinel"),
            ("redis+sentinel://h:1", "names no service"),
            ("redis+sentinel://h:1/", "names no service"),
            ("redis+sentinel://h:1/m/0/x", "more than"),
            (
                "redis+sentinel://h:1/m/notanumber",
                "redis+sentinel://h:1/m/notanumber",
            ),
        ] {
            let e = parse_sentinel_url(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"));
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
    }
}
