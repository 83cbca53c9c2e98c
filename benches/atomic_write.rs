//! Atomic writes of 4 KiB files, beside a plain-std baseline at the same
//! durability (temporary file, write, `fsync`, `link`, `unlink`: what
//! Python portalocker does).
//!
//! ```text
//! cargo bench --bench atomic_write
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use portalocker::{AtomicOptions, Durability};
use tokio::io::AsyncWriteExt;

static N: AtomicU64 = AtomicU64::new(0);

fn next(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("f{}", N.fetch_add(1, Ordering::Relaxed)))
}

fn std_link_publish(dir: &Path, payload: &[u8]) {
    let dest = next(dir);
    let tmp = dir.join(format!(".tmp{}", N.fetch_add(1, Ordering::Relaxed)));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .unwrap();
    f.write_all(payload).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::hard_link(&tmp, &dest).unwrap();
    std::fs::remove_file(&tmp).unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let payload = vec![b'x'; 4096];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("atomic_write_4k");
    g.bench_function("std_tmp_write_fsync_link_unlink", |b| {
        b.iter(|| std_link_publish(dir.path(), &payload));
    });
    for (name, d) in [
        ("portalocker_file_fsync", Durability::File),
        ("portalocker_full_fsync_dir", Durability::Full),
        ("portalocker_no_fsync", Durability::None),
    ] {
        let opts = AtomicOptions::new().durability(d);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut f = opts.open(next(dir.path())).await.unwrap();
                f.write_all(&payload).await.unwrap();
                f.commit().await.unwrap();
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
