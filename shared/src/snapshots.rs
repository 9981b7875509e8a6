//! Snapshot files: `<db>_<sha12>_<YYYYMMDDTHHMMSS>.dump` in
//! `NORN_SNAPSHOTS_DIR`. Names are parsed from the right, so database names
//! may hold `_`. Only complete dumps carry this name (`.partial` until then).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFile {
    /// `YYYYMMDDTHHMMSS` (UTC): what the API and CLI call a snapshot by.
    pub timestamp: String,
    pub database: String,
    pub commit: String,
    pub file: String,
    pub size_bytes: u64,
}

/// `(database, commit, timestamp)` of a snapshot file name.
pub fn parse(file_name: &str) -> Option<(&str, &str, &str)> {
    let stem = file_name.strip_suffix(".dump")?;
    let mut parts = stem.rsplitn(3, '_');
    let ts = parts.next()?;
    let commit = parts.next()?;
    let db = parts.next()?;
    let ts_ok = ts.len() == 15
        && ts.as_bytes()[8] == b'T'
        && ts
            .chars()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit());
    (ts_ok && !db.is_empty() && !commit.is_empty()).then_some((db, commit, ts))
}

/// Snapshots of `database`, newest first. A missing directory is no snapshots.
pub fn list(dir: &Path, database: &str) -> std::io::Result<Vec<SnapshotFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((db, commit, ts)) = parse(&name)
            && db == database
        {
            out.push(SnapshotFile {
                timestamp: ts.to_owned(),
                database: db.to_owned(),
                commit: commit.to_owned(),
                size_bytes: entry.metadata().map(|m| m.len()).unwrap_or(0),
                file: name.clone(),
            });
        }
    }
    out.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.file.cmp(&a.file)));
    Ok(out)
}

/// The snapshot of `database` taken at `timestamp`, if there is one.
pub fn find(dir: &Path, database: &str, timestamp: &str) -> std::io::Result<Option<PathBuf>> {
    Ok(list(dir, database)?
        .into_iter()
        .find(|s| s.timestamp == timestamp)
        .map(|s| dir.join(s.file)))
}

/// Deletes all but the newest `keep` snapshots of `database`; returns the
/// names deleted.
pub fn retain(dir: &Path, database: &str, keep: usize) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for old in list(dir, database)?.into_iter().skip(keep) {
        std::fs::remove_file(dir.join(&old.file))?;
        removed.push(old.file);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn names_parse_from_the_right() {
        assert_eq!(
            parse("my_app_db_0123456789ab_20261122T101500.dump"),
            Some(("my_app_db", "0123456789ab", "20261122T101500"))
        );
        assert_eq!(parse("db_sha_20261122T101500.dump.partial"), None);
        assert_eq!(parse("db_sha_2026-11-22.dump"), None);
        assert_eq!(parse("nodb.dump"), None);
    }
}
