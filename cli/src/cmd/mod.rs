//! One module per subcommand.

pub(crate) mod doctor;
#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod held;
pub(crate) mod lease;
pub(crate) mod lock;
pub(crate) mod pidfile;
pub(crate) mod redis;
pub(crate) mod semaphore;
pub(crate) mod who;
pub(crate) mod write;
