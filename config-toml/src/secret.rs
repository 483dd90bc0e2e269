//! Secret files named in a configuration (a SASL or MQTT password, a private key, the ops bearer
//! token): no other user of the machine may read them.
//!
//! # Invariants
//!
//! - A file whose mode lets every user read it (`o+r`, `0o004`) is refused, whatever its owner
//!   and group bits say: group-readable (`0640`, owner root, group of the service) is the
//!   packaged layout, `0600` owned by the service user the other.
//! - One check and one wording for every secret file of both services: the error names the
//!   configuration key, the path, the mode and the fix, so an operator reads the same sentence
//!   from `check-config`, from a refused start and from either service.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a secret file is refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Its metadata cannot be read (missing, a directory on the path not searchable).
    #[error("cannot read {key} `{}`: {error}", path.display())]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// Every user of the machine may read it.
    #[error(
        "{key} `{}` is readable by every user (mode {mode:o}): `chmod o-r` it (0600, or 0640 \
         with the service's group)",
        path.display()
    )]
    ReadableByOthers {
        key: &'static str,
        path: PathBuf,
        /// The permission bits (`mode & 0o777`).
        mode: u32,
    },
}

/// Refuses the secret file at `path`, named by the configuration key `key` (`password_file`,
/// `key_file`, `token_file`), if any user of the machine may read it. Reads only its metadata.
pub fn check_private(path: &Path, key: &'static str) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|error| SecretFileError::Unreadable {
        key,
        path: path.to_owned(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(SecretFileError::ReadableByOthers {
            key,
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_mode(dir: &Path, mode: u32) -> PathBuf {
        let path = dir.join(format!("secret-{mode:o}"));
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn owner_and_group_only_files_pass_and_every_other_readable_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o600, 0o640, 0o660, 0o400] {
            let path = file_with_mode(dir.path(), mode);
            assert!(check_private(&path, "password_file").is_ok(), "{mode:o}");
        }
        for mode in [0o644, 0o604, 0o444, 0o777] {
            let path = file_with_mode(dir.path(), mode);
            let e = check_private(&path, "password_file").expect_err("o+r");
            assert!(matches!(e, SecretFileError::ReadableByOthers { mode: m, .. } if m == mode));
            assert_eq!(
                e.to_string(),
                format!(
                    "password_file `{}` is readable by every user (mode {mode:o}): `chmod o-r` \
                     it (0600, or 0640 with the service's group)",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn a_missing_file_is_named_as_unreadable() {
        let e = check_private(Path::new("/nonexistent/token"), "token_file").expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot read token_file `/nonexistent/token`: "),
            "{e}"
        );
    }
}
