//! A tour of the file locks: a lock with a timeout, `try_acquire`,
//! cancellation in `tokio::select!`, and a re-entrant `RLock`.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Run it in two terminals at once (with the same `PORTALOCKER_DEMO_DIR`)
//! to watch two processes contend for one lock file.

use std::path::PathBuf;
use std::time::Duration;

use portalocker::{Lock, RLock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("PORTALOCKER_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join("portalocker-quickstart.lock");
    println!("lock file: {}", path.display());

    // 1. A lock with a timeout: wait up to 2 s for other holders.
    let lock = Lock::new(&path).timeout(Duration::from_secs(2));
    let guard = match lock.acquire().await {
        Ok(guard) => guard,
        Err(e) if e.is_already_locked() => {
            println!("another process holds {}: {e}", path.display());
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    println!("1. acquired (waited at most 2 s)");

    // 2. try_acquire never waits: a second owner sees the lock busy at once,
    //    even inside this process (each acquisition is its own owner).
    match lock.try_acquire().await {
        Err(e) if e.is_already_locked() => println!("2. try_acquire: {e}"),
        other => println!("2. unexpected: {other:?}"),
    }

    // 3. Cancellation: race an acquire against a short sleep. The sleep
    //    wins; the dropped acquire leaves no lock and no open file behind.
    let waiting = Lock::new(&path).timeout(Duration::from_secs(60));
    tokio::select! {
        r = waiting.acquire() => println!("3. unexpected: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {
            println!("3. gave up after 300 ms; the pending acquire was dropped cleanly");
        }
    }
    guard.release().await?;
    println!(
        "   released; a fresh try_acquire now succeeds: {}",
        lock.try_acquire().await.is_ok()
    );

    // 4. RLock: one owner may nest acquisitions; the file is unlocked when
    //    the last level goes.
    let rlock = RLock::new(&path);
    let outer = rlock.acquire().await?;
    let inner = rlock.acquire().await?;
    println!("4. RLock held {} levels deep", rlock.count());
    drop(inner);
    outer.release().await?;
    println!("   RLock count after release: {}", rlock.count());
    Ok(())
}
