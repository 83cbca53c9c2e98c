//! `RedisLock` over TLS (`rediss://`, feature `redis-tls`) against a real
//! `redis-server --tls-port`, with a throwaway CA made here by `openssl`:
//! server verification, client certificates, `#insecure`, and a Python
//! portalocker contender on the same TLS server.
//!
//! Unix only: the Redis server and `openssl` come from Debian on the Linux
//! CI host.
#![cfg(all(feature = "redis-tls", unix))]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portalocker::redis::{self, ClientTlsConfig, TlsCertificates};
use portalocker::{ErrorKind, RedisLock};

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): the TLS tests need it (scripts/test.sh installs it)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client
/// certificate, all signed by the CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-new",
            "-days",
            "2",
            "-subj",
            "/CN=portalocker test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(d, &ca);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            let key = format!("{who}.key");
            let csr = format!("{who}.csr");
            let crt = format!("{who}.crt");
            let ext = format!("{who}.ext");
            let subj = format!("/CN={who}");
            let mut req = vec!["req", "-new", "-subj", &subj];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr]);
            openssl(d, &req);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                    "-out",
                    &crt,
                ],
            );
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn certificates(&self, with_client_cert: bool) -> TlsCertificates {
        TlsCertificates {
            client_tls: with_client_cert.then(|| ClientTlsConfig {
                client_cert: self.read("client.crt"),
                client_key: self.read("client.key"),
            }),
            root_cert: Some(self.read("ca.crt")),
        }
    }
}

/// A `redis-server` listening only on a TLS port.
struct TlsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    async fn start(pki: &Pki, auth_clients: bool) -> Self {
        let bin =
            std::env::var("PORTALOCKER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        for _ in 0..20 {
            let port = support::free_port();
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new(&bin)
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--tls-cert-file")
                .arg(pki.path("server.crt"))
                .arg("--tls-key-file")
                .arg(pki.path("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.path("ca.crt"))
                .args([
                    "--tls-auth-clients",
                    if auth_clients { "yes" } else { "no" },
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin} ({e})"));
            let mut s = Self {
                child,
                port,
                _dir: dir,
            };
            if s.wait_ready(pki).await {
                return s;
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        panic!("redis-server with TLS did not start on any of 20 ports (is it built with TLS?)");
    }

    async fn wait_ready(&mut self, pki: &Pki) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let client = self.client("localhost", pki.certificates(true));
            let up = async {
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            };
            if up.await.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn url(&self, host: &str) -> String {
        format!("rediss://{host}:{}/", self.port)
    }

    fn client(&self, host: &str, certs: TlsCertificates) -> redis::Client {
        redis::Client::build_with_tls(self.url(host), certs).unwrap()
    }

    async fn cmd<T: redis::FromRedisValue>(&self, pki: &Pki, args: &[&str]) -> T {
        let mut con = self
            .client("localhost", pki.certificates(true))
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut con).await.unwrap()
    }

    async fn numsub(&self, pki: &Pki, channel: &str) -> usize {
        let v: Vec<(String, usize)> = self.cmd(pki, &["PUBSUB", "NUMSUB", channel]).await;
        v[0].1
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Over TLS the subscription connection is named before it subscribes,
/// contenders see the holder (and it answers their pings), and release
/// frees the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_over_tls_is_named_excludes_and_releases() {
    let pki = Pki::new();
    let srv = TlsServer::start(&pki, false).await;
    let lock = RedisLock::new("tls", srv.client("localhost", pki.certificates(false)));
    let g = lock.acquire().await.unwrap();
    let list: String = srv.cmd(&pki, &["CLIENT", "LIST"]).await;
    let name = format!("name=tls-lock-{} ", g.holder_id());
    let line = list
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("no client {name}in {list}"));
    assert!(
        line.contains("sub=1"),
        "the named connection holds the subscription: {line}"
    );
    // Another route to the server (so another contender, not a task of this
    // one): its probe over TLS finds the holder, which answers.
    let other = RedisLock::new("tls", srv.client("127.0.0.1", pki.certificates(false)));
    for _ in 0..3 {
        let err = support::assert_busy(&other).await;
        assert_eq!(err.holder_id(), Some(g.holder_id()));
    }
    assert!(!g.is_lost());
    g.release().await.unwrap();
    assert_eq!(srv.numsub(&pki, "tls").await, 0);
    let g = other
        .timeout(Duration::from_secs(10))
        .fencing(true)
        .acquire()
        .await
        .unwrap();
    assert_eq!(g.fence_token(), Some(1));
    // A holder over TLS survives the loss of its command connection.
    let killed: i64 = srv
        .cmd(&pki, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .await;
    assert!(killed >= 1);
    support::assert_busy(&lock).await;
    g.release().await.unwrap();
}

/// Over TLS a connect costs three round trips (TCP, TLS, `HELLO`): a lock
/// that acquired before subscribes on a connection it opened ahead, one
/// older than the acquisition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_lock_over_tls_subscribes_on_a_connection_opened_ahead() {
    let pki = Pki::new();
    let srv = TlsServer::start(&pki, false).await;
    let lock = RedisLock::new("warm", srv.client("localhost", pki.certificates(false)));
    let mut ahead = false;
    // The first acquisition connects itself; from the second on, the
    // connection opened meanwhile is used once it is ready.
    for _ in 0..50 {
        let before: u64 = srv.cmd(&pki, &["CLIENT", "ID"]).await;
        let g = lock.acquire().await.unwrap();
        let list: String = srv.cmd(&pki, &["CLIENT", "LIST"]).await;
        let name = format!("name=warm-lock-{} ", g.holder_id());
        let id: u64 = list
            .lines()
            .find(|l| l.contains(&name))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no client {name}in {list}"));
        g.release().await.unwrap();
        if id < before {
            ahead = true;
            break;
        }
    }
    assert!(ahead, "every acquisition over TLS connected anew");
}

/// A server that requires client certificates: without one the lock fails
/// with a Redis error (no panic, nothing left behind); with one it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented() {
    let pki = Pki::new();
    let srv = TlsServer::start(&pki, true).await;
    support::fails_with(
        ErrorKind::Redis,
        RedisLock::new("cc", srv.client("localhost", pki.certificates(false)))
            .timeout(support::ms(500))
            .acquire(),
    )
    .await;
    let g = RedisLock::new("cc", srv.client("localhost", pki.certificates(true)))
        .acquire()
        .await
        .unwrap();
    assert_eq!(srv.numsub(&pki, "cc").await, 1);
    g.release().await.unwrap();
    assert_eq!(srv.numsub(&pki, "cc").await, 0);
}

/// An unknown CA is refused with a clear error; `#insecure` accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_is_refused_unless_insecure() {
    let pki = Pki::new();
    let srv = TlsServer::start(&pki, false).await;
    let strict = redis::Client::open(srv.url("localhost")).unwrap();
    let lock = RedisLock::new("ins", strict).timeout(support::ms(500));
    let err = support::fails_with(ErrorKind::Redis, lock.acquire()).await;
    assert!(err.to_string().contains("UnknownIssuer"), "not why: {err}");
    let insecure = redis::Client::open(format!("{}#insecure", srv.url("localhost"))).unwrap();
    let g = RedisLock::new("ins", insecure).acquire().await.unwrap();
    assert_eq!(srv.numsub(&pki, "ins").await, 1);
    g.release().await.unwrap();
}

/// Python portalocker on the same TLS server: a Rust holder refuses it,
/// and it gets the lock once the holder released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_contends_over_tls() {
    let pki = Pki::new();
    let srv = TlsServer::start(&pki, false).await;
    let g = RedisLock::new("pytls", srv.client("localhost", pki.certificates(false)))
        .acquire()
        .await
        .unwrap();
    let script = r#"
import sys, redis, portalocker
conn = redis.Redis.from_url(sys.argv[1], ssl_ca_certs=sys.argv[2])
lock = portalocker.RedisLock("pytls", connection=conn, timeout=float(sys.argv[3]), fail_when_locked=sys.argv[3] == "0", interrupt_on_lost=False)
"#
    .to_string()
        + support::PY_REPORT_ONE_ACQUIRE;
    let ca = pki.path("ca.crt");
    let ca = ca.to_str().unwrap();
    let url = srv.url("localhost");
    let mut py = support::Proc::python(&script, &[&url, ca, "0"]);
    assert_eq!(py.expect("RESULT"), "AlreadyLocked");
    py.finish();
    assert!(!g.is_lost(), "Python's probe reaped the TLS holder");
    g.release().await.unwrap();
    let mut py = support::Proc::python(&script, &[&url, ca, "10"]);
    assert_eq!(py.expect("RESULT"), "acquired");
    py.finish();
}
