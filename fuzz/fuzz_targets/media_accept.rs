//! `berth::oci::media::essence` and `accepts` on arbitrary header strings.
//!
//! Input layout (UTF-8): the first line is the media type asked about, every further line is one `Accept` header
//! value. Checks: no panics; `essence` is idempotent and yields a trimmed, lowercase string without ';'; an absent
//! Accept admits everything; a header naming exactly the asked-for type (or a wildcard) admits it.
#![no_main]

use berth::oci::media::{self, accepts, essence};
use libfuzzer_sys::fuzz_target;

fn check_essence(s: &str) -> String {
    let e = essence(s);
    assert!(!e.contains(';'), "essence of {s:?} contains ';': {e:?}");
    assert_eq!(e.trim(), e, "essence of {s:?} is not trimmed");
    assert!(
        !e.bytes().any(|b| b.is_ascii_uppercase()),
        "essence of {s:?} has uppercase: {e:?}"
    );
    assert_eq!(essence(&e), e, "essence is not idempotent on {s:?}");
    e
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_essence(s);
    let mut lines = s.split('\n');
    let media_type = lines.next().unwrap_or("");
    let headers: Vec<&str> = lines.collect();
    for h in &headers {
        check_essence(h);
        for item in h.split(',') {
            check_essence(item);
        }
    }

    let admitted = accepts(&headers, media_type);
    // Whatever the header, the known types must not panic either.
    for t in media::MANIFEST_TYPES {
        accepts(&headers, t);
    }

    assert!(
        accepts(&[], media_type),
        "an absent Accept header must admit {media_type:?}"
    );
    if headers.iter().all(|h| h.split(',').all(|i| essence(i).is_empty())) {
        assert!(admitted, "an Accept header with no types must admit everything");
    }
    if headers.iter().any(|h| {
        h.split(',')
            .any(|i| matches!(essence(i).as_str(), "*/*" | "application/*"))
    }) {
        assert!(admitted, "a wildcard Accept must admit {media_type:?}");
    }
    let e = essence(media_type);
    if !e.is_empty() && !e.contains(',') {
        assert!(accepts(&[e.as_str()], &e), "Accept: {e:?} must admit itself");
        let mut with_it = headers.clone();
        with_it.push(&e);
        assert!(accepts(&with_it, &e), "adding {e:?} to the Accept header must admit it");
    }
});
