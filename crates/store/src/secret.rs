//! Generating, hashing and checking secrets. Shared by the CLI and the server so both agree.
//!
//! Passwords are chosen by people: they get argon2id, which is slow on purpose. Tokens,
//! enrollment codes and session ids are random (>= 60 bits, most 128 bits) and generated
//! here: for those a single SHA-256 is the right hash. Guessing one from its hash is as hard
//! as guessing the secret itself, and a fast hash keeps every MQTT CONNECT and API request
//! cheap.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Error;

/// Prefix of API tokens, so that secret scanners and people recognise them.
pub const API_TOKEN_PREFIX: &str = "dct_";

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A device token: 128 random bits, hex. The device's MQTT password.
pub fn generate_device_token() -> String {
    random_hex(16)
}

/// An API token for scripts: `dct_` + 128 random bits, hex.
pub fn generate_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_hex(16))
}

/// A session id or CSRF token: 256 random bits, hex.
pub fn generate_session_secret() -> String {
    random_hex(32)
}

/// The hash stored for a device token, an API token or a session id.
pub fn hash_token(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// Checks a presented token against a stored [`hash_token`] hash in constant time.
pub fn verify_token(token: &str, stored_hash: &str) -> bool {
    let presented = hash_token(token);
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"; // Crockford base32

/// A one-time enrollment code, `XXXX-XXXX-XXXX` (60 random bits, Crockford base32: no I, L,
/// O or U to misread). Short-lived and single-use, so 60 bits is plenty.
pub fn generate_enroll_code() -> String {
    let mut code = String::with_capacity(14);
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(CODE_ALPHABET[(b & 31) as usize] as char);
    }
    code
}

/// The hash stored for an enrollment code. Case, dashes and spaces do not matter, and the
/// letters people confuse with digits (O, I, L) are read as those digits.
pub fn hash_enroll_code(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    sha256_hex(normalized.as_bytes())
}

/// An argon2id hash (PHC string) of a password.
pub fn hash_password(password: &str) -> Result<String, Error> {
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| Error::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// A valid argon2id hash (default parameters) of a random password nobody knows. Checking a
/// password for an unknown user name against it costs what a real check costs, so timing does
/// not reveal which user names exist.
pub const DUMMY_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0mB5MPbd0Qm+bF6vGyoRQQaWNq2G2u6s5M4v5k8Wk0g";

/// Checks a password against a stored argon2 hash. A malformed hash never matches.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    match PasswordHash::new(stored_hash) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Refuses passwords that are too weak to protect a device cloud on the internet.
pub fn check_password_strength(password: &str) -> Result<(), Error> {
    if password.chars().count() < 8 {
        return Err(Error::Invalid {
            field: "password",
            message: "use at least 8 characters".into(),
        });
    }
    Ok(())
}

/// A random password for the first admin: 16 characters from an unambiguous alphabet (~90 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hash_and_verify() {
        let t = generate_device_token();
        assert_eq!(t.len(), 32);
        assert!(verify_token(&t, &hash_token(&t)));
        assert!(!verify_token("x", &hash_token(&t)));
        assert_ne!(generate_device_token(), t);
        assert!(generate_api_token().starts_with("dct_"));
    }

    #[test]
    fn enroll_codes_normalise() {
        let code = generate_enroll_code();
        assert_eq!(code.len(), 14);
        assert_eq!(code.matches('-').count(), 2);
        assert_eq!(
            hash_enroll_code(&code),
            hash_enroll_code(&code.to_lowercase().replace('-', " "))
        );
        assert_eq!(
            hash_enroll_code("O1L0-aaaa-bbbb"),
            hash_enroll_code("0110AAAABBBB")
        );
        assert_ne!(hash_enroll_code("AAAA"), hash_enroll_code("AAAB"));
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(check_password_strength("short").is_err());
        assert!(check_password_strength("long enough").is_ok());
        assert_eq!(generate_password().len(), 16);
        assert!(PasswordHash::new(DUMMY_PASSWORD_HASH).is_ok());
        assert!(!verify_password("anything", DUMMY_PASSWORD_HASH));
    }
}
