//! `open_atomic` / `AtomicFile`: all or nothing, never clobbers, no litter.
mod support;

use std::io::SeekFrom;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portalocker::{open_atomic, AtomicOptions, Durability, PublishError};
use support::{entries, Proc};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

support::child_entry!();

#[cfg(unix)]
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[tokio::test]
async fn commit_publishes_the_complete_file_and_leaves_no_litter() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("out.txt");
    let mut f = open_atomic(&dest).await.unwrap();
    assert_eq!(f.path(), dest);
    f.write_all(b"hello ").await.unwrap();
    assert!(!dest.exists(), "visible before commit");
    f.write_all(b"world").await.unwrap();
    f.commit().await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
    assert_eq!(entries(d.path()), ["out.txt"]);
    // Unix permission bits (Windows files get the directory's ACL).
    #[cfg(unix)]
    {
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o664 & !umask(), "{mode:o}");
    }
}

/// Even with umask 0 the published file is not world-writable.
// Unix only: Unix permission bits and the umask.
#[cfg(unix)]
#[tokio::test]
async fn published_files_are_never_world_writable() {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dest = d.path().join("w");
    let mut child = Proc::role_via(
        "umask 000; exec \"$0\" \"$@\"",
        "child_entry",
        "atomic-try",
        &[dest.to_str().unwrap()],
    );
    assert_eq!(child.expect("RESULT"), "ok");
    child.finish();
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o664, "{mode:o}");
}

#[tokio::test]
async fn large_payloads_and_seeks() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("big.bin");
    let payload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let mut f = open_atomic(&dest).await.unwrap();
    f.write_all(&payload).await.unwrap();
    f.seek(SeekFrom::Start(5)).await.unwrap();
    f.write_all(b"XYZ").await.unwrap();
    f.commit().await.unwrap();
    let mut want = payload.clone();
    want[5..8].copy_from_slice(b"XYZ");
    assert!(std::fs::read(&dest).unwrap() == want);
}

// Unix only: it plants Unix symlinks.
#[cfg(unix)]
#[tokio::test]
async fn an_existing_destination_is_refused_at_once_and_untouched() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("keep.txt");
    std::fs::write(&dest, b"original").unwrap();
    let err = open_atomic(&dest).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("keep.txt"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"original");
    assert_eq!(entries(d.path()), ["keep.txt"]);
    // A dangling symlink counts as existing, and is not followed.
    let link = d.path().join("dangling");
    std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
    let err = open_atomic(&link).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(!d.path().join("nowhere").exists());
}

#[tokio::test]
async fn a_destination_that_appears_meanwhile_is_untouched_and_the_payload_kept() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("race.txt");
    let mut f = open_atomic(&dest).await.unwrap();
    f.write_all(b"our payload").await.unwrap();
    std::fs::write(&dest, b"theirs").unwrap();
    let err = f.commit().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&dest).unwrap(), b"theirs");
    let publish = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<PublishError>())
        .expect("a PublishError inside");
    assert_eq!(publish.destination(), dest);
    let kept = publish.preserved().expect("payload preserved");
    assert_eq!(std::fs::read(kept).unwrap(), b"our payload");
    assert!(
        err.to_string().contains(&kept.display().to_string()),
        "{err}"
    );
    let name = kept.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(".portalocker.") && name.ends_with(".tmp") && name.len() == 33,
        "{name}"
    );
}

#[tokio::test]
async fn discard_and_drop_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("gone.txt");
    let mut f = open_atomic(&dest).await.unwrap();
    f.write_all(&[7u8; 200_000]).await.unwrap();
    f.discard().await.unwrap();
    let mut f = open_atomic(&dest).await.unwrap();
    f.write_all(&[7u8; 200_000]).await.unwrap();
    drop(f);
    // Windows: a write still in flight on the blocking pool keeps its
    // handle open, and a file deleted while open keeps its name until
    // that handle closes (moments later). Unix removes the name at once.
    #[cfg(windows)]
    assert!(
        support::eventually(Duration::from_secs(30), || entries(d.path()).is_empty()).await,
        "{:?}",
        entries(d.path())
    );
    assert!(entries(d.path()).is_empty(), "{:?}", entries(d.path()));
}

// Unix only: it plants Unix symlinks.
#[cfg(unix)]
#[tokio::test]
async fn replace_mode_swaps_content_atomically() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("cfg");
    std::fs::write(&dest, b"v1").unwrap();
    let opts = AtomicOptions::new().replace(true);
    let mut f = opts.open(&dest).await.unwrap();
    f.write_all(b"v2").await.unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"v1",
        "old content until commit"
    );
    f.commit().await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"v2");
    assert_eq!(entries(d.path()), ["cfg"]);
    // A symlink at the destination is replaced, its target untouched.
    let target = d.path().join("target");
    std::fs::write(&target, b"precious").unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut f = opts.open(&link).await.unwrap();
    f.write_all(b"new").await.unwrap();
    f.commit().await.unwrap();
    assert!(!link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&link).unwrap(), b"new");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[tokio::test]
async fn every_durability_publishes() {
    let d = tempfile::tempdir().unwrap();
    for (i, dur) in [Durability::Full, Durability::File, Durability::None]
        .into_iter()
        .enumerate()
    {
        let dest = d.path().join(format!("f{i}"));
        let mut f = AtomicOptions::new()
            .durability(dur)
            .open(&dest)
            .await
            .unwrap();
        f.write_all(b"x").await.unwrap();
        f.commit().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");
    }
}

#[tokio::test]
async fn bad_inputs_are_typed_errors_without_litter() {
    let d = tempfile::tempdir().unwrap();
    let err = open_atomic(d.path()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory);
    let err = AtomicOptions::new()
        .replace(true)
        .open(d.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory);
    for bad in ["", "a\0b"] {
        let err = open_atomic(bad).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
    }
    // Missing parents are created, as upstream does.
    let deep = d.path().join("a/b/c/file");
    let mut f = open_atomic(&deep).await.unwrap();
    f.write_all(b"deep").await.unwrap();
    f.commit().await.unwrap();
    assert_eq!(std::fs::read(&deep).unwrap(), b"deep");
    assert_eq!(entries(d.path()), ["a"]);
}

// Unix only: Unix permission bits, the umask and a `nobody` child.
#[cfg(unix)]
#[tokio::test]
async fn a_read_only_directory_is_permission_denied_without_litter() {
    let d = tempfile::tempdir().unwrap();
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let dest = ro.join("file");
    if support::is_root() {
        let mut child = Proc::role_as_nobody(
            d.path(),
            "child_entry",
            "atomic-try",
            &[dest.to_str().unwrap()],
        );
        assert_eq!(child.expect("RESULT"), "PermissionDenied");
        child.finish();
    } else {
        let err = open_atomic(&dest).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }
    assert!(entries(&ro).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_futures_leave_nothing_or_the_complete_file() {
    let d = tempfile::tempdir().unwrap();
    let payload = vec![42u8; 300_000];
    let mut published = 0;
    for i in 0..200u64 {
        let dest = d.path().join(format!("c{i}"));
        let budget = Duration::from_micros((i * 37) % 3000);
        let run = async {
            let mut f = open_atomic(&dest).await?;
            f.write_all(&payload).await?;
            f.commit().await
        };
        let finished = tokio::time::timeout(budget, run).await.is_ok();
        // A commit already on the blocking pool completes by itself.
        let settled = support::eventually(Duration::from_secs(10), || {
            let names = entries(d.path());
            names.iter().all(|n| !n.starts_with(".portalocker."))
        })
        .await;
        assert!(
            settled,
            "round {i}: temporary files left: {:?}",
            entries(d.path())
        );
        match std::fs::read(&dest) {
            Ok(content) => {
                assert!(content == payload, "round {i}: partial destination");
                published += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                assert!(!finished, "round {i}: finished but nothing published");
            }
        }
    }
    assert!(
        published > 0 && published < 200,
        "{published} of 200 published"
    );
}

/// A writer process is SIGKILLed at a random point (while writing or while
/// committing): the destination is absent or complete, and no temporary
/// file is left (the temporary file is unnamed until published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writers_leave_the_destination_absent_or_complete() {
    let d = tempfile::tempdir().unwrap();
    let chunks = 8;
    let want: Vec<u8> = (0..chunks).flat_map(support::atomic_chunk).collect();
    let mut complete = 0;
    for round in 0..200usize {
        let dest = d.path().join(format!("k{round}"));
        let mut child = Proc::role(
            "child_entry",
            "atomic-write",
            &[dest.to_str().unwrap(), &chunks.to_string()],
        );
        child.expect("OPEN");
        // Kill after a varying amount of progress: during the writes, right
        // after asking to commit, or after the commit.
        let stop = round % (chunks + 2);
        for i in 0..stop.min(chunks) {
            assert_eq!(child.expect("CHUNK"), i.to_string());
        }
        if stop == chunks + 1 {
            child.expect("COMMITTED");
        } else if stop == chunks {
            child.expect("COMMITTING");
        }
        child.kill();
        match std::fs::read(&dest) {
            Ok(content) => {
                assert!(content == want, "round {round}: partial destination");
                complete += 1;
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        }
        // With unnamed temporary files (Linux) a killed writer leaves
        // nothing; elsewhere it may leave its named temporary (a documented
        // limitation), and nothing else.
        let unnamed = cfg!(all(target_os = "linux", not(portalocker_portable)));
        let litter: Vec<_> = entries(d.path())
            .into_iter()
            .filter(|n| !n.starts_with('k'))
            .filter(|n| unnamed || !(n.starts_with(".portalocker.") && n.ends_with(".tmp")))
            .collect();
        assert!(litter.is_empty(), "round {round}: {litter:?}");
    }
    assert!(complete >= 20, "only {complete} commits completed");
}

/// An OS error of `open_atomic` names the destination (the OS's own text
/// does not), keeps its kind, and is said once.
#[tokio::test]
async fn open_errors_name_the_destination() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    // Its "directory" is a regular file: no root privilege helps.
    let dest = file.join("sub").join("out.json");
    let err = open_atomic(&dest).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("{dest:?}")), "{msg}");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists
        ),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_none(), "{err:?}");
}
