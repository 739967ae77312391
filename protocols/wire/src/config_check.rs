//! Semantic config validation shared by every config struct: a [`KeyPath`] naming the key
//! (`sources.modbus[0].tags[3].address`) and the [`ConfigIssue`]s collected against it.
//! The agent turns a key path into a file line; this module only names keys.

use std::fmt;

/// One segment of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Path of a key inside the TOML document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The empty path: the top of the file.
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    /// This path extended by a key.
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.0.clone();
        p.push(Seg::Key(k.to_string()));
        KeyPath(p)
    }
    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.0.clone();
        p.push(Seg::Index(i));
        KeyPath(p)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A config problem: which key, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key.
    pub path: KeyPath,
    /// What is wrong, and how to fix it.
    pub message: String,
}

/// Collects issues while walking a config.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    /// Records `message` at `path`.
    pub fn push(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path,
            message: message.into(),
        });
    }
    /// Records `message` at `path` unless `ok`.
    pub fn check(&mut self, ok: bool, path: KeyPath, message: impl FnOnce() -> String) {
        if !ok {
            self.push(path, message());
        }
    }
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_toml_keys() {
        let p = KeyPath::root()
            .key("sources")
            .key("modbus")
            .index(0)
            .key("tags")
            .index(3)
            .key("address");
        assert_eq!(p.to_string(), "sources.modbus[0].tags[3].address");
    }
}
