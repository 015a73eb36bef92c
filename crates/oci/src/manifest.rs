//! Manifest and index parsing and validation. Berth stores manifests byte for byte; parsing only extracts what the
//! registry must check and index (references, subject, artifact type, annotations).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::media;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error(
        "Docker schema 1 manifests are not supported (deprecated and insecure); push with a current client, which sends schema 2 or OCI"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {media_type:?}")]
    ContentTypeMismatch {
        content_type: String,
        media_type: String,
    },
    #[error(
        "cannot tell the manifest's media type: set mediaType in the manifest or the Content-Type header"
    )]
    UnknownMediaType,
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("{0}")]
    Invalid(String),
}

/// A content descriptor as it appears in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// Non-distributable layers (Windows base layers and the like) may legitimately be absent from the registry.
    pub fn is_non_distributable(&self) -> bool {
        media::NON_DISTRIBUTABLE.contains(&self.media_type.as_str())
    }
}

/// The union of the fields of an image manifest and an index; which ones must be present depends on the type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    /// Only schema 1 has these; used to give a precise error.
    fs_layers: Option<serde_json::Value>,
    signatures: Option<serde_json::Value>,
}

/// What the registry needs to know about a manifest it is asked to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// `artifactType`, or for image manifests without one, the config's media type (the referrers API's rule).
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    /// Index children (manifests referenced by an index or manifest list).
    pub children: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ParsedManifest {
    pub fn is_index(&self) -> bool {
        self.media_type == media::OCI_INDEX || self.media_type == media::DOCKER_MANIFEST_LIST
    }
}

/// Parses and validates manifest bytes. `content_type` is the request's Content-Type, if any.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let content_type = content_type.map(media::essence).filter(|c| !c.is_empty());
    if let Some(ct) = &content_type
        && (ct == media::DOCKER_SCHEMA1 || ct == media::DOCKER_SCHEMA1_SIGNED)
    {
        return Err(ManifestError::Schema1);
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.schema_version == Some(1) || raw.fs_layers.is_some() || raw.signatures.is_some() {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let media_type = match (&raw.media_type, &content_type) {
        (Some(m), Some(ct)) if m != ct => {
            // Clients that send a generic JSON type are tolerated; a different manifest type is a contradiction.
            if ct != "application/json" && ct != "application/octet-stream" {
                return Err(ManifestError::ContentTypeMismatch {
                    content_type: ct.clone(),
                    media_type: m.clone(),
                });
            }
            m.clone()
        }
        (Some(m), _) => m.clone(),
        (None, Some(ct)) if media::MANIFEST_TYPES.contains(&ct.as_str()) => ct.clone(),
        // OCI lets mediaType be omitted; fall back on the structure.
        (None, _) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
        (None, _) if raw.config.is_some() => media::OCI_MANIFEST.to_owned(),
        (None, _) => return Err(ManifestError::UnknownMediaType),
    };
    if media_type == media::DOCKER_SCHEMA1 || media_type == media::DOCKER_SCHEMA1_SIGNED {
        return Err(ManifestError::Schema1);
    }
    let is_index = media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST;
    let is_image = media_type == media::OCI_MANIFEST || media_type == media::DOCKER_MANIFEST;
    if !is_index && !is_image {
        return Err(ManifestError::UnsupportedMediaType(
            super::digest::truncate(&media_type),
        ));
    }
    let docker = media_type.starts_with("application/vnd.docker.");
    if docker && (raw.subject.is_some() || raw.artifact_type.is_some()) {
        return Err(ManifestError::Invalid(
            "Docker manifests cannot carry subject or artifactType".into(),
        ));
    }
    if is_index {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Invalid(
                "an index must not have config or layers".into(),
            ));
        }
        let children = raw
            .manifests
            .ok_or_else(|| ManifestError::Invalid("an index needs a manifests array".into()))?;
        Ok(ParsedManifest {
            media_type,
            artifact_type: raw.artifact_type,
            config: None,
            layers: Vec::new(),
            children,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::Invalid(
                "an image manifest must not have a manifests array".into(),
            ));
        }
        let config = raw
            .config
            .ok_or_else(|| ManifestError::Invalid("an image manifest needs a config".into()))?;
        let layers = raw.layers.ok_or_else(|| {
            ManifestError::Invalid("an image manifest needs a layers array".into())
        })?;
        let artifact_type = raw
            .artifact_type
            .clone()
            .or_else(|| Some(config.media_type.clone()));
        Ok(ParsedManifest {
            media_type,
            artifact_type,
            config: Some(config),
            layers,
            children: Vec::new(),
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{EMPTY}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{EMPTY}","size":2}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn parses_image_manifest_with_subject() {
        let m = image(&format!(
            r#","artifactType":"application/x-sbom","subject":{{"mediaType":"{}","digest":"{EMPTY}","size":2}}"#,
            media::OCI_MANIFEST
        ));
        let p = parse(m.as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(p.layers.len(), 1);
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sbom"));
        assert!(p.subject.is_some());
    }

    #[test]
    fn artifact_type_defaults_to_config_media_type() {
        let p = parse(image("").as_bytes(), None).unwrap();
        assert_eq!(p.artifact_type.as_deref(), Some(media::OCI_EMPTY));
    }

    #[test]
    fn rejects_content_type_mismatch() {
        assert!(matches!(
            parse(image("").as_bytes(), Some(media::DOCKER_MANIFEST)),
            Err(ManifestError::ContentTypeMismatch { .. })
        ));
    }

    #[test]
    fn rejects_schema1() {
        let s1 = r#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        assert_eq!(parse(s1.as_bytes(), None), Err(ManifestError::Schema1));
        assert_eq!(
            parse(b"{}", Some(media::DOCKER_SCHEMA1_SIGNED)),
            Err(ManifestError::Schema1)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{\"schemaVersion\":2}",
            b"{\"schemaVersion\":2,\"mediaType\":\"text/plain\"}",
        ] {
            assert!(parse(bad, None).is_err());
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn parses_index() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{EMPTY}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST
        );
        let p = parse(idx.as_bytes(), Some(media::OCI_INDEX)).unwrap();
        assert!(p.is_index());
        assert_eq!(p.children.len(), 1);
    }
}
