//! What every long-running command (`server`, `up`, `broker`, `agent`) does around its work:
//! claim the data directory, raise the open-files limit, wait for a stop signal.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

use anyhow::Context;

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "lock";

/// File descriptors kept for everything that is not a client connection: the database pool,
/// the journal, listeners, certificate reloads, log and status files.
pub const FD_RESERVE: u64 = 256;

/// An exclusive claim on a data directory, held until dropped (or the process ends: the kernel
/// releases the `flock` with the last descriptor, so a kill -9 leaves no stale lock behind).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` (mode 0700) if needed and locks `dir/lock`, writing this process's pid
    /// into it. Must run before anything opens the journal or the database in `dir`: a second
    /// process is refused here, before it can touch the first one's files.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        // No truncation at open: until we hold the lock, the pid in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_owned(),
                    pid => pid.to_owned(),
                };
                anyhow::bail!(
                    "data directory {} is in use by another devicecloud process (pid {pid}); \
                     stop it first or use another --data",
                    dir.display()
                );
            }
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let write_pid = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_data()
        };
        write_pid(&mut file)
            .with_context(|| format!("cannot write the pid into {}", path.display()))?;
        Ok(DataDirLock { _file: file })
    }
}

/// The open-files limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

impl NofileLimit {
    /// How many client connections fit next to [`FD_RESERVE`].
    pub fn connection_budget(&self) -> usize {
        usize::try_from(self.soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX)
    }

    /// `configured` if set (with a warning when it cannot be served), else `default` capped
    /// to the budget: a default must never promise connections the process cannot open.
    pub fn max_connections(&self, configured: Option<usize>, default: usize) -> usize {
        let budget = self.connection_budget();
        match configured {
            Some(max) => {
                if max > budget {
                    tracing::warn!(
                        "max_connections is {max}, but the open-files limit ({}) leaves room for \
                         only {budget} connections; raise the hard limit (LimitNOFILE= in the \
                         systemd unit, or `ulimit -Hn`) or lower max_connections",
                        self.soft
                    );
                }
                max
            }
            None if default > budget => {
                tracing::info!(
                    "max_connections defaults to {budget}, not {default}: the open-files limit \
                     is {}; raise it (LimitNOFILE=) for more",
                    self.soft
                );
                budget
            }
            None => default,
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every client connection is a descriptor,
/// and the usual soft default (1024) would cap the broker far below what it can hold.
pub fn raise_nofile_limit() -> anyhow::Result<NofileLimit> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-files limit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).with_context(|| {
            format!("cannot raise the open-files limit from {soft} to its hard limit {hard}")
        })?;
    }
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-files limit")?;
    tracing::info!("open-files limit: {soft} (hard limit {hard})");
    Ok(NofileLimit { soft, hard })
}

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C), and logs which. Not an `async fn`: the
/// handlers are installed when this is called, not at the future's first poll, so a signal that
/// arrives while the caller is still starting up (after it printed that it listens) is caught
/// instead of killing the process with the default action. Must be called inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let name = match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            },
            (term, interrupt) => {
                // Never seen in practice: say so, and wait for whichever can be watched.
                tracing::warn!(
                    "cannot watch SIGTERM or SIGINT; stop the process with SIGKILL if it does not stop"
                );
                match (term, interrupt) {
                    (Ok(mut s), _) | (_, Ok(mut s)) => {
                        s.recv().await;
                    }
                    _ => std::future::pending::<()>().await,
                }
                "signal"
            }
        };
        tracing::info!("{name}: shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        let lock_file = data.join(LOCK_FILE);
        assert_eq!(
            std::fs::read_to_string(&lock_file).unwrap().trim(),
            std::process::id().to_string()
        );
        let err = DataDirLock::acquire(&data).unwrap_err().to_string();
        assert!(
            err.contains("is in use by another devicecloud process")
                && err.contains(&format!("(pid {})", std::process::id()))
                && err.contains("use another --data"),
            "{err}"
        );
        // The refused attempt left the holder's pid in place.
        assert_eq!(
            std::fs::read_to_string(&lock_file).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(first);
        DataDirLock::acquire(&data).expect("free again once the holder is gone");
    }

    #[test]
    fn the_data_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new");
        let _lock = DataDirLock::acquire(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn soft_nofile_limit_is_raised_to_the_hard_limit() {
        let limit = raise_nofile_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, hard), (limit.soft, limit.hard));
    }

    #[test]
    fn max_connections_default_fits_the_open_files_limit() {
        let small = NofileLimit {
            soft: 1024,
            hard: 1024,
        };
        assert_eq!(small.connection_budget(), 768);
        assert_eq!(small.max_connections(None, 10_000), 768);
        assert_eq!(small.max_connections(None, 100), 100);
        // An explicit setting is kept (with a warning): the operator may know better.
        assert_eq!(small.max_connections(Some(5_000), 10_000), 5_000);
        let tiny = NofileLimit { soft: 10, hard: 10 };
        assert_eq!(tiny.connection_budget(), 0);
    }
}
