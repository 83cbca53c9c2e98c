//! Platforms where this crate cannot tell filesystems apart (Windows:
//! only UNC paths, which are network shares; other Unix systems).

use std::io;
use std::path::Path;

use super::Mount;

#[allow(dead_code)]
pub(crate) fn local_flock_magic(_magic: u64) -> bool {
    false
}

/// When process `pid` started: not known here.
#[allow(dead_code)]
pub(crate) fn process_start(_pid: u32) -> Option<u64> {
    None
}

pub(crate) fn mount(path: &Path) -> io::Result<Mount> {
    // The path must exist (or the caller looks at its parent).
    std::fs::symlink_metadata(path)?;
    let text = path.to_string_lossy();
    let unc =
        text.starts_with(r"\\") && !text.starts_with(r"\\?\") || text.starts_with(r"\\?\UNC\");
    Ok(Mount {
        magic: None,
        name: if unc { "smb".into() } else { "unknown".into() },
        local: unc.then_some(false),
        mount_point: None,
        options: Vec::new(),
    })
}
