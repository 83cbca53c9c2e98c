//! At most N jobs at a time across every process that runs this example.
//!
//! ```text
//! cargo run --example bounded_jobs            # 6 jobs, at most 2 at once
//! cargo run --example bounded_jobs -- 3 10    # 10 jobs, at most 3 at once
//! ```
//!
//! Start it in several terminals at once: the bound holds across all of
//! them (slot files `bounded-jobs-demo.NN.lock` in `$PORTALOCKER_DEMO_DIR`,
//! default the temporary directory). Python processes using
//! `portalocker.BoundedSemaphore(N, name='bounded-jobs-demo', directory=...)`
//! share the same bound.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use portalocker::BoundedSemaphore;

#[tokio::main]
async fn main() -> portalocker::Result<()> {
    let mut args = std::env::args().skip(1);
    let slots: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let dir = std::env::var_os("PORTALOCKER_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);

    // A private name (and ideally a private directory): unrelated programs
    // using the default name would share the semaphore.
    let sem = BoundedSemaphore::new(slots)
        .name("bounded-jobs-demo")
        .directory(&dir)
        .timeout(Duration::from_secs(60));
    println!("{jobs} jobs, at most {slots} at once across processes");

    let start = Instant::now();
    let tasks: Vec<_> = (0..jobs)
        .map(|job| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let permit = sem.acquire().await?;
                println!(
                    "{:>6.0?} job {job} runs on slot {} (pid {})",
                    start.elapsed(),
                    permit.slot(),
                    std::process::id()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                permit.release().await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("job panicked")?;
    }
    println!("all done in {:.1?}", start.elapsed());
    Ok(())
}
