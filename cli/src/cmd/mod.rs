//! One module per subcommand.

#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod lock;
pub(crate) mod pidfile;
pub(crate) mod redis;
pub(crate) mod semaphore;
pub(crate) mod who;
pub(crate) mod write;
