//! Writing a configuration file atomically: readers see the old file or the
//! complete new one, never a torn write, and a crash leaves no litter.
//!
//! ```text
//! cargo run --example atomic_config
//! ```

use std::path::PathBuf;

use portalocker::{open_atomic, AtomicOptions};
use tokio::io::AsyncWriteExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let dir = std::env::var_os("PORTALOCKER_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("atomic-config-demo-{}", std::process::id()));
    let path = dir.join("app.toml");

    // 1. Create: never replaces an existing file.
    let mut f = open_atomic(&path).await?;
    f.write_all(b"workers = 4\n").await?;
    f.commit().await?; // fsync file, publish, fsync directory
    println!(
        "created {}: {:?}",
        path.display(),
        std::fs::read_to_string(&path)?
    );

    match open_atomic(&path).await {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            println!("a second create is refused: {e}");
        }
        other => println!("unexpected: {other:?}"),
    }

    // 2. Update: replace atomically.
    let mut f = AtomicOptions::new().replace(true).open(&path).await?;
    f.write_all(b"workers = 8\n").await?;
    println!(
        "before commit, readers still see {:?}",
        std::fs::read_to_string(&path)?
    );
    f.commit().await?;
    println!("after commit: {:?}", std::fs::read_to_string(&path)?);

    // 3. Abandon: dropping (or discard()) leaves the old file and no litter.
    let mut f = AtomicOptions::new().replace(true).open(&path).await?;
    f.write_all(b"half-written").await?;
    drop(f);
    println!(
        "after an abandoned write: {:?}",
        std::fs::read_to_string(&path)?
    );

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
