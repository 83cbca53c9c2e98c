//! `RedisLock` uncontended acquire + release against a local server,
//! beside a bare `SET NX` + `DEL` baseline on one connection.
//!
//! ```text
//! cargo bench --features redis --bench redis_lock
//! ```
//!
//! Starts its own `redis-server` on a free loopback port.

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use portalocker::RedisLock;

fn uncontended(c: &mut Criterion) {
    let srv = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = srv.client();
    let mut g = c.benchmark_group("redis_uncontended");
    let mut con = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    g.bench_function("set_nx_del_baseline", |b| {
        b.to_async(&rt).iter(|| {
            let mut con = con.clone();
            async move {
                let ok: bool = portalocker::redis::cmd("SET")
                    .arg("bench-key")
                    .arg(1)
                    .arg("NX")
                    .query_async::<Option<String>>(&mut con)
                    .await
                    .unwrap()
                    .is_some();
                assert!(ok);
                let _: i64 = portalocker::redis::cmd("DEL")
                    .arg("bench-key")
                    .query_async(&mut con)
                    .await
                    .unwrap();
            }
        });
    });
    let lock = RedisLock::new("bench", client);
    g.bench_function("portalocker_acquire_release", |b| {
        b.to_async(&rt).iter(|| async {
            lock.acquire().await.unwrap().release().await.unwrap();
        });
    });
    g.finish();
    let _ = &mut con;
}

criterion_group!(benches, uncontended);
criterion_main!(benches);
