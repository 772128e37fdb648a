//! Comparing a presented secret with the expected one, for every endpoint that takes a token
//! (the webhook's, the Dify connector's key): in constant time, so the time an answer takes
//! tells nothing of how much of a guess was right.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Compares a token in constant time, lengths included: both sides go through HMAC under a
/// fixed key and the 32-byte tags are compared with `verify_slice` (constant time).
pub(crate) fn token_matches(expected: &[u8], candidate: &[u8]) -> bool {
    const KEY: &[u8] = b"plugsync webhook token comparison";
    let tag = |bytes: &[u8]| {
        Hmac::<Sha256>::new_from_slice(KEY).map(|mut mac| {
            mac.update(bytes);
            mac
        })
    };
    match (tag(expected), tag(candidate)) {
        (Ok(expected), Ok(candidate)) => candidate
            .verify_slice(&expected.finalize().into_bytes())
            .is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal_lengths_included() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"ab"));
        assert!(!token_matches(b"abc", b""));
    }
}
