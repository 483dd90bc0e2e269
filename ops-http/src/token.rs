//! An optional bearer token for the ops endpoints that show data (`/metrics`, `/inspect`): with
//! `[ops] token_file`, a request for any path but the health probes ([`OPEN_PATHS`]) must carry
//! `Authorization: Bearer <token>`, else it is answered 401 with `WWW-Authenticate: Bearer`.
//!
//! # Invariants
//!
//! - The token is the file's contents less surrounding whitespace, read once at start; an
//!   empty file, or one every user may read (`o+r`), is refused.
//! - Comparison takes the same time wherever the first differing byte is.
//! - `/healthz` and `/readyz` stay open: systemd, load balancers and Kubernetes probe them
//!   without credentials, and they show no data (reasons only).

use std::fmt;
use std::path::Path;

/// Paths answered without the token.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The token (never printed by `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// Reads the token from `path` (`[ops] token_file`).
    pub fn read(path: &Path) -> Result<Token, String> {
        let shown = path.display();
        edge_config_toml::secret::check_private(path, "token_file").map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token_file `{shown}`: {e}"))?;
        match text.trim() {
            "" => Err(format!("token_file `{shown}` is empty")),
            token => Ok(Token(token.to_owned())),
        }
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let ours = self.0.as_bytes();
        let differs = given.len() ^ ours.len()
            | given
                .iter()
                .zip(ours.iter().cycle())
                .fold(0usize, |acc, (a, b)| acc | usize::from(a ^ b));
        differs == 0
    }

    /// The `Authorization` header value that carries it (for a client of the endpoints).
    pub fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether a request for `path` needs the token.
    pub fn guards(path: &str) -> bool {
        !OPEN_PATHS.contains(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_file(text: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn only_the_exact_token_after_bearer_is_admitted() {
        let (_dir, path) = token_file("s3cret-token\n", 0o640);
        let token = Token::read(&path).expect("read");
        assert!(token.admits(Some(b"Bearer s3cret-token")));
        assert!(token.admits(Some(token.header().as_bytes())));
        for wrong in [
            &b"Bearer s3cret-toke"[..],
            b"Bearer s3cret-token2",
            b"Bearer S3cret-token",
            b"bearer s3cret-token",
            b"s3cret-token",
            b"Bearer ",
        ] {
            assert!(
                !token.admits(Some(wrong)),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!token.admits(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn an_empty_or_world_readable_or_missing_file_is_refused() {
        let (_d, empty) = token_file(" \n", 0o600);
        assert!(Token::read(&empty).unwrap_err().contains("is empty"));
        let (_d, open) = token_file("t", 0o644);
        assert!(Token::read(&open)
            .unwrap_err()
            .contains("readable by every user"));
        let e = Token::read(Path::new("/nonexistent/token")).unwrap_err();
        assert!(
            e.contains("cannot read token_file `/nonexistent/token`"),
            "{e}"
        );
    }

    #[test]
    fn only_the_health_probes_are_open() {
        assert!(!Token::guards("/healthz"));
        assert!(!Token::guards("/readyz"));
        assert!(Token::guards("/metrics"));
        assert!(Token::guards("/inspect"));
        assert!(Token::guards("/anything"));
    }
}
