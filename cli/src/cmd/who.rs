//! `portalocker who`: who holds a lock.

use portalocker::{Lock, RedisLock};

use crate::args::WhoArgs;
use crate::exit::{say, Outcome, EXIT_FAILED, EXIT_USAGE};
use std::path::PathBuf;

pub(crate) async fn who(a: WhoArgs) -> Outcome {
    #[cfg(feature = "etcd")]
    if let Some(endpoints) = &a.etcd {
        let name = a.target.to_string_lossy().into_owned();
        return super::etcd::who(endpoints, &name).await;
    }
    match a.redis {
        Some(url) => {
            let channel = a.target.to_string_lossy().into_owned();
            let lock = match RedisLock::from_url(channel.clone(), &url) {
                Ok(l) => l,
                Err(e) => {
                    say(e);
                    return Outcome { code: EXIT_USAGE };
                }
            };
            match lock.holders().await {
                Ok(list) if list.is_empty() => {
                    println!("nobody holds Redis lock {channel:?}");
                    Outcome { code: 1 }
                }
                Ok(list) => {
                    for h in list {
                        println!("{h}");
                    }
                    Outcome { code: 0 }
                }
                Err(e) => {
                    say(format!("cannot ask {url}: {e}"));
                    Outcome { code: EXIT_FAILED }
                }
            }
        }
        None => {
            let path = PathBuf::from(&a.target);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() && super::lease::is_lease_dir(&path) => {
                    return super::lease::who(&path).await;
                }
                Ok(m) if m.is_dir() => {
                    say(format!(
                        "{} is a directory, not a lock file: name the file that is locked",
                        path.display()
                    ));
                    return Outcome { code: EXIT_USAGE };
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("nobody holds {}: there is no such file", path.display());
                    return Outcome { code: 1 };
                }
                _ => {}
            }
            let holders = Lock::new(&path).holders().await;
            if holders.is_empty() {
                println!(
                    "nobody holds {} (as far as this system can tell)",
                    path.display()
                );
                return Outcome { code: 1 };
            }
            for h in holders {
                let mode = if h.is_shared() { "shared" } else { "exclusive" };
                match h.command() {
                    Some(cmd) => println!("{} {mode} {cmd}", h.pid()),
                    None => println!("{} {mode}", h.pid()),
                }
            }
            Outcome { code: 0 }
        }
    }
}
