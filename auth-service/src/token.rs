//! Token format: `<prefix><30 random base62 chars><6 base62 chars of CRC32>`.
//!
//! Like GitHub's tokens: a recognisable prefix (secret scanners can find leaked
//! tokens), 30 base62 characters from the OS CSPRNG (178 bits), and a CRC32 checksum
//! so a mistyped or garbage token is rejected without a database round trip. Only
//! the SHA-256 of the whole token is stored; a fast hash is right here because the
//! input has 178 bits of entropy (nothing to brute-force), unlike a password.
use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
/// Longest string we even look at; anything longer is rejected before any work.
pub const MAX_TOKEN_LEN: usize = 128;
/// How many characters after the prefix are kept for display (`pat_AbCd`).
const DISPLAY_CHARS: usize = 4;

/// A token prefix such as `pat_`: 1-16 lowercase ASCII letters or digits and a `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(prefix: &str) -> Result<Self> {
        let body = prefix.strip_suffix('_').unwrap_or("");
        let ok = !body.is_empty()
            && body.len() <= 16
            && body
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Prefix(prefix.to_string()))
        } else {
            Err(Error::Config(format!(
                "--token-prefix {prefix:?}: use 1-16 lowercase letters or digits followed by `_`, e.g. `pat_`"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix("pat_".into())
    }
}

/// A raw token. Its `Debug` and `Display` are redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct RawToken(String);

impl RawToken {
    /// The secret itself: for printing once at creation, and for clients.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawToken(<redacted>)")
    }
}

/// What the database stores about a token's secret: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDigest {
    /// SHA-256 of the whole token string.
    pub hash: [u8; 32],
    /// The prefix and the first few random characters, for `token list`.
    pub display_prefix: String,
}

fn checksum(prefix: &str, random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix.as_bytes());
    hasher.update(random);
    let mut n = u64::from(hasher.finalize());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Draws a new token from the OS CSPRNG.
pub fn generate(prefix: &Prefix) -> Result<RawToken> {
    let mut random = Vec::with_capacity(RANDOM_LEN);
    let mut buf = [0u8; 64];
    while random.len() < RANDOM_LEN {
        getrandom::fill(&mut buf).map_err(|e| Error::Internal(format!("OS random source: {e}")))?;
        // Rejection sampling: 248 = 4 * 62, so `b % 62` is uniform for b < 248.
        random.extend(
            buf.iter()
                .filter(|&&b| b < 248)
                .map(|&b| ALPHABET[usize::from(b % 62)])
                .take(RANDOM_LEN - random.len()),
        );
    }
    let sum = checksum(prefix.as_str(), &random);
    let mut s = String::with_capacity(prefix.as_str().len() + RANDOM_LEN + CHECKSUM_LEN);
    s.push_str(prefix.as_str());
    random.extend_from_slice(&sum);
    s.extend(random.iter().map(|&b| char::from(b)));
    Ok(RawToken(s))
}

fn malformed(why: &str) -> Error {
    Error::TokenMalformed(format!(
        "token is malformed ({why}); check that it was copied whole, or create a new one"
    ))
}

/// Checks the format and checksum of a presented token and returns what to look up.
/// No database work happens for a string that fails here.
pub fn parse(prefix: &Prefix, presented: &str) -> Result<TokenDigest> {
    if presented.is_empty() {
        return Err(Error::MissingCredentials("no token was given".into()));
    }
    if presented.len() > MAX_TOKEN_LEN {
        return Err(malformed("far too long"));
    }
    let Some(rest) = presented.strip_prefix(prefix.as_str()) else {
        return Err(malformed(&format!(
            "tokens start with `{}`",
            prefix.as_str()
        )));
    };
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(malformed("wrong length"));
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(malformed("unexpected characters"));
    }
    let (random, sum) = rest.as_bytes().split_at(RANDOM_LEN);
    if checksum(prefix.as_str(), random) != sum {
        return Err(malformed("checksum mismatch"));
    }
    Ok(digest(presented, prefix))
}

fn digest(token: &str, prefix: &Prefix) -> TokenDigest {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let shown = prefix.as_str().len() + DISPLAY_CHARS;
    TokenDigest {
        hash,
        display_prefix: token.get(..shown).unwrap_or(token).to_string(),
    }
}

/// The digest of a token this process just generated.
pub fn digest_of(token: &RawToken, prefix: &Prefix) -> TokenDigest {
    digest(token.expose(), prefix)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::error::Reason;

    fn reason(r: Result<TokenDigest>) -> Reason {
        r.unwrap_err().reason().unwrap()
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let p = Prefix::default();
        let a = generate(&p).unwrap();
        let b = generate(&p).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 4 + 36);
        assert!(a.expose().starts_with("pat_"));
        let d = parse(&p, a.expose()).unwrap();
        assert_eq!(d, digest_of(&a, &p));
        assert_eq!(d.display_prefix.len(), 8);
        assert_ne!(parse(&p, b.expose()).unwrap().hash, d.hash);
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let p = Prefix::default();
        let t = generate(&p).unwrap().expose().to_string();
        for i in 4..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(reason(parse(&p, &typo)), Reason::TokenMalformed, "{i}");
        }
    }

    #[test]
    fn garbage_is_malformed_and_empty_is_missing() {
        let p = Prefix::default();
        assert_eq!(reason(parse(&p, "")), Reason::MissingCredentials);
        let long = "pat_".to_string() + &"a".repeat(1 << 20);
        for bad in [
            "hello",
            "pat_",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            &long,
        ] {
            assert_eq!(reason(parse(&p, bad)), Reason::TokenMalformed, "{bad:.20}");
        }
        let sql = "pat_' OR 1=1; DROP TABLE tokens; --aaaa";
        assert_eq!(reason(parse(&p, sql)), Reason::TokenMalformed);
        let non_ascii = "pat_é".to_string() + &"a".repeat(34);
        assert_eq!(reason(parse(&p, &non_ascii)), Reason::TokenMalformed);
    }

    #[test]
    fn a_token_of_another_prefix_is_rejected() {
        let other = Prefix::new("svc_").unwrap();
        let t = generate(&other).unwrap();
        assert!(parse(&other, t.expose()).is_ok());
        assert_eq!(
            reason(parse(&Prefix::default(), t.expose())),
            Reason::TokenMalformed
        );
    }

    #[test]
    fn prefix_rules() {
        assert!(Prefix::new("pat_").is_ok());
        for bad in ["", "_", "pat", "PAT_", "p-t_", "abcdefghijklmnopq_"] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let t = generate(&Prefix::default()).unwrap();
        assert!(!format!("{t:?}").contains(t.expose()));
    }

    #[test]
    fn random_part_uses_the_whole_alphabet_evenly() {
        // 2000 tokens * 30 chars = 60000 draws, ~968 per symbol; a biased mapping
        // (e.g. plain `b % 62`) would push the first 8 symbols ~25% higher.
        let p = Prefix::default();
        let mut counts = [0u32; 62];
        for _ in 0..2000 {
            let t = generate(&p).unwrap();
            for b in t.expose()[4..34].bytes() {
                counts[ALPHABET.iter().position(|&a| a == b).unwrap()] += 1;
            }
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1140, "{min}..{max}");
    }
}
