//! One module per subcommand.

pub(crate) mod lock;
pub(crate) mod pidfile;
pub(crate) mod redis;
pub(crate) mod semaphore;
pub(crate) mod who;
pub(crate) mod write;
