//! Side-by-side throughput of atomic 4 KiB writes: Python portalocker's
//! `open_atomic` and this crate, in one run on one machine.
//!
//! ```text
//! cargo bench --bench atomic_compare            # 400 files per case
//! PORTALOCKER_PYTHON=/path/to/python cargo bench --bench atomic_compare
//! ```
//!
//! Python comes from `$PORTALOCKER_PYTHON`, else `target/py-venv` (made by
//! `scripts/test.sh`). Prints a Markdown table of files per second and the
//! ratio to Python (which fsyncs the file, not the directory).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use portalocker::{AtomicOptions, Durability};
use tokio::io::AsyncWriteExt;

const FILES: usize = 400;
const PY: &str = r#"
import os, sys, time, portalocker
d, n = sys.argv[1], int(sys.argv[2])
payload = b"x" * 4096
t = time.perf_counter()
for i in range(n):
    with portalocker.open_atomic(os.path.join(d, "py%d" % i)) as f:
        f.write(payload)
print(n / (time.perf_counter() - t))
"#;

fn python() -> PathBuf {
    std::env::var_os("PORTALOCKER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"))
}

fn python_rate(dir: &Path) -> Option<f64> {
    let out = Command::new(python())
        .args(["-c", PY])
        .arg(dir)
        .arg(FILES.to_string())
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

async fn rust_rate(dir: &Path, durability: Durability) -> f64 {
    let payload = vec![b'x'; 4096];
    let opts = AtomicOptions::new().durability(durability);
    let t = Instant::now();
    for i in 0..FILES {
        let mut f = opts.open(dir.join(format!("rs{i}"))).await.unwrap();
        f.write_all(&payload).await.unwrap();
        f.commit().await.unwrap();
    }
    FILES as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks what benchmarks exist.
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fresh = || tempfile::tempdir_in(base).unwrap();
    let py = python_rate(fresh().path());
    let cases = [
        (
            "this crate, same durability (file fsync)",
            Durability::File,
            1.0,
        ),
        (
            "this crate, fully durable (file + directory fsync)",
            Durability::Full,
            0.5,
        ),
        ("this crate, no fsync", Durability::None, 4.0),
    ];
    println!("| atomic 4 KiB writes ({FILES} files) | files/s | vs Python | target |");
    println!("| --- | --- | --- | --- |");
    match py {
        Some(p) => println!("| Python portalocker 4.4.2 `open_atomic` | {p:.0} | 1.00× | |"),
        None => {
            println!("| Python portalocker 4.4.2 | (not available: set PORTALOCKER_PYTHON) | | |");
        }
    }
    for (name, d, target) in cases {
        let dir = fresh();
        let r = rt.block_on(rust_rate(dir.path(), d));
        match py {
            Some(p) => println!("| {name} | {r:.0} | {:.2}× | ≥ {target}× |", r / p),
            None => println!("| {name} | {r:.0} | | ≥ {target}× |"),
        }
    }
}
