//! macOS and the BSDs: which filesystem a path is on (`statfs`'s type
//! name, mount point and `MNT_LOCAL`).

use std::io;
use std::path::{Path, PathBuf};

use super::Mount;

/// Whether `flock` is kept by this host's kernel on the filesystem with
/// this Linux magic number: a Linux notion, never true here.
#[allow(dead_code)]
pub(crate) fn local_flock_magic(_magic: u64) -> bool {
    false
}

fn c_text(chars: &[libc::c_char]) -> String {
    #[allow(clippy::cast_sign_loss)] // c_char is i8 here: bytes
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// When process `pid` started: not known here.
#[allow(dead_code)]
pub(crate) fn process_start(_pid: u32) -> Option<u64> {
    None
}

pub(crate) fn mount(path: &Path) -> io::Result<Mount> {
    let st = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // u32 on macOS, u64 on FreeBSD
    let local = (st.f_flags as u64) & (libc::MNT_LOCAL as u64) != 0;
    Ok(Mount {
        magic: None,
        name: c_text(&st.f_fstypename),
        local: Some(local),
        mount_point: Some(PathBuf::from(c_text(&st.f_mntonname))),
        options: Vec::new(),
    })
}
