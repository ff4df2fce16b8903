//! Replacing a file so that a reader (or a power cut) never sees a half-written one.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// How many temporary names [`write_atomic_with`] tries before giving up. Each taken name is
/// either a concurrent writer in this process or a leftover (or planted) file: skipping it is
/// always safe, and 64 of them means something is wrong with the directory.
const TEMP_NAME_ATTEMPTS: u32 = 64;

/// Whether a replacement must be on disk when the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename and the directory after it: the new content survives
    /// a power cut once the call returns. For secrets, configuration and state that matters.
    Synced,
    /// No fsync: for files rewritten often and worthless after a reboot (status, simulation
    /// mirrors), to spare SD cards. Readers still never see a partial file.
    Unsynced,
}

/// Replaces `path` with `contents`, durably, with exactly `mode` (e.g. 0o600 for secrets).
///
/// The content goes to a new temporary file in the same directory, created with O_EXCL and
/// O_NOFOLLOW (a file or symlink already there is never opened, let alone followed) and given
/// its mode before a byte is written; the file is fsynced, renamed over `path`, and the
/// directory fsynced so that the rename itself is durable.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let key = dir.path().join("device.key");
/// fsutil::write_atomic(&key, b"-----BEGIN PRIVATE KEY-----\n", 0o600)?;
/// # use std::os::unix::fs::PermissionsExt;
/// assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, contents, mode, Durability::Synced)
}

/// [`write_atomic`] with a choice of [`Durability`].
pub fn write_atomic_with(
    path: &Path,
    contents: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let (tmp, mut file) = create_temp(path, dir, mode)?;
    let result = (|| {
        // The mode given at open is narrowed by the umask; set it exactly, still before any
        // content is in the file.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&tmp, path)?;
        if durability == Durability::Synced {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Only our own file: it was created by us with O_EXCL under this name.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The name of the `attempt`-th temporary file for `path`: hidden, next to it, per process.
fn temp_path(path: &Path, dir: &Path, attempt: u32) -> PathBuf {
    dir.join(format!(
        ".{}.tmp{}-{attempt}",
        file_name(path),
        std::process::id()
    ))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn create_temp(path: &Path, dir: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    for attempt in 0..TEMP_NAME_ATTEMPTS {
        let tmp = temp_path(path, dir, attempt);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "cannot create a temporary file next to {}: {TEMP_NAME_ATTEMPTS} names are taken; \
             remove the stale .{}.tmp* files in {}",
            path.display(),
            file_name(path),
            dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn content_survives_and_replaces_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first", 0o644).unwrap();
        write_atomic(&path, b"second", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        write_atomic_with(&path, b"third", 0o644, Durability::Unsynced).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "state.json")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn secrets_get_mode_0600_even_when_replacing_a_wider_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"secret", 0o600).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn mode_is_exact_whatever_the_umask_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write_atomic(&path, b"{}", 0o644).unwrap();
        assert_eq!(mode_of(&path), 0o644);
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let path = dir.path().join("passwd");
        let planted = temp_path(&path, dir.path(), 0);
        std::os::unix::fs::symlink(&victim, &planted).unwrap();

        write_atomic(&path, b"admin:hash\n", 0o600).unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&path).unwrap(), b"admin:hash\n");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_file(),
            "the target is a regular file, not the planted link"
        );
        assert!(
            std::fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the planted link was skipped, not reused"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/file");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn gives_up_with_a_clear_error_when_every_temporary_name_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for attempt in 0..TEMP_NAME_ATTEMPTS {
            std::fs::write(temp_path(&path, dir.path(), attempt), b"").unwrap();
        }
        let err = write_atomic(&path, b"x", 0o600).unwrap_err().to_string();
        assert!(err.contains("names are taken"), "{err}");
        assert!(!path.exists());
    }
}
