//! One problem with the configuration, and where it was given: a line of
//! the config file, a flag, or a default that another setting contradicts.

use std::fmt;
use std::path::PathBuf;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the config file (counted from 1).
    File { path: PathBuf, line: usize },
    /// A command-line flag, such as `--workers`.
    Flag(String),
    /// Neither: the default.
    Default,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem was given.
    pub origin: Origin,
    /// The key it concerns; `None` when it concerns the file's syntax or a
    /// key that does not exist (the reason names it).
    pub key: Option<String>,
    /// The value as written, when it fits on a line and is no secret.
    pub value: Option<String>,
    /// What is wrong or what was expected.
    pub reason: String,
}

impl fmt::Display for Problem {
    /// `fetchproxy.toml:3: workers = 0: expected ...`, `--workers 0: expected ...`,
    /// or `max_tunnels = 1000 (the default): must be ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line } => {
                write!(f, "{}:{line}: ", path.display())?;
                match (&self.key, &self.value) {
                    (Some(key), Some(value)) => write!(f, "{key} = {value}: ")?,
                    (Some(key), None) => write!(f, "{key}: ")?,
                    (None, _) => {}
                }
            }
            Origin::Flag(flag) => match &self.value {
                Some(value) => write!(f, "{flag} {value}: ")?,
                None => write!(f, "{flag}: ")?,
            },
            Origin::Default => match (&self.key, &self.value) {
                (Some(key), Some(value)) => write!(f, "{key} = {value} (the default): ")?,
                (Some(key), None) => write!(f, "{key} (the default): ")?,
                (None, _) => {}
            },
        }
        f.write_str(&self.reason)
    }
}

/// The problems one to a line; with several, a count first.
pub(super) fn list(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut text = format!("{} problems in the configuration:", many.len());
            for problem in many {
                text.push_str("\n  ");
                text.push_str(&problem.to_string());
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(origin: Origin, key: Option<&str>, value: Option<&str>) -> Problem {
        Problem {
            origin,
            key: key.map(str::to_string),
            value: value.map(str::to_string),
            reason: "expected a whole number from 1 to 4096".to_string(),
        }
    }

    #[test]
    fn each_origin_reads_as_where_to_look() {
        let file = Origin::File {
            path: "fetchproxy.toml".into(),
            line: 3,
        };
        assert_eq!(
            problem(file.clone(), Some("workers"), Some("0")).to_string(),
            "fetchproxy.toml:3: workers = 0: expected a whole number from 1 to 4096"
        );
        assert_eq!(
            problem(file, Some("users"), None).to_string(),
            "fetchproxy.toml:3: users: expected a whole number from 1 to 4096"
        );
        assert_eq!(
            problem(Origin::Flag("--workers".into()), Some("workers"), Some("0")).to_string(),
            "--workers 0: expected a whole number from 1 to 4096"
        );
        assert_eq!(
            problem(Origin::Default, Some("max_tunnels"), Some("1000")).to_string(),
            "max_tunnels = 1000 (the default): expected a whole number from 1 to 4096"
        );
    }

    #[test]
    fn several_problems_are_counted_and_listed_one_a_line() {
        let one = problem(Origin::Flag("--queue".into()), Some("queue"), Some("0"));
        assert_eq!(list(std::slice::from_ref(&one)), one.to_string());
        let text = list(&[one.clone(), one]);
        assert!(
            text.starts_with("2 problems in the configuration:\n  --queue 0: "),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3);
    }
}
