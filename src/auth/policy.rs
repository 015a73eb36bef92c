//! Who may do what to which repository: actions, scopes and the ordered policy list from the config.

use std::fmt;

use super::glob::{GlobError, RepoGlob, RepoKind};

/// The three things a caller may do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pull" => Ok(Action::Pull),
            "push" => Ok(Action::Push),
            "delete" => Ok(Action::Delete),
            other => Err(format!(
                "unknown action {other:?} (expected pull, push or delete)"
            )),
        }
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);
    pub const PULL: Actions = Actions(1);

    pub fn has(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a.bit())
    }
    pub fn and(self, o: Actions) -> Actions {
        Actions(self.0 & o.0)
    }
    pub fn or(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.has(*a))
    }

    /// `pull,push` or `*` for all three.
    pub fn parse_list(s: &str) -> Result<Actions, String> {
        if s.trim() == "*" {
            return Ok(Actions::ALL);
        }
        s.split(',')
            .map(|a| a.trim().parse::<Action>())
            .try_fold(Actions::NONE, |acc, a| Ok(acc.with(a?)))
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<&str> = self.iter().map(Action::as_str).collect();
        f.write_str(&v.join(","))
    }
}

/// `GLOB:ACTIONS`, a personal access token's scope (e.g. `team/*:pull,push`, `mirrors:pull`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub glob: RepoGlob,
    pub actions: Actions,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (g, a) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("scope {s:?}: expected GLOB:ACTIONS, e.g. team/*:pull,push"))?;
        Ok(Scope {
            glob: g.parse().map_err(|e: GlobError| e.to_string())?,
            actions: Actions::parse_list(a).map_err(|e| format!("scope {s:?}: {e}"))?,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.glob, self.actions)
    }
}

/// What the scopes of a token allow on one repository (union over matching scopes).
pub fn scopes_allow(scopes: &[Scope], name: &str, kind: RepoKind) -> Actions {
    scopes
        .iter()
        .filter(|s| s.glob.matches(name, kind))
        .fold(Actions::NONE, |acc, s| acc.or(s.actions))
}

/// Who a policy line grants an action to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// `@all`: everyone, anonymous callers included.
    All,
    /// `@users`: any signed-in user.
    Users,
    User(String),
}

impl Grantee {
    pub fn parse(s: &str) -> Result<Grantee, String> {
        match s {
            "@all" => Ok(Grantee::All),
            "@users" => Ok(Grantee::Users),
            s if super::valid_user_name(s) => Ok(Grantee::User(s.to_owned())),
            s => Err(format!("{s:?} is neither @all, @users nor a user name")),
        }
    }

    fn includes(&self, user: Option<&str>) -> bool {
        match self {
            Grantee::All => true,
            Grantee::Users => user.is_some(),
            Grantee::User(n) => user == Some(n.as_str()),
        }
    }
}

/// One compiled `[[auth.policy]]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    pub repositories: Vec<RepoGlob>,
    pub pull: Vec<Grantee>,
    pub push: Vec<Grantee>,
    pub delete: Vec<Grantee>,
    pub immutable_tags: bool,
}

/// The ordered rules: the first rule whose globs match a repository decides everything about it; no matching
/// rule means only admins have access.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

impl Policy {
    fn rule(&self, name: &str, kind: RepoKind) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.repositories.iter().any(|g| g.matches(name, kind)))
    }

    /// What `user` (`None`: anonymous) may do to a repository under the policy alone. Admins may do everything;
    /// mirrored repositories are read-only whatever a rule says.
    pub fn rights(&self, user: Option<&str>, admin: bool, name: &str, kind: RepoKind) -> Actions {
        let all = if admin {
            Actions::ALL
        } else {
            match self.rule(name, kind) {
                None => Actions::NONE,
                Some(r) => [
                    (Action::Pull, &r.pull),
                    (Action::Push, &r.push),
                    (Action::Delete, &r.delete),
                ]
                .into_iter()
                .filter(|(_, who)| who.iter().any(|g| g.includes(user)))
                .fold(Actions::NONE, |acc, (a, _)| acc.with(a)),
            }
        };
        match kind {
            RepoKind::Private => all,
            RepoKind::Mirror => all.and(Actions::PULL),
        }
    }

    /// Whether `user` may pull every private repository there is or will be: each rule that can match a private
    /// repository grants it pull, up to a rule covering `**`. Decides mounts "from anywhere", which could otherwise
    /// reveal blobs of repositories the caller cannot read.
    pub fn pulls_everything(&self, user: Option<&str>, admin: bool) -> bool {
        if admin {
            return true;
        }
        for r in &self.rules {
            let private = r.repositories.iter().any(|g| *g != RepoGlob::Mirrors);
            if !private {
                continue;
            }
            if !r.pull.iter().any(|g| g.includes(user)) {
                return false;
            }
            if r.repositories.contains(&RepoGlob::Pattern("**".into())) {
                return true;
            }
        }
        false
    }

    /// Whether tags of a private repository may never move once set.
    pub fn immutable_tags(&self, name: &str) -> bool {
        self.rule(name, RepoKind::Private)
            .is_some_and(|r| r.immutable_tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(globs: &[&str], pull: &[&str], push: &[&str]) -> Rule {
        Rule {
            repositories: globs.iter().map(|g| g.parse().unwrap()).collect(),
            pull: pull.iter().map(|g| Grantee::parse(g).unwrap()).collect(),
            push: push.iter().map(|g| Grantee::parse(g).unwrap()).collect(),
            delete: vec![],
            immutable_tags: false,
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = Policy {
            rules: vec![
                rule(&["team/secret"], &["alice"], &[]),
                rule(&["team/*"], &["@users"], &["ci"]),
            ],
        };
        let r = |u: Option<&str>, n: &str| p.rights(u, false, n, RepoKind::Private);
        assert_eq!(r(Some("bob"), "team/secret"), Actions::NONE);
        assert_eq!(r(Some("alice"), "team/secret"), Actions::PULL);
        assert_eq!(r(Some("bob"), "team/app"), Actions::PULL);
        assert!(r(Some("ci"), "team/app").has(Action::Push));
        assert_eq!(r(None, "team/app"), Actions::NONE);
        assert_eq!(r(Some("bob"), "other"), Actions::NONE);
        assert_eq!(
            p.rights(Some("root"), true, "other", RepoKind::Private),
            Actions::ALL
        );
    }

    #[test]
    fn pulls_everything_needs_pull_in_every_rule_up_to_double_star() {
        let open = Policy {
            rules: vec![
                rule(&["mirrors"], &["@all"], &[]),
                rule(&["**"], &["@all"], &[]),
            ],
        };
        assert!(open.pulls_everything(None, false));
        let users = Policy {
            rules: vec![
                rule(&["team/*"], &["@users"], &[]),
                rule(&["**"], &["@users"], &[]),
            ],
        };
        assert!(users.pulls_everything(Some("a"), false));
        assert!(!users.pulls_everything(None, false));
        let narrow = Policy {
            rules: vec![
                rule(&["secret/*"], &["alice"], &[]),
                rule(&["**"], &["@users"], &[]),
            ],
        };
        assert!(!narrow.pulls_everything(Some("bob"), false));
        assert!(narrow.pulls_everything(Some("bob"), true));
        let no_catch_all = Policy {
            rules: vec![rule(&["team/*"], &["@users"], &[])],
        };
        assert!(!no_catch_all.pulls_everything(Some("bob"), false));
    }

    #[test]
    fn mirrors_are_read_only_even_for_admins() {
        let p = Policy {
            rules: vec![rule(&["**"], &["@all"], &["@all"])],
        };
        assert_eq!(
            p.rights(
                Some("root"),
                true,
                "docker.io/library/alpine",
                RepoKind::Mirror
            ),
            Actions::PULL
        );
        assert_eq!(
            p.rights(None, false, "docker.io/library/alpine", RepoKind::Mirror),
            Actions::PULL
        );
    }

    #[test]
    fn scopes_parse_and_intersect() {
        let s: Scope = "team/*:pull,push".parse().unwrap();
        assert_eq!(s.to_string(), "team/*:pull,push");
        let scopes = vec![s, "mirrors:pull".parse().unwrap()];
        assert_eq!(
            scopes_allow(&scopes, "team/a", RepoKind::Private),
            Actions::PULL.with(Action::Push)
        );
        assert_eq!(
            scopes_allow(&scopes, "team/a/b", RepoKind::Private),
            Actions::NONE
        );
        assert_eq!(
            scopes_allow(&scopes, "docker.io/x/y", RepoKind::Mirror),
            Actions::PULL
        );
        assert!("team".parse::<Scope>().is_err());
        assert!("team:fly".parse::<Scope>().is_err());
        assert_eq!("a:*".parse::<Scope>().unwrap().actions, Actions::ALL);
    }
}
