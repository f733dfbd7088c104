//! Bootstrap tokens: `switchyard token create` makes one for a cluster; its
//! agent trades it, once, for a certificate. The hub stores only the
//! token's ID and the SHA-256 of its secret.
//!
//! Format: `sytoken.<id>.<secret>`, the ID 12 and the secret 32 lowercase
//! hex digits (128 random bits).

use super::{hex, sha256_hex};
use std::fmt;

const PREFIX: &str = "sytoken";

/// A bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Public: names the token in the hub's state and in logs.
    pub id: String,
    secret: String,
}

/// Why a string is not a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a bootstrap token: {0} (expected sytoken.<12 hex>.<32 hex>, as `switchyard token create` prints)")]
pub struct TokenError(&'static str);

impl Token {
    /// A new random token.
    pub fn generate() -> Self {
        Self {
            id: hex(&rand::random::<[u8; 6]>()),
            secret: hex(&rand::random::<[u8; 16]>()),
        }
    }

    /// Parses a token as printed.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError("wrong prefix"));
        }
        let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError("wrong number of parts"));
        };
        let is_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !is_hex(id, 12) || !is_hex(secret, 32) {
            return Err(TokenError(
                "the ID or secret is not lowercase hex of the right length",
            ));
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// What the hub stores and compares: SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}", self.id, self.secret)
    }
}

/// Never prints the secret.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = Token::generate();
        let parsed = Token::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert_eq!(parsed.secret_hash(), t.secret_hash());
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "sytoken.abc",
            "other.0123456789ab.0123456789abcdef0123456789abcdef",
            "sytoken.0123456789AB.0123456789abcdef0123456789abcdef",
            "sytoken.0123456789ab.0123.x",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }
}
