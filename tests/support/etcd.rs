//! A throwaway etcd cluster on loopback (members killed by pid on drop),
//! and the child roles of the etcd lock's multi-process tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portalocker::etcd_client::Client;
use portalocker::EtcdLock;

use super::{epoch_ns, free_port, say};

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// `n` etcd members on free 127.0.0.1 ports, data under a temporary
/// directory (in `/dev/shm` where there is one: etcd syncs every write,
/// which a busy disk makes slow). The binary is `$PORTALOCKER_ETCD` or
/// `etcd`.
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
    token: String,
}

impl EtcdCluster {
    pub fn binary() -> String {
        std::env::var("PORTALOCKER_ETCD").unwrap_or_else(|_| "etcd".into())
    }

    /// Starts `n` members and waits until the cluster answers a write.
    pub async fn start(n: usize) -> Self {
        for _ in 0..5 {
            let base = if std::path::Path::new("/dev/shm").is_dir() {
                tempfile::tempdir_in("/dev/shm").unwrap()
            } else {
                tempfile::tempdir().unwrap()
            };
            let members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    dir: base.path().join(format!("m{i}")),
                    child: None,
                })
                .collect();
            let mut c = Self {
                members,
                _dir: base,
                token: format!("t{}", epoch_ns()),
            };
            for i in 0..n {
                c.spawn(i, "new");
            }
            if c.wait_ready(Duration::from_secs(60)).await {
                return c;
            }
            // A port was taken between the probe and etcd's bind: again.
            c.kill_all();
        }
        panic!("etcd did not start on any of 5 sets of ports");
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(Self::binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): the etcd tests need etcd (scripts/test.sh installs \
                     Debian's etcd-server, or set PORTALOCKER_ETCD)",
                    Self::binary()
                )
            });
        m.child = Some(child);
    }

    /// Waits until a write through every live member succeeds.
    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            loop {
                if let Some(Ok(Some(_))) = self.members[i].child.as_mut().map(Child::try_wait) {
                    return false;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                let ep = self.endpoint(i);
                let ok = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut c = Client::connect([ep], None).await.ok()?;
                    c.put("portalocker-test-ready", "1", None).await.ok()
                })
                .await;
                if matches!(ok, Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        true
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client address.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// `endpoints()` joined with commas (for child processes).
    pub fn endpoint_list(&self) -> String {
        self.endpoints().join(",")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), None).await.unwrap()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.members[i].child.as_ref().unwrap().id()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it serves.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        assert!(
            self.wait_ready(Duration::from_secs(60)).await,
            "member {i} did not come back"
        );
    }

    /// The index of the current leader, asked of the live members.
    pub async fn leader(&self) -> usize {
        for _ in 0..600 {
            for i in 0..self.members.len() {
                if self.members[i].child.is_none() {
                    continue;
                }
                let ep = self.endpoint(i);
                let st = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut c = Client::connect([ep], None).await.ok()?;
                    c.status().await.ok()
                })
                .await;
                if let Ok(Some(st)) = st {
                    if st.leader() != 0 && st.leader() == st.header().map_or(0, |h| h.member_id()) {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no etcd member says it leads");
    }

    fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(c) = &m.child {
                // Resume a stopped member so that SIGKILL reaps it promptly.
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
            }
        }
        self.kill_all();
    }
}

async fn connect(list: &str) -> Client {
    let eps: Vec<&str> = list.split(',').collect();
    Client::connect(eps, None).await.unwrap()
}

/// The etcd roles of `support::run_role`.
pub async fn run_role(role: &str, args: &[String]) {
    match role {
        // A fleet worker: says READY, reads "go <end ns>" from stdin, then
        // until the end loops acquire, a 1 ms section, release, and
        // writes one line per grant ("G <start> <end> <token>") and per
        // failed acquire ("T <asked> <failed> <error>") to the output
        // file. Arguments: endpoints, name, output file, lease TTL (s).
        "etcd-fleet" => {
            let client = connect(&args[0]).await;
            let ttl: u64 = args[3].parse().unwrap();
            let lock = EtcdLock::new(&args[1], client)
                .timeout(Duration::from_secs(60))
                .lease_ttl(Duration::from_secs(ttl));
            say("READY", std::process::id());
            let end = super::read_go().await;
            let out = super::fleet_loop(
                || epoch_ns() >= end,
                epoch_ns,
                Duration::from_millis(1),
                || lock.acquire(),
                portalocker::EtcdLockGuard::release,
            )
            .await;
            std::fs::write(&args[2], out).unwrap();
            say("DONE", "");
        }
        // Acquires (lease TTL args[2] s), says "GOT <token>", then for each
        // line "check" on stdin says "LOST <is_lost>"; exits at EOF.
        // Arguments: endpoints, name, lease TTL (s).
        "etcd-hold" => {
            let client = connect(&args[0]).await;
            let ttl: u64 = args[2].parse().unwrap();
            let g = EtcdLock::new(&args[1], client)
                .lease_ttl(Duration::from_secs(ttl))
                .timeout(Duration::from_secs(30))
                .acquire()
                .await
                .unwrap();
            say("GOT", g.fence_token());
            super::answer_checks(|| g.is_lost()).await;
            let _ = g.release().await;
        }
        other => panic!("unknown role {other}"),
    }
}
