//! Private files: the tiny `key = "value"` format (a TOML subset) used by the config and
//! state files, and the atomic write that creates them readable only by their owner.
//!
//! A handful of string keys per file do not justify serde and a TOML parser, so the
//! format is parsed by hand; anything outside the subset is an error naming the line.
//! Errors are plain `io::Error`s: the config and state modules say what they mean.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

/// Mode of every file the agent writes: owner read/write only.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of a directory the agent creates for its files.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Parses `key = "value"` lines; blank lines and `#` comments are skipped. Unknown keys
/// are kept (the caller ignores them), so an older agent can read a newer file.
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected key = \"value\"", index + 1);
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad());
        }
        let value = unquote(value.trim()).ok_or_else(bad)?;
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

/// Reads a basic TOML string: double quotes, with `\"`, `\\`, `\n` and `\t` escapes,
/// optionally followed by a comment.
fn unquote(value: &str) -> Option<String> {
    let mut chars = value.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => break,
            '\\' => out.push(match chars.next()? {
                '"' => '"',
                '\\' => '\\',
                'n' => '\n',
                't' => '\t',
                _ => return None,
            }),
            c => out.push(c),
        }
    }
    let rest = chars.as_str().trim();
    (rest.is_empty() || rest.starts_with('#')).then_some(out)
}

/// Formats one `key = "value"` line, escaped so that [`parse`] reads back the same value.
pub(crate) fn line(key: &str, value: &str) -> String {
    let mut out = format!("{key} = \"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push_str("\"\n");
    out
}

/// Replaces `path` with `contents`, atomically and readable only by the owner.
///
/// The temporary file is created with `O_EXCL` and mode 0600 from the first byte (never
/// chmod-ed afterwards, so there is no moment when the secret is world-readable), fsynced,
/// then renamed over the target: a reader sees the old file or the new one, never half.
/// The parent directory is created 0700 when missing.
pub(crate) fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = getrandom::u64().unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{nonce:016x}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask can only remove bits from 0600, and an existing file (perhaps made
        // by hand with a laxer mode) is replaced by this one, not rewritten in place.
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; a failure here loses nothing already written.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reads a file, or `None` when it does not exist.
pub(crate) async fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Reads a private file and parses it with `parse`; `None` when it does not exist. A
/// parse error is an `InvalidData` error carrying the parser's message.
pub(crate) async fn load<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> io::Result<Option<T>> {
    let Some(text) = read_optional(path).await? else {
        return Ok(None);
    };
    parse(&text)
        .map(Some)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// Replaces a private file atomically, mode 0600 (see [`write_private`]), on the
/// blocking pool: a few hundred bytes and two fsyncs do not belong on the reactor.
pub(crate) async fn store(path: &Path, text: String) -> io::Result<()> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || write_private(&owned, &text))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset_and_skips_comments() {
        let map = parse("# written by auth-agent\n\nserver = \"http://h:1\"  # trailing\ntoken=\"a\\\"b\\\\c\"\n").unwrap();
        assert_eq!(map["server"], "http://h:1");
        assert_eq!(map["token"], "a\"b\\c");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse("a = \"x\"\nb = x\n").unwrap_err(),
            "line 2: expected key = \"value\""
        );
        assert!(parse("a = \"unterminated\n").is_err());
        assert!(parse("a = \"x\" junk\n").is_err());
        assert!(parse("bad key = \"x\"\n").is_err());
    }

    #[test]
    fn lines_round_trip() {
        let value = "quote \" backslash \\ newline \n tab \t é";
        let map = parse(&line("k", value)).unwrap();
        assert_eq!(map["k"], value);
    }
}
