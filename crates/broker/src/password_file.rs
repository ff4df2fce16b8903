//! A mosquitto_passwd-like password file for the standalone broker: one `user:hash` line
//! per user, the hash in argon2id PHC format (`$argon2id$v=19$...`). Blank lines and lines
//! starting with `#` are ignored.
//!
//! Users in the file get every permission, like mosquitto without an `acl_file`.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, RwLock},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use tokio::sync::Semaphore;

use crate::auth::{AuthError, AuthFuture, Authenticator, ConnectRequest, Identity};

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {what}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("cannot write password file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "invalid user name {0:?}: use 1 to 256 characters without ':', spaces or control characters"
    )]
    InvalidUser(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The parsed file: user name → argon2 PHC hash.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: BTreeMap<String, String>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let syntax = |what: String| PasswordFileError::Syntax {
                path: path.to_owned(),
                line: index + 1,
                what,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| syntax("expected user:hash (create entries with `devicecloud broker passwd FILE USER`)".into()))?;
            validate_user(user).map_err(|err| syntax(err.to_string()))?;
            PasswordHash::new(hash).map_err(|err| {
                syntax(format!(
                    "the hash of user {user:?} is not a PHC string like $argon2id$v=19$... ({err}); \
                     mosquitto's own $6$/$7$ hashes are not supported, re-create the user with `devicecloud broker passwd`"
                ))
            })?;
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(syntax(format!("user {user:?} appears twice")));
            }
        }
        Ok(PasswordFile { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks a password. CPU-heavy (argon2): call from a blocking context. Unknown users cost
    /// as much as known ones, so timing does not tell which user names exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let hash = self
            .users
            .get(user)
            .map(String::as_str)
            .unwrap_or_else(|| dummy_hash());
        let ok = PasswordHash::new(hash)
            .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok());
        ok && self.users.contains_key(user)
    }

    /// Adds `user` or replaces its password, keeping every other line (comments included)
    /// as it was. The file is replaced atomically and created with mode 0600.
    pub fn set_user(path: &Path, user: &str, password: &str) -> Result<(), PasswordFileError> {
        validate_user(user)?;
        let hash = hash_password(password)?;
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => {
                Self::parse(path, &text)?;
                text
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(PasswordFileError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut out = String::with_capacity(existing.len() + 128);
        let mut replaced = false;
        for line in existing.lines() {
            if line.trim().split_once(':').is_some_and(|(u, _)| u == user)
                && !line.trim().starts_with('#')
            {
                out.push_str(&format!("{user}:{hash}\n"));
                replaced = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !replaced {
            out.push_str(&format!("{user}:{hash}\n"));
        }
        fsutil::write_atomic(path, out.as_bytes(), 0o600).map_err(|source| {
            PasswordFileError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordFileError> {
    if password.is_empty() {
        return Err(PasswordFileError::EmptyPassword);
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|err| PasswordFileError::Hash(err.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| PasswordFileError::Hash(err.to_string()))
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password("not a real password, only here to spend time").unwrap_or_default()
    })
}

fn validate_user(user: &str) -> Result<(), PasswordFileError> {
    let ok = !user.is_empty()
        && user.chars().count() <= 256
        && !user
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(PasswordFileError::InvalidUser(user.to_owned()))
    }
}

/// The standalone broker's authenticator: users from a [`PasswordFile`], optionally
/// anonymous clients, optionally clients identified by a verified TLS client certificate.
pub struct PasswordFileAuth {
    path: Option<PathBuf>,
    file: RwLock<Arc<PasswordFile>>,
    allow_anonymous: bool,
    accept_client_certs: bool,
    /// argon2 costs ~20 MB and tens of milliseconds per check; bounding concurrent checks
    /// keeps a flood of CONNECTs from exhausting memory or the blocking pool.
    verifications: Semaphore,
}

impl PasswordFileAuth {
    /// Users from the file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFileAuth, PasswordFileError> {
        let file = PasswordFile::load(path)?;
        let mut auth = Self::new(file);
        auth.path = Some(path.to_owned());
        Ok(auth)
    }

    pub fn new(file: PasswordFile) -> PasswordFileAuth {
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        PasswordFileAuth {
            path: None,
            file: RwLock::new(Arc::new(file)),
            allow_anonymous: false,
            accept_client_certs: false,
            verifications: Semaphore::new(parallel),
        }
    }

    /// Also let clients in that send no user name.
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// Clients that presented a certificate the listener verified are let in as
    /// `cert:{common name}` without a password.
    pub fn accept_client_certs(mut self, accept: bool) -> Self {
        self.accept_client_certs = accept;
        self
    }

    /// Reads the file again (on SIGHUP). On error the previous users stay in effect.
    pub fn reload(&self) -> Result<usize, PasswordFileError> {
        let Some(path) = &self.path else {
            return Ok(self.current().len());
        };
        let file = PasswordFile::load(path)?;
        let users = file.len();
        *self.file.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(file);
        Ok(users)
    }

    fn current(&self) -> Arc<PasswordFile> {
        self.file.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Authenticator for PasswordFileAuth {
    fn authenticate<'a>(&'a self, request: ConnectRequest<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            if self.accept_client_certs
                && let Some(cert) = request.client_cert
            {
                let name = cert
                    .common_name
                    .clone()
                    .unwrap_or_else(|| cert.fingerprint_sha256.clone());
                return Ok(Identity::superuser(format!("cert:{name}")));
            }
            let Some(user) = request.username else {
                return if self.allow_anonymous {
                    Ok(Identity::superuser("anonymous"))
                } else {
                    Err(AuthError::NotAuthorized(
                        "a user name and password are required".into(),
                    ))
                };
            };
            let password = request.password.unwrap_or_default().to_vec();
            let file = self.current();
            let user = user.to_owned();
            let _permit = self
                .verifications
                .acquire()
                .await
                .map_err(|_| AuthError::Unavailable("shutting down".into()))?;
            let checked = {
                let user = user.clone();
                tokio::task::spawn_blocking(move || file.verify(&user, &password)).await
            };
            match checked {
                Ok(true) => Ok(Identity::superuser(format!("user:{user}"))),
                Ok(false) => Err(AuthError::BadCredentials),
                Err(err) => Err(AuthError::Unavailable(format!(
                    "password check failed: {err}"
                ))),
            }
        })
    }
}

/// Lets everyone in with every permission. Only ever configured explicitly
/// (`--allow-anonymous`, or the loopback-only default of `devicecloud broker`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnonymousAuth;

impl Authenticator for AnonymousAuth {
    fn authenticate<'a>(&'a self, request: ConnectRequest<'a>) -> AuthFuture<'a> {
        let principal = match request.username {
            Some(user) => format!("anonymous:{user}"),
            None => "anonymous".to_owned(),
        };
        Box::pin(async move { Ok(Identity::superuser(principal)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ClientCert, Transport};

    fn request<'a>(
        user: Option<&'a str>,
        password: Option<&'a [u8]>,
        cert: Option<&'a ClientCert>,
    ) -> ConnectRequest<'a> {
        ConnectRequest {
            client_id: "c1",
            username: user,
            password,
            peer: "127.0.0.1:5000".parse().unwrap(),
            transport: Transport::Tcp,
            client_cert: cert,
        }
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let path = Path::new("/etc/pw");
        let err = PasswordFile::parse(path, "# users\n\nalice\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/pw:3: expected user:hash"), "{err}");
        let err = PasswordFile::parse(path, "bob:$6$abc$def\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/pw:1:") && err.contains("not supported"),
            "{err}"
        );
        let hash = hash_password("x").unwrap();
        let err = PasswordFile::parse(path, &format!("a:{hash}\na:{hash}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:") && err.contains("twice"), "{err}");
        assert!(matches!(
            hash_password(""),
            Err(PasswordFileError::EmptyPassword)
        ));
    }

    #[test]
    fn set_user_adds_replaces_and_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        PasswordFile::set_user(&path, "alice", "one").unwrap();
        std::fs::write(
            &path,
            format!("# keep me\n{}", std::fs::read_to_string(&path).unwrap()),
        )
        .unwrap();
        PasswordFile::set_user(&path, "bob", "two").unwrap();
        PasswordFile::set_user(&path, "alice", "three").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# keep me\nalice:$argon2id$"), "{text}");
        assert_eq!(text.lines().count(), 3);
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", b"three"));
        assert!(!file.verify("alice", b"one"));
        assert!(file.verify("bob", b"two"));
        assert!(!file.verify("carol", b"two"));
        assert!(matches!(
            PasswordFile::set_user(&path, "a:b", "x"),
            Err(PasswordFileError::InvalidUser(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[tokio::test]
    async fn authenticator_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        PasswordFile::set_user(&path, "alice", "secret").unwrap();
        let auth = PasswordFileAuth::load(&path).unwrap();

        let id = auth
            .authenticate(request(Some("alice"), Some(b"secret"), None))
            .await
            .unwrap();
        assert_eq!(id.principal, "user:alice");
        assert!(matches!(
            auth.authenticate(request(Some("alice"), Some(b"wrong"), None))
                .await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            auth.authenticate(request(Some("nobody"), Some(b"secret"), None))
                .await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            auth.authenticate(request(None, None, None)).await,
            Err(AuthError::NotAuthorized(_))
        ));

        let cert = ClientCert {
            common_name: Some("kitchen".into()),
            fingerprint_sha256: "00".into(),
            serial_hex: "01".into(),
            not_after_unix: 0,
            der: Arc::new(Vec::new()),
        };
        assert!(
            auth.authenticate(request(None, None, Some(&cert)))
                .await
                .is_err(),
            "certs are not accepted unless enabled"
        );
        let auth = auth.allow_anonymous(true).accept_client_certs(true);
        assert_eq!(
            auth.authenticate(request(None, None, Some(&cert)))
                .await
                .unwrap()
                .principal,
            "cert:kitchen"
        );
        assert_eq!(
            auth.authenticate(request(None, None, None))
                .await
                .unwrap()
                .principal,
            "anonymous"
        );

        // Reload picks up new users; a broken file keeps the old ones.
        PasswordFile::set_user(&path, "bob", "pw").unwrap();
        assert_eq!(auth.reload().unwrap(), 2);
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(auth.reload().is_err());
        assert_eq!(
            auth.authenticate(request(Some("bob"), Some(b"pw"), None))
                .await
                .unwrap()
                .principal,
            "user:bob"
        );
    }
}
