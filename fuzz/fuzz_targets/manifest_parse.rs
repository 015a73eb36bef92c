//! `berth::oci::manifest::parse` on arbitrary bytes under a fuzzer-chosen Content-Type.
//!
//! Input layout: the first byte picks the Content-Type (`byte - b'0'` modulo `CONTENT_TYPES.len()`, so a seed file
//! that starts with the digit `3` uses entry 3); the remaining bytes are the manifest body.
#![no_main]

use berth::oci::manifest::{self, ManifestError};
use berth::oci::media;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_MANIFEST_LIST),
    Some(media::DOCKER_SCHEMA1),
    Some(media::DOCKER_SCHEMA1_SIGNED),
    // Generic types clients send; berth then trusts the body's mediaType.
    Some("application/json"),
    // A manifest type in mixed case, padded and with parameters: its essence is OCI_INDEX.
    Some("  Application/VND.oci.image.index.v1+JSON ; charset=utf-8"),
    // Garbage.
    Some("\u{feff}x/y;;, q=\"a;b\" \u{0}"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector.wrapping_sub(b'0')) % CONTENT_TYPES.len()];
    let essence = content_type.map(media::essence);

    let result = manifest::parse(body, content_type);

    let schema1 = matches!(
        essence.as_deref(),
        Some(media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED)
    );
    if schema1 {
        assert_eq!(
            result,
            Err(ManifestError::Schema1),
            "a schema 1 Content-Type must be refused"
        );
    }
    let Ok(m) = result else {
        return;
    };

    assert!(
        media::MANIFEST_TYPES.contains(&m.media_type.as_str()),
        "accepted a manifest with media type {:?}",
        m.media_type
    );
    let children_bearing = m.media_type == media::OCI_INDEX || m.media_type == media::DOCKER_MANIFEST_LIST;
    assert_eq!(
        m.is_index(),
        children_bearing,
        "is_index() disagrees with media type {:?}",
        m.media_type
    );
    if m.is_index() {
        assert!(
            m.config.is_none() && m.layers.is_empty(),
            "an index came back with config or layers"
        );
    } else {
        assert!(m.children.is_empty(), "an image manifest came back with children");
        assert!(m.config.is_some(), "an image manifest came back without a config");
    }
    if m.media_type.starts_with("application/vnd.docker.") {
        assert!(m.subject.is_none(), "a Docker manifest came back with a subject");
    }
    // A specific manifest Content-Type must agree with what was stored.
    if let Some(ct) = essence.as_deref()
        && media::MANIFEST_TYPES.contains(&ct)
    {
        assert_eq!(m.media_type, ct, "accepted media type differs from the Content-Type");
    }
});
