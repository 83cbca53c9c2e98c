//! The lease directory: every filesystem call of the lease lock, blocking
//! (the async side runs them on the blocking pool).
//!
//! Entries:
//!
//! * `<generation>` — a claim: 20 decimal digits, the owner record inside.
//!   Created only by `link(2)` of a fully written file (or, where the
//!   filesystem has no hard links, `O_CREAT|O_EXCL`), never overwritten
//!   except by its own holder's heartbeat and release.
//! * `.tmp-<holder id>-<n>` — a record being written, before its link.
//! * `.probe-<holder id>` — a file touched to read the filesystem's clock
//!   (for removing old claims).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::record::{Record, MAX_RECORD};
use crate::sys::{self, FileId};

/// Claims older than this (by the filesystem's clock) below the newest
/// may be removed. Far longer than [`CLAIM_WINDOW`], so that a contender
/// can never re-create a claim that was removed (see `mod.rs`).
const KEEP: Duration = Duration::from_secs(300);

/// A contender must have created its claim within this long of reading
/// the claim before it, or give the new claim up.
pub(super) const CLAIM_WINDOW: Duration = Duration::from_secs(10);

/// How many claims may pile up before a successful claim looks for old
/// ones to remove.
const TIDY_OVER: usize = 32;

/// A claim file's name.
pub(super) fn claim_name(generation: u64) -> String {
    format!("{generation:020}")
}

fn parse_claim_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// What the newest claim says.
#[derive(Debug)]
pub(super) enum Newest {
    /// No claim yet.
    None,
    /// The newest claim this contender knew of is gone, and nothing newer
    /// is there: removed from outside. Its holder may not know yet, so it
    /// is waited out as a claim that stopped beating; the next claim is
    /// `generation + 1`, so tokens still increase.
    Vanished { generation: u64 },
    /// The newest claim is empty: made with `O_CREAT|O_EXCL` where the
    /// filesystem has no hard links, its record not written yet.
    Writing { generation: u64 },
    /// The newest claim, its record and its exact bytes (a heartbeat
    /// changes them).
    Claim {
        generation: u64,
        record: Record,
        bytes: Vec<u8>,
    },
}

/// A claim this process made: the open claim file (its heartbeat writes
/// through this handle, so it never touches a file that replaced it).
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) generation: u64,
    file: File,
    id: FileId,
}

/// Why an entry of the lease directory could not be used.
#[derive(Debug)]
pub(super) enum DirError {
    Io(PathBuf, io::Error),
    /// A claim whose record does not parse (not written by this lock, or
    /// damaged): never broken, never granted over.
    BadRecord(PathBuf, String),
    /// The lease path is not a directory this lock can use.
    NotADirectory(PathBuf, &'static str),
}

pub(super) type DirResult<T> = Result<T, DirError>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DirError + '_ {
    move |e| DirError::Io(path.to_path_buf(), e)
}

/// The lease directory at `path`.
#[derive(Clone, Debug)]
pub(super) struct LeaseDir {
    path: PathBuf,
}

impl LeaseDir {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn entry(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory if it is missing; refuses a symlink or
    /// anything that is not a directory at the lease path.
    pub(super) fn ensure(&self) -> DirResult<()> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => Err(DirError::NotADirectory(
                self.path.clone(),
                "a symbolic link (the lease directory is never followed through one)",
            )),
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(DirError::NotADirectory(
                self.path.clone(),
                "not a directory (a lease lock's path is a directory it keeps its claims in)",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match std::fs::create_dir(&self.path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.ensure_existing(),
                    Err(e) => Err(DirError::Io(self.path.clone(), e)),
                }
            }
            Err(e) => Err(DirError::Io(self.path.clone(), e)),
        }
    }

    fn ensure_existing(&self) -> DirResult<()> {
        let m = std::fs::symlink_metadata(&self.path).map_err(io_at(&self.path))?;
        if m.is_dir() {
            Ok(())
        } else {
            Err(DirError::NotADirectory(
                self.path.clone(),
                "not a directory",
            ))
        }
    }

    /// The claim generations present, sorted.
    fn claims(&self) -> DirResult<Vec<u64>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path).map_err(io_at(&self.path))? {
            let e = e.map_err(io_at(&self.path))?;
            if let Some(g) = e.file_name().to_str().and_then(parse_claim_name) {
                out.push(g);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The newest claim, at or above `at_least` (a generation this process
    /// knows exists). A contender that knows one starts there and looks
    /// upward name by name (no directory listing: a poll costs a few
    /// opens however many old claims the directory keeps); the directory
    /// is listed only when it knows none, or the one it knew is gone.
    pub(super) fn newest(&self, at_least: u64) -> DirResult<Newest> {
        self.ensure()?;
        let mut generation = at_least;
        let mut bytes = if at_least > 0 {
            self.read_bytes(at_least)?
        } else {
            None
        };
        if bytes.is_none() {
            let listed = self.claims()?.last().copied().unwrap_or(0);
            if listed > at_least {
                generation = listed;
                bytes = self.read_bytes(listed)?;
            }
            if generation > 0 && bytes.is_none() {
                // Removed from outside (the newest is never tidied away).
                return Ok(Newest::Vanished { generation });
            }
        }
        // Names above are looked up directly: a listing may lag behind
        // the names (an attribute cache).
        while let Some(up) = generation.checked_add(1) {
            match self.read_bytes(up)? {
                Some(b) => {
                    generation = up;
                    bytes = Some(b);
                }
                None => break,
            }
        }
        let Some(bytes) = bytes else {
            return Ok(Newest::None);
        };
        if bytes.is_empty() {
            return Ok(Newest::Writing { generation });
        }
        let record = self.parse(generation, &bytes)?;
        Ok(Newest::Claim {
            generation,
            record,
            bytes,
        })
    }

    fn parse(&self, generation: u64, bytes: &[u8]) -> DirResult<Record> {
        let path = self.entry(&claim_name(generation));
        match Record::parse(bytes) {
            Ok(r) if r.generation == generation => Ok(r),
            Ok(r) => Err(DirError::BadRecord(
                path,
                format!("it records generation {}", r.generation),
            )),
            Err(why) => Err(DirError::BadRecord(path, why)),
        }
    }

    /// Reads claim `generation`'s bytes: `None` if it does not exist.
    fn read_bytes(&self, generation: u64) -> DirResult<Option<Vec<u8>>> {
        // A claim replaced between the open and the read (a release) makes
        // some FUSE filesystems, which answer by name, say "not found" for
        // the open file: read it again.
        for _ in 0..3 {
            if let Some(r) = self.read_once(generation)? {
                return Ok(r);
            }
        }
        Ok(None)
    }

    /// As `read_bytes`; `Ok(None)`: replaced while read, try again.
    #[allow(clippy::option_option)]
    fn read_once(&self, generation: u64) -> DirResult<Option<Option<Vec<u8>>>> {
        let path = self.entry(&claim_name(generation));
        let mut o = OpenOptions::new();
        o.read(true);
        sys::harden(&mut o, 0o644);
        let mut f = match o.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
            Err(e) if sys::is_symlink_refusal(&e) => {
                return Err(DirError::BadRecord(
                    path,
                    "a symbolic link, not a claim".into(),
                ))
            }
            Err(e) => return Err(DirError::Io(path, e)),
        };
        match sys::regular_file_id(&f) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(DirError::BadRecord(path, "not a regular file".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DirError::Io(path, e)),
        }
        let mut bytes = Vec::new();
        match (&mut f).take(MAX_RECORD as u64 + 1).read_to_end(&mut bytes) {
            Ok(_) => Ok(Some(Some(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DirError::Io(path, e)),
        }
    }

    /// Tries to create claim `record.generation` with `record` in it,
    /// atomically: `None` if it exists already.
    pub(super) fn create(&self, record: &Record, serial: u64) -> DirResult<Option<Claim>> {
        let generation = record.generation;
        let target = self.entry(&claim_name(generation));
        let tmp = self.entry(&format!(".tmp-{}-{serial}", record.holder_id));
        let bytes = record.to_bytes();
        let file = sys::create_new(&tmp, 0o644).map_err(io_at(&tmp))?;
        let written = (&file).write_all(&bytes).and_then(|()| sys::fsync(&file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(DirError::Io(tmp, e));
        }
        // The identity now, while the file has its first name: some FUSE
        // filesystems answer `fstat` by the name they opened it under.
        let id = match sys::regular_file_id(&file) {
            Ok(Some(id)) => id,
            Ok(None) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(DirError::BadRecord(tmp, "not a regular file".into()));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(DirError::Io(tmp, e));
            }
        };
        let linked = std::fs::hard_link(&tmp, &target);
        let linked = match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // A lost reply (a network filesystem retrying the request):
            // the link count says whether it happened.
            Err(e) if sys::link_count(&file).is_ok_and(|n| n == 2) => {
                let _ = e;
                Ok(true)
            }
            Err(e) if sys::hard_links_unsupported(&e) => {
                let _ = std::fs::remove_file(&tmp);
                return self.create_exclusive(record, &bytes);
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        match linked.map_err(io_at(&target))? {
            false => Ok(None),
            true => Ok(Some(Claim {
                generation,
                file,
                id,
            })),
        }
    }

    /// The claim without hard links: `O_CREAT|O_EXCL`, then the record.
    /// A reader may see it empty for a moment; an empty claim is "being
    /// written" (never stale until it stays so for a whole TTL).
    fn create_exclusive(&self, record: &Record, bytes: &[u8]) -> DirResult<Option<Claim>> {
        let target = self.entry(&claim_name(record.generation));
        let file = match sys::create_new(&target, 0o644) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(DirError::Io(target, e)),
        };
        (&file)
            .write_all(bytes)
            .and_then(|()| sys::fsync(&file))
            .map_err(io_at(&target))?;
        let id = sys::regular_file_id(&file)
            .map_err(io_at(&target))?
            .ok_or_else(|| DirError::BadRecord(target.clone(), "not a file".into()))?;
        Ok(Some(Claim {
            generation: record.generation,
            file,
            id,
        }))
    }

    /// A heartbeat: rewrites the record in place (same length) through the
    /// claim's own handle and syncs it, then checks the claim is still the
    /// newest and still this file. `Ok(None)`: still held; `Ok(Some(why))`:
    /// lost.
    pub(super) fn beat(&self, claim: &Claim, record: &Record) -> DirResult<Option<String>> {
        let path = self.entry(&claim_name(claim.generation));
        let mut f = &claim.file;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&record.to_bytes()))
            .and_then(|()| sys::fsync(f))
            .map_err(io_at(&path))?;
        self.check(claim)
    }

    /// Whether the claim still stands: `Some(why)` if not.
    pub(super) fn check(&self, claim: &Claim) -> DirResult<Option<String>> {
        let path = self.entry(&claim_name(claim.generation));
        if !sys::is_at(claim.id, &path).map_err(io_at(&path))? {
            return Ok(Some(format!(
                "the claim file {} was removed or replaced while held",
                path.display()
            )));
        }
        if let Some(next) = claim.generation.checked_add(1) {
            let after = self.entry(&claim_name(next));
            if sys::path_id(&after).map_err(io_at(&after))?.is_some() {
                return Ok(Some(format!(
                    "another contender made the next claim ({}): this holder had stopped \
                     renewing for longer than the TTL",
                    after.display()
                )));
            }
        }
        Ok(None)
    }

    /// Marks claim `record.generation` free: a new record, written whole,
    /// renamed over the claim (only its holder ever writes it).
    pub(super) fn release(&self, record: &Record, serial: u64) -> DirResult<()> {
        let target = self.entry(&claim_name(record.generation));
        let tmp = self.entry(&format!(".tmp-{}-{serial}", record.holder_id));
        let file = sys::create_new(&tmp, 0o644).map_err(io_at(&tmp))?;
        let done = (&file)
            .write_all(&record.to_bytes())
            .and_then(|()| sys::fsync(&file))
            .and_then(|()| {
                drop(file);
                rename_over(&tmp, &target)
            });
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done.map_err(io_at(&target))
    }

    /// Removes claims below `newest` whose last write is older than
    /// [`KEEP`] by the filesystem's own clock (the modification time of a
    /// file touched now), and leftover temporary files as old. Errors are
    /// ignored: tidying is best effort.
    pub(super) fn tidy(&self, newest: u64, holder_id: &str) {
        let Ok(claims) = self.claims() else { return };
        if claims.len() <= TIDY_OVER {
            return;
        }
        let Some(now) = self.fs_now(holder_id) else {
            return;
        };
        let old = |path: &Path| {
            std::fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > KEEP)
        };
        // Oldest first, stopping at the first that stays, so a removed
        // claim never has an older one left behind it.
        for g in claims.into_iter().filter(|&g| g < newest) {
            let p = self.entry(&claim_name(g));
            if !old(&p) {
                break;
            }
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => break,
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") || name.starts_with(".probe-") {
                    let p = e.path();
                    if old(&p) {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
    }

    /// The filesystem's clock: the modification time it gives a file
    /// written now.
    fn fs_now(&self, holder_id: &str) -> Option<SystemTime> {
        let p = self.entry(&format!(".probe-{holder_id}"));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .ok()?;
        let t = (&f)
            .write_all(b"now\n")
            .and_then(|()| sys::fsync(&f))
            .and_then(|()| f.metadata())
            .and_then(|m| m.modified())
            .ok();
        let _ = std::fs::remove_file(&p);
        t
    }
}

/// `rename(from, to)`, replacing `to`. Windows refuses to replace a file
/// that is open (a contender reading the claim, a heartbeat finishing):
/// those handles are short-lived, so it is tried again for up to 1 s.
fn rename_over(from: &Path, to: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::rename(from, to) {
            Err(e)
                if cfg!(windows) && e.kind() == io::ErrorKind::PermissionDenied && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease_lock::record::State;

    fn record(generation: u64) -> Record {
        Record {
            generation,
            state: State::Held,
            beat: 0,
            ttl: Duration::from_secs(10),
            holder_id: format!("{generation:032x}"),
            host: "h".into(),
            pid: 1,
            started: 0,
        }
    }

    #[test]
    fn the_newest_is_found_past_the_one_known_and_a_removed_one_is_vanished() {
        let d = tempfile::tempdir().unwrap();
        let dir = LeaseDir::new(d.path().join("l"));
        dir.ensure().unwrap();
        assert!(matches!(dir.newest(0).unwrap(), Newest::None));
        for g in 1..=3 {
            let claim = dir.create(&record(g), g).unwrap().expect("made");
            assert_eq!(claim.generation, g);
        }
        // A second claim of a taken generation is refused.
        assert!(dir.create(&record(3), 9).unwrap().is_none());
        assert!(matches!(
            dir.newest(0).unwrap(),
            Newest::Claim { generation: 3, .. }
        ));
        assert!(matches!(
            dir.newest(1).unwrap(),
            Newest::Claim { generation: 3, .. }
        ));
        // Only temporary names were left behind? None at all.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        std::fs::remove_file(dir.path().join(claim_name(3))).unwrap();
        // The one this contender knew is gone: vanished, not an older one.
        assert!(matches!(
            dir.newest(3).unwrap(),
            Newest::Vanished { generation: 3 }
        ));
    }
}
