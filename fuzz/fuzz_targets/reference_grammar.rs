//! The name grammar: `RepoName`, `Tag`, `Reference` and `Digest` parsing on arbitrary UTF-8.
//!
//! Checks: no panics; whatever parses displays back to exactly the input; a `RepoName` never contains `..`, `//`
//! or uppercase and is at most `MAX_NAME_LEN` bytes; a `Digest`'s hex is lowercase hex of its algorithm's length.
#![no_main]

use std::str::FromStr;

use berth::oci::name::{MAX_NAME_LEN, Tag};
use berth::oci::{Digest, Reference, RepoName};
use libfuzzer_sys::fuzz_target;

fn check_digest(d: &Digest, input: &str) {
    assert_eq!(d.to_string(), input, "Digest does not round-trip");
    let hex = d.hex();
    assert_eq!(
        hex.len(),
        d.algorithm().hex_len(),
        "digest hex has the wrong length: {input:?}"
    );
    assert!(
        hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "digest hex is not lowercase hex: {input:?}"
    );
    assert_eq!(input.split_once(':').map(|(a, _)| a), Some(d.algorithm().as_str()));
}

fn check_tag(t: &Tag, input: &str) {
    assert_eq!(t.to_string(), input, "Tag does not round-trip");
    assert_eq!(t.as_str(), input);
    let b = input.as_bytes();
    assert!((1..=128).contains(&b.len()), "tag length {} out of range", b.len());
    assert!(
        b[0].is_ascii_alphanumeric() || b[0] == b'_',
        "tag starts with {:?}",
        b[0] as char
    );
    assert!(
        b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')),
        "tag {input:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(name) = RepoName::from_str(s) {
        assert_eq!(name.to_string(), s, "RepoName does not round-trip");
        assert_eq!(name.as_str(), s);
        assert!(
            !s.is_empty() && s.len() <= MAX_NAME_LEN,
            "name length {} out of range",
            s.len()
        );
        assert!(!s.contains(".."), "name with '..' accepted: {s:?}");
        assert!(!s.contains("//"), "name with '//' accepted: {s:?}");
        assert!(
            !s.starts_with('/') && !s.ends_with('/'),
            "name with a leading/trailing '/' accepted: {s:?}"
        );
        assert!(
            !s.bytes().any(|b| b.is_ascii_uppercase()),
            "name with uppercase accepted: {s:?}"
        );
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
            "name with a character outside [a-z0-9._-/] accepted: {s:?}"
        );
    }

    let tag = Tag::from_str(s);
    if let Ok(t) = &tag {
        check_tag(t, s);
    }

    let digest = Digest::from_str(s);
    if let Ok(d) = &digest {
        check_digest(d, s);
    }

    match Reference::from_str(s) {
        Ok(r) => {
            assert_eq!(r.to_string(), s, "Reference does not round-trip");
            match &r {
                Reference::Tag(t) => {
                    assert!(!s.contains(':'));
                    check_tag(t, s);
                }
                Reference::Digest(d) => {
                    assert!(s.contains(':'));
                    check_digest(d, s);
                }
            }
        }
        // A Reference is exactly a tag (no ':') or a digest (with ':').
        Err(_) => {
            if s.contains(':') {
                assert!(digest.is_err(), "Digest parses but Reference does not: {s:?}");
            } else {
                assert!(tag.is_err(), "Tag parses but Reference does not: {s:?}");
            }
        }
    }
});
