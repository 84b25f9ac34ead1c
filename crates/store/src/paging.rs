//! Opaque page tokens for keyset paging.
//!
//! A token carries the sort key of the last item returned; it is base64 of a
//! small JSON object, so a client cannot rely on its shape.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The server default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;

/// Where the previous page stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort time of the last item, in Unix microseconds.
    pub at: i64,
    /// The id of the last item, to break ties.
    pub id: String,
}

/// A page token could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "page_token is not one this server issued; pass the next_page_token of the previous response, or empty for the first page"
)]
pub struct BadPageToken;

impl Cursor {
    /// The opaque token for this cursor.
    pub fn encode(&self) -> String {
        // Serializing a struct of an i64 and a String cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a token; an empty token means the first page.
    pub fn decode(token: &str) -> Result<Option<Self>, BadPageToken> {
        if token.is_empty() {
            return Ok(None);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| BadPageToken)?;
        serde_json::from_slice(&bytes).map(Some).map_err(|_| BadPageToken)
    }
}

/// The page size to use for a requested size (0 means the default).
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let cursor = Cursor { at: 1_700_000_000_000_000, id: "abc".into() };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), Some(cursor));
        assert_eq!(Cursor::decode("").unwrap(), None);
    }

    #[test]
    fn garbage_tokens_are_rejected() {
        assert!(Cursor::decode("not a token!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{}")).is_err());
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(100_000), MAX_PAGE_SIZE);
    }
}
