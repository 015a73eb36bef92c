//! Numbers in words for people: the CLI's summaries, log lines and the UI use these two, so every size is in one
//! unit system (IEC: KiB, MiB, GiB, as `bytesize` and the config's sizes use) and every count agrees with its noun.

/// A byte count in IEC units, e.g. `512 B`, `1.5 MiB`.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// `n` and its noun, singular for exactly one: `1 image`, `2 images`, `0 repositories`. `noun` is the singular; the
/// plural follows English's regular rule (`-y` after a consonant becomes `-ies`; `-s`, `-x`, `-ch`, `-sh` take
/// `-es`), which covers every noun berth counts.
pub fn count(n: impl TryInto<u64>, noun: &str) -> String {
    // Counts are `u64` or `usize`; a `usize` always fits.
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        return format!("1 {noun}");
    }
    let consonant_y =
        noun.ends_with('y') && !noun[..noun.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u']);
    if consonant_y {
        format!("{n} {}ies", &noun[..noun.len() - 1])
    } else if noun.ends_with(['s', 'x']) || noun.ends_with("ch") || noun.ends_with("sh") {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

/// An error with its chain of causes, outermost first, joined by `: ` (a cause whose text the message already
/// contains is left out). `reqwest` says only "error sending request" and keeps "connection refused" in a source.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_iec() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 20), "3.0 MiB");
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(1, "image"), "1 image");
        assert_eq!(count(0, "image"), "0 images");
        assert_eq!(count(2, "repository"), "2 repositories");
        assert_eq!(count(1, "repository"), "1 repository");
        assert_eq!(count(3, "key"), "3 keys");
        assert_eq!(count(2, "blob link"), "2 blob links");
        assert_eq!(count(2, "match"), "2 matches");
    }

    #[test]
    fn error_chain_names_every_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "error sending request: connection refused");
        let plain = std::io::Error::other("disk full");
        assert_eq!(error_chain(&plain), "disk full");
    }
}
