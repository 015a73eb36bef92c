//! Recognises the distribution API's endpoints in a `/v2/...` path. Repository names contain slashes, so the
//! endpoint is identified from the path's last components and everything before them is the name.

/// An endpoint with its raw (not yet validated) path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: &'a str },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: &'a str },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: &'a str, id: &'a str },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
}

impl<'a> Endpoint<'a> {
    /// The repository name the endpoint addresses, if any.
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }
}

/// Parses the part of the path after `/v2/`. `None` for paths that are no endpoint.
pub fn parse(rest: &str) -> Option<Endpoint<'_>> {
    if rest.is_empty() {
        return Some(Endpoint::Base);
    }
    if rest == "_catalog" {
        return Some(Endpoint::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Endpoint::Tags { name });
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Endpoint::UploadStart { name });
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Endpoint::Manifest {
            name,
            reference: last,
        }),
        "referrers" => Some(Endpoint::Referrers { name, digest: last }),
        "blobs" => Some(Endpoint::Blob { name, digest: last }),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some(Endpoint::Upload { name, id: last })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_every_endpoint() {
        assert_eq!(parse(""), Some(Endpoint::Base));
        assert_eq!(parse("_catalog"), Some(Endpoint::Catalog));
        assert_eq!(parse("a/b/tags/list"), Some(Endpoint::Tags { name: "a/b" }));
        assert_eq!(
            parse("a/manifests/latest"),
            Some(Endpoint::Manifest {
                name: "a",
                reference: "latest"
            })
        );
        assert_eq!(
            parse("a/b/blobs/sha256:00"),
            Some(Endpoint::Blob {
                name: "a/b",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse("a/blobs/uploads/"),
            Some(Endpoint::UploadStart { name: "a" })
        );
        assert_eq!(
            parse("a/blobs/uploads/xyz"),
            Some(Endpoint::Upload {
                name: "a",
                id: "xyz"
            })
        );
        assert_eq!(
            parse("a/referrers/sha256:00"),
            Some(Endpoint::Referrers {
                name: "a",
                digest: "sha256:00"
            })
        );
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(
            parse("blobs/uploads/x/blobs/sha256:00"),
            Some(Endpoint::Blob {
                name: "blobs/uploads/x",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse("manifests/manifests/manifests/t"),
            Some(Endpoint::Manifest {
                name: "manifests/manifests",
                reference: "t"
            })
        );
    }

    #[test]
    fn rejects_non_endpoints() {
        assert_eq!(parse("a"), None);
        assert_eq!(parse("a/b/c"), None);
        assert_eq!(parse("a/uploads/x"), None);
    }
}
