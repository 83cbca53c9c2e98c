//! A distributed lock on Redis, shared with Python portalocker holders.
//!
//! ```text
//! redis-server --port 6379 --save '' &         # any reachable server
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example redis_lock
//! ```
//!
//! Run it twice at once: the second run waits for the first. A Python
//! process holding `portalocker.RedisLock('portalocker-demo')` on the same
//! server excludes it too.

use std::time::Duration;

use portalocker::{redis, RedisLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url.as_str())?;
    if let Err(e) = client.get_multiplexed_async_connection().await {
        eprintln!(
            "no Redis server reachable at {url} ({e}).\n\
             Start one (e.g. `redis-server --port 6379 --save ''`) or set REDIS_URL."
        );
        std::process::exit(2);
    }

    let lock = RedisLock::new("portalocker-demo", client)
        .timeout(Duration::from_secs(30))
        .fencing(true);
    println!("waiting for the lock on channel {:?} ...", lock.channel());
    let guard = lock.acquire().await?;
    println!(
        "held as {} with fencing token {:?}",
        guard.holder_id(),
        guard.fence_token()
    );

    // Do the work only while the lock is held: if it is lost (the server
    // went away, our connection was killed), stop at once.
    tokio::select! {
        _ = guard.lost() => {
            eprintln!("lock lost: stopping");
            std::process::exit(1);
        }
        _ = tokio::time::sleep(Duration::from_secs(5)) => println!("work done"),
    }
    guard.release().await?;
    println!("released");
    Ok(())
}
