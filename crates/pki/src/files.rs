//! Writing key and certificate files with the right modes.

use std::path::Path;

use crate::PkiError;

/// Writes a secret (private key) readable by its owner only (0600). The file is created with
/// that mode, never widened afterwards, and replaced atomically through a temporary file.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_file(path, contents, 0o600)
}

/// Writes a public file (certificate), mode 0644.
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_file(path, contents, 0o644)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    fsutil::write_atomic(path, contents, mode).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a directory (and parents) that only its owner may enter (0700).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })
}
