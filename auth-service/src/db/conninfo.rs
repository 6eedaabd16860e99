//! Reading a connection string, a URL (`postgres://...?sslmode=verify-full`) or
//! key=value pairs (`host=... sslmode=verify-full`): the TLS parameters that
//! tokio-postgres does not know (it rejects `sslmode=verify-full`) are taken out, and the
//! rest is left for tokio-postgres to parse. What the TLS parameters mean is
//! [`super::tls`]'s business.

/// The TLS parameters taken out of a connection string, as written (decoded).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    /// `sslmode`.
    pub(crate) mode: Option<String>,
    /// `sslrootcert`.
    pub(crate) root_cert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a URL or key=value string; returns the rest.
pub(crate) fn take_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            params.mode = Some(value);
            true
        }
        "sslrootcert" => {
            params.root_cert = Some(value);
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), params));
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key, percent_decode(value))
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // key=value: values may be single-quoted, with \' and \\ escapes.
    let mut kept = Vec::new();
    let mut chars = url.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            loop {
                match chars.next() {
                    Some('\\') => {
                        let c = chars.next().ok_or("unterminated quoted value")?;
                        raw.push('\\');
                        raw.push(c);
                        value.push(c);
                    }
                    Some('\'') => {
                        raw.push('\'');
                        break;
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        if !take(&key, value) {
            kept.push(format!("{key}={raw}"));
        }
    }
    Ok((kept.join(" "), params))
}

/// A URL query value, percent-decoded (a `%` not followed by two hex digits stays as it
/// is, as libpq leaves it).
fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_come_out_of_urls_and_key_value_strings() {
        let (rest, p) = take_tls_params(
            "postgres://u:p%40ss@db.internal:5432/auth?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&application_name=x",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.internal:5432/auth?application_name=x"
        );
        assert_eq!(p.mode.as_deref(), Some("verify-full"));
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.crt"));
        let (rest, p) = take_tls_params(
            "host=db user=auth sslmode=verify-ca sslrootcert='/a b/ca.crt' dbname=auth",
        )
        .unwrap();
        assert_eq!(rest, "host=db user=auth dbname=auth");
        assert_eq!(p.mode.as_deref(), Some("verify-ca"));
        assert_eq!(p.root_cert.as_deref(), Some("/a b/ca.crt"));
        assert_eq!(
            take_tls_params("postgres://h/db").unwrap(),
            ("postgres://h/db".to_owned(), TlsParams::default())
        );
    }

    #[test]
    fn url_values_are_percent_decoded() {
        for (raw, decoded) in [
            ("%2Fetc%2Fca.crt", "/etc/ca.crt"),
            ("%2fetc", "/etc"),
            ("caf%C3%A9", "café"),
            ("a+b", "a+b"),
            ("100%", "100%"),
            ("%zz%2", "%zz%2"),
            ("%FF", "\u{FFFD}"),
        ] {
            assert_eq!(percent_decode(raw), decoded, "{raw}");
        }
    }
}
