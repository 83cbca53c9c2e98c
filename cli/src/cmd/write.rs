//! `portalocker write`: an atomic file write.

use portalocker::{AtomicOptions, Durability};

use crate::args::{DurabilityArg, WriteArgs};
use crate::exit::{say, Outcome, EXIT_BUSY, EXIT_FAILED};

pub(crate) async fn write(a: WriteArgs) -> Outcome {
    use tokio::io::AsyncWriteExt;
    let durability = match a.durability {
        DurabilityArg::Full => Durability::Full,
        DurabilityArg::File => Durability::File,
        DurabilityArg::None => Durability::None,
    };
    let opts = AtomicOptions::new()
        .replace(a.replace)
        .durability(durability);
    let what = a.path.display();
    let mut file = match opts.open(&a.path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            say(format!("{what} exists; pass --replace to replace it"));
            return Outcome { code: EXIT_BUSY };
        }
        Err(e) => {
            say(format!("cannot write {what}: {e}"));
            return Outcome { code: EXIT_FAILED };
        }
    };
    let copied = tokio::io::copy(&mut tokio::io::stdin(), &mut file).await;
    let r = match copied {
        Ok(_) => match file.flush().await {
            Ok(()) => file.commit().await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Outcome { code: 0 },
        Err(e) => {
            say(format!("{what} was not written (nothing changed): {e}"));
            Outcome { code: EXIT_FAILED }
        }
    }
}
