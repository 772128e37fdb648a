//! Keeping secrets out of logs, errors and diffs.
//!
//! Package URLs are often presigned (S3, GCS, Azure SAS) or carry credentials in the
//! userinfo part, and they end up in error messages, CI logs and lock-file diffs. Every
//! URL plugsync prints goes through [`redact_url`]; free text that may contain URLs (the
//! stderr of an external source client, for example) goes through [`redact_text`].

use std::sync::LazyLock;

use regex::{Captures, Regex};
use url::Url;

/// What replaces every secret.
const MASK: &str = "***";

/// A URL safe to print: userinfo replaced by `***@`, every query value and the fragment
/// replaced by `***` (query keys are kept, so the URL still says what it is).
///
/// `https://user:pw@host/p?X-Amz-Signature=abc&v=1` becomes
/// `https://***@host/p?X-Amz-Signature=***&v=***`.
pub fn redact_url(url: &Url) -> String {
    let had_credentials = !url.username().is_empty() || url.password().is_some();
    let mut clean = url.clone();
    // Both fail only for URLs without a host (`mailto:`, `data:`), which carry no userinfo.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None => pair.to_owned(),
            })
            .collect();
        clean.set_query(Some(&masked.join("&")));
    }
    if clean.fragment().is_some() {
        clean.set_fragment(Some(MASK));
    }
    let mut out = clean.to_string();
    if had_credentials {
        // After `scheme://`; a URL with credentials always has an authority.
        if let Some(at) = out.find("://") {
            out.insert_str(at + 3, &format!("{MASK}@"));
        }
    }
    out
}

/// Free text with every URL in it redacted as by [`redact_url`], for messages that come
/// from elsewhere (an external client's stderr, a server's error body).
///
/// Something that looks like a URL but does not parse, and contains `@`, `?` or `#`, is
/// replaced by `<scheme>://***` rather than risk leaking part of it.
pub fn redact_text(text: &str) -> String {
    static URL_LIKE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>`]+"#).expect("static regex is valid")
        // exercised by the unit tests
    });
    URL_LIKE
        .replace_all(text, |caps: &Captures<'_>| {
            let candidate = &caps[0];
            // Sentence punctuation right after a URL is not part of it.
            let trimmed = candidate.trim_end_matches(['.', ',', ';', ':', ')', ']', '!']);
            let tail = &candidate[trimmed.len()..];
            match Url::parse(trimmed) {
                Ok(url) => format!("{}{tail}", redact_url(&url)),
                Err(_) if trimmed.contains(['@', '?', '#']) => {
                    let scheme = trimmed.split("://").next().unwrap_or_default();
                    format!("{scheme}://{MASK}{tail}")
                }
                Err(_) => candidate.to_owned(),
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact_url(&Url::parse(s).unwrap())
    }

    #[test]
    fn plain_url_is_unchanged() {
        assert_eq!(
            r("https://example.com/a/b.difypkg"),
            "https://example.com/a/b.difypkg"
        );
    }

    #[test]
    fn user_and_password_are_masked() {
        let out = r("https://alice:s3cret@example.com:8443/p");
        assert_eq!(out, "https://***@example.com:8443/p");
    }

    #[test]
    fn user_only_token_is_masked() {
        let out = r("https://ghp_token123@example.com/p");
        assert_eq!(out, "https://***@example.com/p");
    }

    #[test]
    fn query_values_are_masked_keys_kept() {
        let out = r("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Expires=300&flag");
        assert_eq!(
            out,
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Expires=***&flag"
        );
    }

    #[test]
    fn fragment_is_masked() {
        assert_eq!(r("https://h/p#access_token=xyz"), "https://h/p#***");
    }

    #[test]
    fn everything_at_once() {
        let out = r("http://u:p@127.0.0.1:9/missing?token=abc");
        assert_eq!(out, "http://***@127.0.0.1:9/missing?token=***");
        assert!(!out.contains("abc") && !out.contains(":p@"));
    }

    #[test]
    fn non_hierarchical_urls_survive() {
        assert_eq!(r("mailto:a@example.com"), "mailto:a@example.com");
    }

    #[test]
    fn text_with_urls_is_redacted() {
        let text = "fetch failed for https://u:pw@host/x?sig=abc, retrying (see http://docs/y).";
        let out = redact_text(text);
        assert_eq!(
            out,
            "fetch failed for https://***@host/x?sig=***, retrying (see http://docs/y)."
        );
    }

    #[test]
    fn text_without_urls_is_unchanged() {
        let text = "boom: exit 3\nno url here: a@b";
        assert_eq!(redact_text(text), text);
    }

    #[test]
    fn unparseable_url_with_secrets_is_masked_whole() {
        let out = redact_text("bad http://host:99999/p?token=abc end");
        assert_eq!(out, "bad http://*** end");
    }

    #[test]
    fn custom_schemes_are_redacted() {
        let out = redact_text("GET s3://key:secret@bucket/obj?v=1 failed");
        assert_eq!(out, "GET s3://***@bucket/obj?v=*** failed");
    }
}
