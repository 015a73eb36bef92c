//! Repository globs, shared by policies, personal-access-token scopes and immutable-tag rules.
//!
//! Grammar: `*` matches any run of characters within one path component (never `/`), `**` matches anything
//! including `/`, `?` matches one character other than `/`; everything else matches itself. A glob is matched
//! against a repository's canonical name: private repositories by their name (`team/app`), mirrored ones by
//! mirror name and upstream path (`docker.io/library/alpine`), however the request addressed them (`hub/alpine`,
//! `?ns=docker.io`, a mirror listener). The word `mirrors` alone is a pseudo-glob matching every mirrored
//! repository and nothing else.

use std::fmt;

/// Whether the repository a glob is tested against is private or mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Private,
    Mirror,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoGlob {
    /// Every mirrored repository.
    Mirrors,
    Pattern(String),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid repository glob {0:?}: use lowercase names with '/', '*', '**' and '?'")]
pub struct GlobError(pub String);

impl std::str::FromStr for RepoGlob {
    type Err = GlobError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "mirrors" {
            return Ok(RepoGlob::Mirrors);
        }
        let ok = !s.is_empty()
            && s.len() <= 512
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:*?".contains(&b));
        if ok {
            Ok(RepoGlob::Pattern(s.to_owned()))
        } else {
            Err(GlobError(s.to_owned()))
        }
    }
}

impl fmt::Display for RepoGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoGlob::Mirrors => f.write_str("mirrors"),
            RepoGlob::Pattern(p) => f.write_str(p),
        }
    }
}

impl RepoGlob {
    pub fn matches(&self, name: &str, kind: RepoKind) -> bool {
        match self {
            RepoGlob::Mirrors => kind == RepoKind::Mirror,
            RepoGlob::Pattern(p) => glob_match(p.as_bytes(), name.as_bytes()),
        }
    }
}

/// One element of a compiled glob.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `?`: one byte other than `/`.
    One,
    /// `*`: any run without `/`.
    Star,
    /// `**`: any run.
    Any,
}

/// Matches by simulating the glob as an automaton over the set of pattern positions reachable so far: time is
/// O(pattern × name) whatever the stars, so no scope or policy a user writes can make a request expensive.
fn glob_match(p: &[u8], n: &[u8]) -> bool {
    let mut tokens = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        tokens.push(match p[i] {
            b'*' if p.get(i + 1) == Some(&b'*') => {
                i += 1;
                Token::Any
            }
            b'*' => Token::Star,
            b'?' => Token::One,
            c => Token::Byte(c),
        });
        i += 1;
    }
    // A star may match nothing: whoever reaches it also reaches the position after it.
    let close = |set: &mut Vec<bool>| {
        for k in 0..tokens.len() {
            if set[k] && matches!(tokens[k], Token::Star | Token::Any) {
                set[k + 1] = true;
            }
        }
    };
    let mut set = vec![false; tokens.len() + 1];
    set[0] = true;
    close(&mut set);
    for &b in n {
        let mut next = vec![false; tokens.len() + 1];
        for (k, t) in tokens.iter().enumerate() {
            if !set[k] {
                continue;
            }
            match *t {
                Token::Byte(c) if c == b => next[k + 1] = true,
                Token::One if b != b'/' => next[k + 1] = true,
                Token::Star if b != b'/' => next[k] = true,
                Token::Any => next[k] = true,
                _ => {}
            }
        }
        close(&mut next);
        if !next.contains(&true) {
            return false;
        }
        set = next;
    }
    set[tokens.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        p.parse::<RepoGlob>().unwrap().matches(n, RepoKind::Private)
    }

    /// Many stars against a long name that almost matches: answered at once, not by exponential backtracking.
    #[test]
    fn pathological_patterns_stay_linear() {
        let p = format!("{}b", "**a".repeat(100));
        let name = "a".repeat(400);
        assert!(!m(&p, &name));
        assert!(m(&p, &format!("{name}b")));
    }

    #[test]
    fn star_stays_within_one_component() {
        assert!(m("team/*", "team/a"));
        assert!(!m("team/*", "team/a/b"));
        assert!(!m("team/*", "teamx/a"));
        assert!(m("team/*/app", "team/x/app"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(m("team/**", "team/a/b"));
        assert!(m("**", "anything/at/all"));
        assert!(m("docker.io/**", "docker.io/library/alpine"));
        assert!(!m("team/**", "team"));
    }

    #[test]
    fn exact_and_question_mark() {
        assert!(m("team/a", "team/a"));
        assert!(!m("team/a", "team/b"));
        assert!(m("team/?", "team/b"));
        assert!(!m("team?b", "team/b"));
    }

    #[test]
    fn mirrors_pseudo_glob_matches_only_mirrors() {
        let g: RepoGlob = "mirrors".parse().unwrap();
        assert!(g.matches("docker.io/library/alpine", RepoKind::Mirror));
        assert!(!g.matches("team/a", RepoKind::Private));
    }

    #[test]
    fn bad_globs_are_refused() {
        assert!("".parse::<RepoGlob>().is_err());
        assert!("Team/A".parse::<RepoGlob>().is_err());
        assert!("a b".parse::<RepoGlob>().is_err());
    }
}
