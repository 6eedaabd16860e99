//! The token format: `<prefix><30 random base62 chars><6 base62 chars of CRC32>`.
//!
//! Like GitHub's tokens: a recognisable prefix (secret scanners can find leaked tokens),
//! 30 base62 characters from the OS CSPRNG (178 bits), and a CRC32 of prefix and random
//! part, so that a mistyped or garbage token is refused without a round trip. The
//! service checks the shape before touching its database; the agent checks it before a
//! string that may be some other secret leaves the machine.
use std::fmt;

use crate::ErrorReason;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random base62 characters after the prefix.
pub const RANDOM_LEN: usize = 30;
/// Checksum characters after the random part.
pub(crate) const CHECKSUM_LEN: usize = 6;
/// Characters after the prefix.
pub(crate) const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// Longest string even looked at; anything longer is refused before any work.
pub const MAX_LEN: usize = 128;
/// Longest prefix body (the letters and digits before the `_`).
const MAX_PREFIX_BODY: usize = 16;

/// A token prefix such as `pat_`: 1-16 lowercase ASCII letters or digits and a `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

/// A prefix that does not follow the rules of [`Prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPrefix(pub(crate) String);

impl fmt::Display for BadPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a token prefix: use 1-16 lowercase letters or digits followed by `_`, e.g. `pat_`",
            self.0
        )
    }
}

impl std::error::Error for BadPrefix {}

fn valid_prefix(prefix: &str) -> bool {
    prefix.strip_suffix('_').is_some_and(|body| {
        !body.is_empty()
            && body.len() <= MAX_PREFIX_BODY
            && body
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

impl Prefix {
    /// Checks the prefix rules.
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        if valid_prefix(prefix) {
            Ok(Prefix(prefix.to_owned()))
        } else {
            Err(BadPrefix(prefix.to_owned()))
        }
    }

    /// The prefix, e.g. `pat_`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The service's default prefix (`--token-prefix`).
pub const DEFAULT_PREFIX: &str = "pat_";

impl Default for Prefix {
    /// [`DEFAULT_PREFIX`].
    fn default() -> Self {
        Prefix(DEFAULT_PREFIX.into())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a token. Each maps to an [`ErrorReason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Nothing was given (`MISSING_CREDENTIALS`, not `TOKEN_MALFORMED`).
    Empty,
    /// Longer than [`MAX_LEN`].
    TooLong,
    /// It does not start with the expected prefix (or any valid prefix).
    WrongPrefix(Option<Prefix>),
    /// The part after the prefix is not [`BODY_LEN`] characters.
    WrongLength,
    /// Something other than ASCII letters and digits after the prefix.
    BadCharacters,
    /// The checksum does not match: a typo, or a truncated or altered token.
    ChecksumMismatch,
}

impl Malformed {
    /// The wire reason: `MISSING_CREDENTIALS` for nothing, else `TOKEN_MALFORMED`.
    pub fn reason(&self) -> ErrorReason {
        match self {
            Malformed::Empty => ErrorReason::MissingCredentials,
            _ => ErrorReason::TokenMalformed,
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Empty => f.write_str("no token was given"),
            Malformed::TooLong => f.write_str("far too long"),
            Malformed::WrongPrefix(Some(prefix)) => write!(f, "tokens start with `{prefix}`"),
            Malformed::WrongPrefix(None) => {
                f.write_str("tokens start with lowercase letters or digits and `_`, e.g. `pat_`")
            }
            Malformed::WrongLength => f.write_str("wrong length"),
            Malformed::BadCharacters => f.write_str("unexpected characters"),
            Malformed::ChecksumMismatch => f.write_str("checksum mismatch"),
        }
    }
}

impl std::error::Error for Malformed {}

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

/// Checks the body (everything after the prefix) against the prefix's checksum.
fn check_body(prefix: &str, body: &str) -> Result<(), Malformed> {
    if body.len() != BODY_LEN {
        return Err(Malformed::WrongLength);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Malformed::BadCharacters);
    }
    let (random, sum) = body.as_bytes().split_at(RANDOM_LEN);
    if checksum(prefix, random) != sum {
        return Err(Malformed::ChecksumMismatch);
    }
    Ok(())
}

/// Checks that `presented` is a well-formed token of `prefix`: length, alphabet and
/// checksum. The string is taken as it is (no trimming).
pub fn check(prefix: &Prefix, presented: &str) -> Result<(), Malformed> {
    if presented.is_empty() {
        return Err(Malformed::Empty);
    }
    if presented.len() > MAX_LEN {
        return Err(Malformed::TooLong);
    }
    let body = presented
        .strip_prefix(prefix.as_str())
        .ok_or_else(|| Malformed::WrongPrefix(Some(prefix.clone())))?;
    check_body(prefix.as_str(), body)
}

/// Checks that `presented` is a well-formed token of any valid prefix, and returns that
/// prefix. The checksum covers the prefix, so a token whose prefix was altered fails
/// here too: a client can check tokens without being told the server's prefix.
pub fn check_any(presented: &str) -> Result<Prefix, Malformed> {
    if presented.is_empty() {
        return Err(Malformed::Empty);
    }
    if presented.len() > MAX_LEN {
        return Err(Malformed::TooLong);
    }
    // The random part is base62, so the first `_` ends the prefix.
    let end = presented
        .find('_')
        .filter(|&i| valid_prefix(&presented[..=i]))
        .ok_or(Malformed::WrongPrefix(None))?;
    let (prefix, body) = presented.split_at(end + 1);
    check_body(prefix, body)?;
    Ok(Prefix(prefix.to_owned()))
}

/// The token of `prefix` with the given random part (30 base62 characters) and its
/// checksum: for fixtures and documentation, where a token must be the same every time.
/// Real tokens come from [`generate`].
pub fn with_random(prefix: &Prefix, random: &str) -> Result<String, Malformed> {
    if random.len() != RANDOM_LEN {
        return Err(Malformed::WrongLength);
    }
    if !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Malformed::BadCharacters);
    }
    let sum = checksum(prefix.as_str(), random.as_bytes());
    let mut token = String::with_capacity(prefix.as_str().len() + BODY_LEN);
    token.push_str(prefix.as_str());
    token.push_str(random);
    token.extend(sum.iter().map(|&b| char::from(b)));
    Ok(token)
}

/// Draws a new token of `prefix` from the OS CSPRNG.
pub fn generate(prefix: &Prefix) -> Result<String, getrandom::Error> {
    let mut random = Vec::with_capacity(BODY_LEN);
    let mut buf = [0u8; 64];
    while random.len() < RANDOM_LEN {
        getrandom::fill(&mut buf)?;
        // Rejection sampling: 248 = 4 * 62, so `b % 62` is uniform for b < 248.
        random.extend(
            buf.iter()
                .filter(|&&b| b < 248)
                .map(|&b| ALPHABET[usize::from(b % 62)])
                .take(RANDOM_LEN - random.len()),
        );
    }
    let sum = checksum(prefix.as_str(), &random);
    random.extend_from_slice(&sum);
    let mut token = String::with_capacity(prefix.as_str().len() + BODY_LEN);
    token.push_str(prefix.as_str());
    token.extend(random.iter().map(|&b| char::from(b)));
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_check_and_differ() {
        let p = Prefix::default();
        let a = generate(&p).unwrap();
        let b = generate(&p).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + BODY_LEN);
        assert!(a.starts_with("pat_"));
        assert_eq!(check(&p, &a), Ok(()));
        assert_eq!(check_any(&a), Ok(p));
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let p = Prefix::default();
        let t = generate(&p).unwrap();
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(check(&p, &typo).is_err(), "{i}");
            assert!(check_any(&typo).is_err(), "{i}");
        }
    }

    #[test]
    fn each_defect_is_named() {
        let p = Prefix::default();
        let t = generate(&p).unwrap();
        assert_eq!(check(&p, ""), Err(Malformed::Empty));
        assert_eq!(Malformed::Empty.reason(), ErrorReason::MissingCredentials);
        assert_eq!(check(&p, &"a".repeat(MAX_LEN + 1)), Err(Malformed::TooLong));
        assert_eq!(
            check(&p, &t.replace("pat_", "ghp_")),
            Err(Malformed::WrongPrefix(Some(p.clone())))
        );
        assert_eq!(check(&p, &t[..t.len() - 1]), Err(Malformed::WrongLength));
        let mut dashed = t.clone();
        dashed.replace_range(10..11, "-");
        assert_eq!(check(&p, &dashed), Err(Malformed::BadCharacters));
        assert_eq!(
            Malformed::BadCharacters.reason(),
            ErrorReason::TokenMalformed
        );
        assert_eq!(check_any("hunter2"), Err(Malformed::WrongPrefix(None)));
        assert_eq!(check_any("PAT_x"), Err(Malformed::WrongPrefix(None)));
    }

    #[test]
    fn a_token_of_another_prefix_checks_only_against_its_own() {
        let svc = Prefix::new("svc_").unwrap();
        let t = generate(&svc).unwrap();
        assert_eq!(check(&svc, &t), Ok(()));
        assert!(check(&Prefix::default(), &t).is_err());
        assert_eq!(check_any(&t), Ok(svc));
        // Swapping the prefix breaks the checksum, which covers it.
        assert_eq!(
            check_any(&t.replace("svc_", "pat_")),
            Err(Malformed::ChecksumMismatch)
        );
    }

    #[test]
    fn a_chosen_random_part_gets_its_checksum() {
        let p = Prefix::default();
        let t = with_random(&p, &"a".repeat(RANDOM_LEN)).unwrap();
        assert_eq!(check(&p, &t), Ok(()));
        assert_eq!(with_random(&p, "short"), Err(Malformed::WrongLength));
        assert_eq!(
            with_random(&p, &"-".repeat(RANDOM_LEN)),
            Err(Malformed::BadCharacters)
        );
    }

    #[test]
    fn every_ascii_typo_at_every_position_is_malformed() {
        // Exhaustive over ASCII for one token; the property test below samples the rest
        // of Unicode and other tokens.
        let p = Prefix::default();
        let t = generate(&p).unwrap();
        for (i, original) in t.char_indices() {
            for replacement in (0u8..0x80).map(char::from).filter(|&c| c != original) {
                let mut typo = t.clone();
                typo.replace_range(i..=i, replacement.encode_utf8(&mut [0; 4]));
                let why = check(&p, &typo).unwrap_err();
                assert_eq!(
                    why.reason(),
                    ErrorReason::TokenMalformed,
                    "{i} {replacement:?}"
                );
                let why = check_any(&typo).unwrap_err();
                assert_eq!(
                    why.reason(),
                    ErrorReason::TokenMalformed,
                    "{i} {replacement:?}"
                );
            }
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(Prefix::new("pat_").is_ok());
        for bad in ["", "_", "pat", "PAT_", "p-t_", "abcdefghijklmnopq_"] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
        assert!(BadPrefix("x".into()).to_string().contains("pat_"));
    }

    #[test]
    fn random_part_uses_the_whole_alphabet_evenly() {
        // 2000 tokens * 30 chars = 60000 draws, ~968 per symbol; a biased mapping
        // (e.g. plain `b % 62`) would push the first 8 symbols ~25% higher.
        let p = Prefix::default();
        let mut counts = [0u32; 62];
        for _ in 0..2000 {
            let t = generate(&p).unwrap();
            for b in t[4..4 + RANDOM_LEN].bytes() {
                counts[ALPHABET.iter().position(|&a| a == b).unwrap()] += 1;
            }
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1140, "{min}..{max}");
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: what holds for every token and every string, not just the examples.
    use proptest::prelude::*;

    use super::*;

    fn prefix() -> impl Strategy<Value = Prefix> {
        "[a-z0-9]{1,16}_".prop_map(|p| Prefix::new(&p).unwrap())
    }

    fn random_part() -> impl Strategy<Value = String> {
        "[0-9A-Za-z]{30}"
    }

    /// Mostly ASCII (where a typo is likely), but any `char` too.
    fn replacement() -> impl Strategy<Value = char> {
        prop_oneof![proptest::char::range('\0', '\x7f'), any::<char>()]
    }

    /// Strings of every kind: arbitrary Unicode, and near-tokens that get past the
    /// cheap checks (prefix, length) to the alphabet and checksum checks.
    fn presented() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9]{0,17}_[0-9A-Za-z_-]{0,40}",
            "pat_[0-9A-Za-z]{36}",
            ".{120,140}",
        ]
    }

    /// What every answer of [`check`] and [`check_any`] must satisfy.
    fn consistent(presented: &str, why: &Malformed) {
        assert_eq!(*why == Malformed::Empty, presented.is_empty());
        assert_eq!(
            *why == Malformed::TooLong,
            presented.len() > MAX_LEN,
            "{why:?}"
        );
        assert!(!why.to_string().is_empty());
    }

    /// An accepted token is exactly `prefix + random + checksum of random`.
    fn round_trips(prefix: &Prefix, token: &str) {
        let random = &token[prefix.as_str().len()..][..RANDOM_LEN];
        assert_eq!(with_random(prefix, random).as_deref(), Ok(token));
    }

    proptest! {
        #[test]
        fn a_token_checks_against_its_prefix_and_any(p in prefix(), random in random_part()) {
            let t = with_random(&p, &random).unwrap();
            prop_assert_eq!(t.len(), p.as_str().len() + BODY_LEN);
            prop_assert_eq!(check(&p, &t), Ok(()));
            prop_assert_eq!(check_any(&t), Ok(p.clone()));
            round_trips(&p, &t);
            let fresh = generate(&p).unwrap();
            prop_assert_eq!(check(&p, &fresh), Ok(()));
            prop_assert_eq!(check_any(&fresh), Ok(p));
        }

        #[test]
        fn any_string_is_checked_without_panicking(s in presented()) {
            let p = Prefix::default();
            match check(&p, &s) {
                Ok(()) => round_trips(&p, &s),
                Err(why) => consistent(&s, &why),
            }
            match check_any(&s) {
                Ok(found) => {
                    prop_assert!(s.starts_with(found.as_str()));
                    prop_assert_eq!(check(&found, &s), Ok(()));
                    round_trips(&found, &s);
                }
                Err(why) => consistent(&s, &why),
            }
        }

        #[test]
        fn every_single_character_change_is_malformed(
            p in prefix(),
            random in random_part(),
            replacement in replacement(),
        ) {
            let t = with_random(&p, &random).unwrap();
            for (i, original) in t.char_indices().filter(|&(_, c)| c != replacement) {
                let mut typo = t.clone();
                typo.replace_range(i..i + original.len_utf8(), replacement.encode_utf8(&mut [0; 4]));
                let why = check(&p, &typo).unwrap_err();
                prop_assert_eq!(why.reason(), ErrorReason::TokenMalformed, "{} {:?}", i, replacement);
                let why = check_any(&typo).unwrap_err();
                prop_assert_eq!(why.reason(), ErrorReason::TokenMalformed, "{} {:?}", i, replacement);
            }
        }
    }
}
