//! A UTF-8 string stored in [`Bytes`]: decoded topics are slices of the received frame, and
//! cloning one for every subscriber of a fan-out is a reference-count increment.

use std::{borrow::Borrow, fmt, hash::Hash, ops::Deref, str::Utf8Error, sync::Arc};

use bytes::Bytes;

/// An immutable, cheaply clonable UTF-8 string backed by [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// An empty string (no allocation).
    pub const fn new() -> ByteStr {
        ByteStr(Bytes::new())
    }

    /// A string from a `&'static str` without copying.
    pub const fn from_static(s: &'static str) -> ByteStr {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` after checking that they are valid UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<ByteStr, Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(ByteStr(bytes))
    }

    pub fn as_str(&self) -> &str {
        // The only constructors check UTF-8 or start from a `str`, so this cannot fail; a
        // fallback keeps the type free of `unsafe` without a panic path.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes (zero-copy).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// `Hash` must agree with `Borrow<str>` so that maps keyed by `ByteStr` can be queried by `&str`.
impl Hash for ByteStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> ByteStr {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> ByteStr {
        ByteStr(Bytes::from(s.into_bytes()))
    }
}

impl From<&String> for ByteStr {
    fn from(s: &String) -> ByteStr {
        ByteStr::from(s.as_str())
    }
}

struct ArcStrOwner(Arc<str>);

impl AsRef<[u8]> for ArcStrOwner {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Zero-copy: the `Bytes` keeps the `Arc` alive.
impl From<Arc<str>> for ByteStr {
    fn from(s: Arc<str>) -> ByteStr {
        ByteStr(Bytes::from_owner(ArcStrOwner(s)))
    }
}

/// Copies once.
impl From<&ByteStr> for Arc<str> {
    fn from(s: &ByteStr) -> Arc<str> {
        Arc::from(s.as_str())
    }
}

impl From<ByteStr> for Arc<str> {
    fn from(s: ByteStr) -> Arc<str> {
        Arc::from(s.as_str())
    }
}

impl From<ByteStr> for String {
    fn from(s: ByteStr) -> String {
        s.as_str().to_owned()
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ByteStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}
