//! Readers share a Redis lock, a writer waits for them and keeps new
//! readers out while it waits (no writer starvation), and the lock's loss
//! hooks stop work that is no longer protected.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example redis_readers_writers
//! ```

use std::time::Duration;

use portalocker::{redis, LockFlags, RedisLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url.as_str())?;
    if let Err(e) = client.get_multiplexed_async_connection().await {
        eprintln!("no Redis server reachable at {url} ({e}); start one or set REDIS_URL");
        std::process::exit(2);
    }
    let channel = format!("portalocker-rw-demo-{}", std::process::id());
    let reader = RedisLock::new(&channel, client.clone())
        .flags(LockFlags::SHARED)
        .on_lost(|e| eprintln!("on_lost: {e}"));
    let writer = RedisLock::new(&channel, client.clone()).timeout(Duration::from_secs(10));

    let r1 = reader.acquire().await?;
    let r2 = reader.acquire().await?;
    println!("two readers hold {channel:?} together");

    let w = tokio::spawn(async move {
        let g = writer.acquire().await?;
        println!("writer: got the lock once the readers left");
        g.release().await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    match reader.clone().fail_when_locked(true).acquire().await {
        Err(e) if e.is_already_locked() => {
            println!("a third reader is kept out by the waiting writer");
        }
        Ok(g) => {
            println!("a third reader joined (the writer had not subscribed yet)");
            g.release().await?;
        }
        Err(e) => return Err(e.into()),
    }

    // Work under a reader's lock, stopped if the lock is lost.
    let sum = r1
        .run_while_held(async { (1..=10u64).sum::<u64>() })
        .await?;
    println!("reader computed {sum} under the lock");
    r1.release().await?;
    r2.release().await?;
    w.await??;
    Ok(())
}
