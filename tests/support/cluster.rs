//! A throwaway Redis Cluster on loopback (3 primaries, 3 replicas, each a
//! `redis-server --cluster-enabled yes` of this host, joined with
//! `redis-cli --cluster create`), and the cluster lock's child roles.

use std::process::Command;
use std::time::Duration;

use portalocker::redis::cluster::ClusterClient;
use portalocker::RedisClusterLock;

use super::{epoch_ns, say, RedisServer};

/// Milliseconds without an answer before the cluster fails a node over.
pub const NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

fn redis_cli() -> String {
    if let Ok(p) = std::env::var("PORTALOCKER_REDIS_CLI") {
        return p;
    }
    // Beside the server binary the tests were given, else on PATH.
    if let Ok(server) = std::env::var("PORTALOCKER_REDIS_SERVER") {
        let cli = std::path::Path::new(&server).with_file_name("redis-cli");
        if cli.exists() {
            return cli.to_string_lossy().into_owned();
        }
    }
    "redis-cli".into()
}

/// One command on node `port`, by `redis-cli`, its output trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): scripts/test.sh installs it"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl RedisCluster {
    /// Starts six nodes and joins them: three primaries with one replica
    /// each; returns once every node reports `cluster_state:ok` and agrees
    /// on the slot owners.
    pub fn start() -> Self {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(redis_cli())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("All 16384 slots covered"),
            "redis-cli --cluster create: {text}"
        );
        let c = Self { nodes };
        c.wait_settled();
        c.wait_replicas_online();
        c
    }

    /// Waits until every primary has its replica connected and synced
    /// (60 s at most): until then a primary lists no replica, and a test
    /// that stops "the replica" would stop one the primary does not wait
    /// for.
    fn wait_replicas_online(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let pending: Vec<u16> = self
                .ports()
                .into_iter()
                .filter(|p| {
                    let info = cli(*p, &["INFO", "replication"]);
                    info.contains("role:master")
                        && !(info.contains("connected_slaves:1") && info.contains("state=online"))
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replicas of {pending:?} did not come online"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`start`](Self::start) off the runtime's threads (it waits on
    /// child processes).
    pub async fn started() -> Self {
        tokio::task::spawn_blocking(Self::start).await.unwrap()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Waits until every live node says the cluster is ok and names the
    /// same primary for slot 0..16383 coverage (60 s at most).
    pub fn wait_settled(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| n.port)
                .collect();
            let ok = live
                .iter()
                .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let shards: Vec<String> = live
                .iter()
                .map(|p| {
                    let mut owners: Vec<String> = cli(*p, &["CLUSTER", "NODES"])
                        .lines()
                        .filter(|l| l.contains("master") && !l.contains("fail"))
                        .map(|l| {
                            let f: Vec<&str> = l.split(' ').collect();
                            format!("{} {}", f[1], f[8..].join(" "))
                        })
                        .collect();
                    owners.sort();
                    owners.join("|")
                })
                .collect();
            if ok && shards.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not settle: {shards:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A cluster client seeded with the node at `index`.
    pub fn client_via(&self, index: usize) -> ClusterClient {
        ClusterClient::new(vec![self.nodes[index].url()]).unwrap()
    }

    /// The port of the primary that serves `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        self.try_primary_of(key)
            .unwrap_or_else(|| panic!("no healthy primary serves the slot of {key}"))
    }

    /// The port of the primary that serves `key`'s slot, if one that is not
    /// suspected of failure does.
    pub fn try_primary_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = cli(self.live_port(), &["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap();
        let nodes = cli(self.live_port(), &["CLUSTER", "NODES"]);
        for l in nodes.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    if (a..=b).contains(&slot) {
                        return Some(port_of(f[1]));
                    }
                }
            }
        }
        None
    }

    /// The process id of the node on `port`.
    pub fn pid_of(&self, port: u16) -> u32 {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"))
            .pid()
    }

    /// A replica of the primary on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let id = cli(port, &["CLUSTER", "MYID"]);
        let nodes = cli(self.live_port(), &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f[3] == id && f[2].contains("slave") && !f[2].contains("fail"))
            .map(|f| port_of(f[1]))
            .unwrap_or_else(|| panic!("no replica of {port}: {nodes}"))
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(|n| n.port)
            .unwrap()
    }

    /// `CLUSTER FAILOVER` on `replica`; returns once it is a primary.
    pub fn failover(&self, replica: u16) {
        assert_eq!(cli(replica, &["CLUSTER", "FAILOVER"]), "OK");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !cli(replica, &["ROLE"]).starts_with("master") {
            assert!(std::time::Instant::now() < deadline, "no failover");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_settled();
    }

    /// Moves `key`'s slot (and its keys) from its primary to the primary
    /// on `to`, as `redis-cli --cluster reshard` does.
    pub fn migrate_slot_of(&self, key: &str, to: u16) {
        let from = self.primary_of(key);
        let slot = cli(from, &["CLUSTER", "KEYSLOT", key]);
        let from_id = cli(from, &["CLUSTER", "MYID"]);
        let to_id = cli(to, &["CLUSTER", "MYID"]);
        assert_eq!(
            cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
            "OK"
        );
        assert_eq!(
            cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
            "OK"
        );
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE".to_string(),
                "127.0.0.1".into(),
                to.to_string(),
                String::new(),
                "0".into(),
                "5000".into(),
                "KEYS".into(),
            ];
            args.extend(keys.lines().map(str::to_string));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = cli(from, &a);
            assert!(r == "OK" || r == "NOKEY", "MIGRATE: {r}");
        }
        for p in [to, from] {
            assert_eq!(cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "OK");
        }
        self.wait_settled();
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap()
            .kill();
    }

    /// Waits until a replica of the killed primary on `port` took over.
    pub fn wait_promoted_after(&self, key: &str, dead: u16) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = cli(self.live_port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok");
            if ok && self.try_primary_of(key).is_some_and(|p| p != dead) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no promotion");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn port_of(addr: &str) -> u16 {
    // "127.0.0.1:7000@17000"
    addr.split('@')
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The cluster lock's roles of `support::run_role`.
pub async fn run_role(role: &str, args: &[String]) {
    match role {
        // A fleet worker: says READY, reads "go <end ns>", then until the
        // end loops acquire, a 2 ms section, release, and writes one line
        // per grant and per failed acquire (as `support::fleet_loop`).
        // Arguments: seed URL, name, output file, lease TTL (ms).
        "cluster-fleet" => {
            let client = ClusterClient::new(vec![args[0].clone()]).unwrap();
            let ttl: u64 = args[3].parse().unwrap();
            let lock = RedisClusterLock::new(&args[1], client)
                .timeout(Duration::from_secs(60))
                .check_interval(Duration::from_millis(20))
                .lease_ttl(Duration::from_millis(ttl));
            say("READY", std::process::id());
            let end = super::read_go().await;
            let out = super::fleet_loop(
                || epoch_ns() >= end,
                epoch_ns,
                Duration::from_millis(2),
                || lock.acquire(),
                portalocker::RedisClusterLockGuard::release,
            )
            .await;
            std::fs::write(&args[2], out).unwrap();
            say("DONE", "");
        }
        other => panic!("unknown role {other}"),
    }
}
