//! Linux: which filesystem a path is on (`statfs` magic numbers and
//! `/proc/self/mountinfo`). Compiled on Linux whatever the build's cfg.

use std::io;
use std::path::{Path, PathBuf};

use super::Mount;

/// Local filesystems whose `flock` locks the kernel keeps (and keeps
/// apart from byte-range locks).
pub(crate) fn local_flock_magic(magic: u64) -> bool {
    const LOCAL: [u64; 15] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58F6, // ramfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0x794C_7630, // overlayfs
        0xCA45_1A4E, // bcachefs
        0x5265_4973, // reiserfs
        0x3153_464A, // jfs
        0x3434,      // nilfs2
        0x4D44,      // vfat
        0x2011_BAB0, // exfat
        0x7366_746E, // ntfs3
    ];
    LOCAL.contains(&(magic & 0xFFFF_FFFF))
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`
/// field 22): with the pid, it names one process; `None` if there is no
/// such process.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    rest.split(' ').nth(19)?.parse().ok()
}

pub(crate) fn mount(path: &Path) -> io::Result<Mount> {
    let st = rustix::fs::statfs(path)?;
    let dev = rustix::fs::stat(path)?.st_dev;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let entry = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| {
            mount_of(
                &text,
                rustix::fs::major(dev),
                rustix::fs::minor(dev),
                &canonical,
            )
        });
    let (name, mount_point, options) = match entry {
        Some(e) => (e.fstype, Some(e.mount_point), e.options),
        None => ("unknown".to_string(), None, Vec::new()),
    };
    Ok(Mount {
        #[allow(clippy::unnecessary_cast)] // the field's type differs by arch
        magic: Some(st.f_type as u64),
        name,
        local: None,
        mount_point,
        options,
    })
}

struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

/// The `mountinfo` entry of device `major:minor` whose mount point is the
/// longest prefix of `path` (bind mounts share a device).
fn mount_of(text: &str, major: u32, minor: u32, path: &Path) -> Option<MountEntry> {
    let dev = format!("{major}:{minor}");
    let mut best: Option<MountEntry> = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.is_empty() || l[2] != dev {
            continue;
        }
        let mount_point = PathBuf::from(unescape(l[4]));
        if !path.starts_with(&mount_point) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|b| b.mount_point.as_os_str().len() > mount_point.as_os_str().len())
        {
            continue;
        }
        let mut options: Vec<String> = l[5].split(',').map(str::to_string).collect();
        if let Some(sup) = r.get(2) {
            for o in sup.split(',') {
                if !options.iter().any(|x| x == o) {
                    options.push(o.to_string());
                }
            }
        }
        best = Some(MountEntry {
            mount_point,
            fstype: r[0].to_string(),
            options,
        });
    }
    best
}

/// `mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_of_the_device_wins_and_options_merge() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
40 22 0:50 / /mnt/nfs rw,relatime shared:2 - nfs4 srv:/export rw,vers=4.2,local_lock=none
41 22 0:51 / /mnt/my\\040share rw - cifs //srv/share rw,nobrl
";
        let e = mount_of(text, 0, 50, Path::new("/mnt/nfs/jobs/x.lock")).unwrap();
        assert_eq!(e.fstype, "nfs4");
        assert_eq!(e.mount_point, PathBuf::from("/mnt/nfs"));
        assert!(e.options.iter().any(|o| o == "local_lock=none"));
        assert!(e.options.iter().any(|o| o == "relatime"));
        let e = mount_of(text, 0, 51, Path::new("/mnt/my share/a")).unwrap();
        assert_eq!(e.mount_point, PathBuf::from("/mnt/my share"));
        assert!(e.options.iter().any(|o| o == "nobrl"));
        assert!(mount_of(text, 9, 9, Path::new("/")).is_none());
    }

    #[test]
    fn this_process_has_a_start_and_a_dead_pid_has_none() {
        let me = process_start(std::process::id()).unwrap();
        assert_eq!(process_start(std::process::id()), Some(me));
        assert_eq!(process_start(u32::MAX), None);
    }

    #[test]
    fn this_machines_temp_dir_is_examined() {
        let m = mount(&std::env::temp_dir()).unwrap();
        assert_ne!(m.name, "");
        assert!(m.magic.is_some(), "{m:?}");
        assert!(m.mount_point.is_some(), "{m:?}");
    }
}
