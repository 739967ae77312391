//! The version floor: per bundle name, the highest version number this device has run. A
//! bundle below it is refused, so a signed but older (vulnerable or buggy) model can never be
//! installed again — the downgrade Mender and RAUC allow. Persisted as JSON, written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The floor file could not be read or written; no floor is guessed.
#[derive(Debug, thiserror::Error)]
#[error("version floor {}: {reason}", path.display())]
pub struct FloorError {
    path: PathBuf,
    reason: String,
}

/// The version floors of this device, in `<data_dir>/bundles/floor.json`. Read on every call
/// (no cache); a missing file means no floor yet.
#[derive(Debug)]
pub struct FloorStore {
    path: PathBuf,
}

impl FloorStore {
    /// The store in `dir` (the bundle state directory); nothing is read until asked.
    pub fn new(dir: &Path) -> Self {
        FloorStore {
            path: dir.join("floor.json"),
        }
    }

    /// The directory of the bundle state (`<data_dir>/bundles`).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn error(&self, reason: String) -> FloorError {
        FloorError {
            path: self.path.clone(),
            reason,
        }
    }

    fn read(&self) -> Result<BTreeMap<String, u64>, FloorError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                self.error(format!(
                    "is corrupt ({e}); refusing to guess a floor: fix or delete it"
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.error(format!("cannot be read: {e}"))),
        }
    }

    /// The floor for `name` (0 if it never ran).
    pub fn floor(&self, name: &str) -> Result<u64, FloorError> {
        Ok(self.read()?.get(name).copied().unwrap_or(0))
    }

    /// Raises the floor for `name` to `version` (never lowers it).
    pub fn raise(&self, name: &str, version: u64) -> Result<(), FloorError> {
        let mut m = self.read()?;
        let e = m.entry(name.to_string()).or_insert(0);
        if *e >= version {
            return Ok(());
        }
        *e = version;
        self.write(&m)
    }

    /// Sets the floor for `name` back to `version`. Only for the agent's own rollback to the
    /// exact bundle file it ran before the failed update (`sync/update.rs`): the floor keeps
    /// refusing every other older bundle.
    pub fn restore(&self, name: &str, version: u64) -> Result<(), FloorError> {
        let mut m = self.read()?;
        m.insert(name.to_string(), version);
        self.write(&m)
    }

    fn write(&self, m: &BTreeMap<String, u64>) -> Result<(), FloorError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| self.error(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(m).map_err(|e| self.error(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| self.error(format!("cannot be written: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_only_rise_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("floor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = FloorStore::new(&dir);
        assert_eq!(f.floor("m").unwrap(), 0);
        f.raise("m", 5).unwrap();
        f.raise("m", 3).unwrap();
        assert_eq!(FloorStore::new(&dir).floor("m").unwrap(), 5);
        std::fs::write(dir.join("floor.json"), "{broken").unwrap();
        assert!(f.floor("m").unwrap_err().to_string().contains("corrupt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
