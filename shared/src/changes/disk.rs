//! A `migrations.dir` on disk: `<dir>/<YYYY-MM-DD-description>/{change/,
//! revert/, changelog.md}`. Everything is read, bounded and checked before
//! anything runs: a missing `.txt` reference, a file outside the folder or a
//! change with no SQL is an error naming the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Changes in one folder at most.
pub const MAX_CHANGES: usize = 10_000;
/// Files in one `change/` or `revert/` at most.
pub const MAX_FILES: usize = 500;
/// The longest name of a file in `change/` or `revert/`.
pub const MAX_FILE_NAME: usize = 200;
/// One SQL file at most.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Every file read for one run at most.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// A change opts out of the transaction with this line in any of its files
/// (for `CREATE INDEX CONCURRENTLY` and the like).
pub const NO_TRANSACTION: &str = "-- norn:no-transaction";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskError {
    #[error("{path}: {message}")]
    At { path: String, message: String },
    #[error("{0}")]
    Bound(String),
}

fn at(path: &str, message: impl Into<String>) -> DiskError {
    DiskError::At {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Which way a change runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Change,
    Revert,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Revert => "revert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Sql,
    Txt,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sql => "sql",
            Self::Txt => "txt",
        }
    }
}

/// One file of `change/` or `revert/`: its SQL (a `.txt` file's is that of
/// the files it lists, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeFile {
    /// Relative to the migrations folder, e.g. `2026-01-15-users/change/001.sql`.
    pub path: String,
    pub kind: FileKind,
    /// SHA-256 of the file's bytes; for a `.txt`, of its bytes and then the
    /// checksums of the files it lists, so editing one of those is drift too.
    pub checksum: String,
    pub sql: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The folder name.
    pub name: String,
    pub change: Vec<ChangeFile>,
    pub revert: Vec<ChangeFile>,
    pub has_changelog: bool,
}

impl Change {
    pub fn files(&self, direction: Direction) -> &[ChangeFile] {
        match direction {
            Direction::Change => &self.change,
            Direction::Revert => &self.revert,
        }
    }

    /// SHA-256 of the sorted checksums of the direction's files.
    pub fn checksum(&self, direction: Direction) -> String {
        let mut sums: Vec<&str> = self
            .files(direction)
            .iter()
            .map(|f| f.checksum.as_str())
            .collect();
        sums.sort_unstable();
        hex(&Sha256::digest(sums.concat().as_bytes()))
    }

    /// Whether the direction runs file by file, each on its own.
    pub fn no_transaction(&self, direction: Direction) -> bool {
        self.files(direction)
            .iter()
            .any(|f| f.sql.lines().any(|l| l.trim() == NO_TRANSACTION))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DD-description`: lower-case letters, digits, `-`, `_`, `.`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() > 11
        && name.len() <= 255
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && b[10] == b'-'
        && name[11..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c))
}

/// What is left of SQL without comments and blank space: empty means the
/// file holds no statement.
fn has_statements(sql: &str) -> bool {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return !rest.is_empty();
        }
    }
}

struct Reader {
    root: PathBuf,
    read: u64,
}

impl Reader {
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// The file's bytes, refused when it resolves outside the folder (a
    /// symlink or `..` must not feed a host file to the database) or when
    /// it is too large.
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, DiskError> {
        let shown = self.relative(path);
        let real = path
            .canonicalize()
            .map_err(|e| at(&shown, format!("cannot read: {e}")))?;
        if !real.starts_with(&self.root) {
            return Err(at(&shown, "resolves outside the migrations folder"));
        }
        let meta = std::fs::metadata(&real).map_err(|e| at(&shown, e.to_string()))?;
        if !meta.is_file() {
            return Err(at(&shown, "is not a file"));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(at(&shown, format!("is larger than {MAX_FILE_BYTES} bytes")));
        }
        self.read += meta.len();
        if self.read > MAX_TOTAL_BYTES {
            return Err(DiskError::Bound(format!(
                "the migrations folder holds more than {MAX_TOTAL_BYTES} bytes of SQL"
            )));
        }
        std::fs::read(&real).map_err(|e| at(&shown, e.to_string()))
    }

    fn text(&mut self, path: &Path) -> Result<String, DiskError> {
        let bytes = self.read(path)?;
        String::from_utf8(bytes).map_err(|_| at(&self.relative(path), "is not UTF-8 text"))
    }

    fn file(&mut self, path: &Path) -> Result<ChangeFile, DiskError> {
        let shown = self.relative(path);
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("sql") => FileKind::Sql,
            Some("txt") => FileKind::Txt,
            _ => {
                return Err(at(
                    &shown,
                    "only .sql and .txt files may be in change/ or revert/",
                ));
            }
        };
        let text = self.text(path)?;
        let own = hex(&Sha256::digest(text.as_bytes()));
        if kind == FileKind::Sql {
            return Ok(ChangeFile {
                path: shown,
                kind,
                checksum: own,
                sql: text,
            });
        }
        // A `.txt` lists SQL files by path relative to the migrations folder.
        let mut hasher = Sha256::new();
        hasher.update(own.as_bytes());
        let mut sql = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Refused before the file system is asked, so the error never
            // says whether a file outside the folder exists.
            let lexical = Path::new(line);
            if lexical.is_absolute()
                || lexical
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(at(
                    &shown,
                    format!(
                        "line {}: {line} resolves outside the migrations folder",
                        n + 1
                    ),
                ));
            }
            let listed = self.root.join(line);
            if listed.extension().and_then(|e| e.to_str()) != Some("sql") {
                return Err(at(
                    &shown,
                    format!("line {}: {line} is not a .sql file", n + 1),
                ));
            }
            if !listed.exists() {
                return Err(at(&shown, format!("line {}: {line} does not exist", n + 1)));
            }
            let body = self.text(&listed)?;
            hasher.update(hex(&Sha256::digest(body.as_bytes())).as_bytes());
            sql.push_str(&body);
            sql.push('\n');
        }
        Ok(ChangeFile {
            path: shown,
            kind,
            checksum: hex(&hasher.finalize()),
            sql,
        })
    }

    /// The files of `change/` or `revert/`, in file-name order.
    fn files(&mut self, dir: &Path) -> Result<Vec<ChangeFile>, DiskError> {
        // Absent is empty (a change without revert/); unreadable is an
        // error, never a change that silently has no files.
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(at(&self.relative(dir), format!("cannot be read: {e}"))),
        };
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| at(&self.relative(dir), format!("cannot be read: {e}")))?;
            if !hidden(&entry.path()) {
                paths.push(entry.path());
            }
        }
        if paths.len() > MAX_FILES {
            return Err(at(
                &self.relative(dir),
                format!("holds more than {MAX_FILES} files"),
            ));
        }
        paths.sort();
        // The tracking table's filepath holds 500 bytes: a 255-byte change
        // name, `/change/` and a name of at most 200.
        if let Some(long) = paths
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n.len() > MAX_FILE_NAME))
        {
            return Err(at(
                &self.relative(long),
                format!("a file name is at most {MAX_FILE_NAME} bytes"),
            ));
        }
        paths.iter().map(|p| self.file(p)).collect()
    }
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'))
}

fn underscored(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('_'))
}

/// Every change of the folder, in folder-name order, read and checked.
/// Folders whose name starts with `_` or `.` are not changes.
pub fn load(dir: &Path) -> Result<Vec<Change>, DiskError> {
    let root = dir.canonicalize().map_err(|e| {
        at(
            &dir.to_string_lossy(),
            format!("cannot read the migrations folder: {e}"),
        )
    })?;
    let mut reader = Reader { root, read: 0 };
    let entries =
        std::fs::read_dir(&reader.root).map_err(|e| at(&dir.to_string_lossy(), e.to_string()))?;
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        // `_shared/` and the like hold files that `.txt` lists name.
        .filter(|p| p.is_dir() && !hidden(p) && !underscored(p))
        .collect();
    if folders.len() > MAX_CHANGES {
        return Err(DiskError::Bound(format!(
            "the migrations folder holds more than {MAX_CHANGES} changes"
        )));
    }
    folders.sort();
    let mut changes = Vec::with_capacity(folders.len());
    for folder in folders {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !valid_name(&name) {
            return Err(at(
                &name,
                "a change folder is named YYYY-MM-DD-description (lower case, digits, - _ .)",
            ));
        }
        let change = reader.files(&folder.join("change"))?;
        if !change.iter().any(|f| has_statements(&f.sql)) {
            return Err(at(&name, "change/ holds no SQL statement"));
        }
        changes.push(Change {
            revert: reader.files(&folder.join("revert"))?,
            has_changelog: folder.join("changelog.md").is_file(),
            name,
            change,
        });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn names_are_dated_descriptions() {
        assert!(valid_name("2026-01-15-add-users"));
        assert!(valid_name("2026-01-15-v1.2_fix"));
        for bad in [
            "2026-01-15",
            "2026-1-15-x",
            "add-users",
            "2026-01-15-Add",
            "2026-01-15-a/b",
            "2026-01-15- x",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn comments_alone_are_no_statement() {
        assert!(!has_statements("  -- nothing\n/* still\nnothing */\n"));
        assert!(has_statements("-- a table\nCREATE TABLE t (id int);"));
        assert!(!has_statements("/* unterminated"));
    }

    #[test]
    fn bad_folders_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = &tmp.path().join("migrations");
        write(root, "2026-01-01-a/change/001.sql", "-- only a comment");
        let e = load(root).unwrap_err().to_string();
        assert!(
            e.contains("2026-01-01-a") && e.contains("no SQL statement"),
            "{e}"
        );
        write(root, "2026-01-01-a/change/001.sql", "SELECT 1;");
        write(root, "2026-01-01-a/change/002.txt", "_shared/missing.sql\n");
        let e = load(root).unwrap_err().to_string();
        assert!(
            e.contains("002.txt") && e.contains("line 1") && e.contains("does not exist"),
            "{e}"
        );
        write(root, "2026-01-01-a/change/002.txt", "../outside.sql\n");
        write(&root.join(".."), "outside.sql", "SELECT 1;");
        let e = load(root).unwrap_err().to_string();
        assert!(e.contains("outside the migrations folder"), "{e}");
        // A symlink inside the folder that points out of it.
        std::fs::create_dir_all(root.join("_shared")).unwrap();
        std::os::unix::fs::symlink(root.join("../outside.sql"), root.join("_shared/link.sql"))
            .unwrap();
        write(root, "2026-01-01-a/change/002.txt", "_shared/link.sql\n");
        let e = load(root).unwrap_err().to_string();
        assert!(
            e.contains("_shared/link.sql") && e.contains("outside the migrations folder"),
            "{e}"
        );
        std::fs::remove_file(root.join("2026-01-01-a/change/002.txt")).unwrap();
        write(root, "2026-01-01-a/change/003.psql", "SELECT 1;");
        let e = load(root).unwrap_err().to_string();
        assert!(e.contains("003.psql"), "{e}");
        std::fs::remove_file(root.join("2026-01-01-a/change/003.psql")).unwrap();
        write(root, "Add-Users/change/001.sql", "SELECT 1;");
        let e = load(root).unwrap_err().to_string();
        assert!(e.contains("Add-Users") && e.contains("YYYY-MM-DD"), "{e}");
        std::fs::remove_dir_all(root.join("Add-Users")).unwrap();
        // A revert/ that cannot be listed is an error, not "no revert".
        std::fs::write(root.join("2026-01-01-a/revert"), "not a folder").unwrap();
        let e = load(root).unwrap_err().to_string();
        assert!(
            e.contains("2026-01-01-a/revert") && e.contains("cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn changes_load_in_order_with_txt_lists_and_checksums() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "2026-01-02-b/change/001.sql",
            "CREATE TABLE b (id int);",
        );
        write(
            root,
            "2026-01-01-a/change/002.txt",
            "# shared\n_shared/x.sql\n",
        );
        write(
            root,
            "2026-01-01-a/change/001.sql",
            "CREATE TABLE a (id int);",
        );
        write(root, "2026-01-01-a/revert/001.sql", "DROP TABLE a;");
        write(root, "2026-01-01-a/changelog.md", "adds a");
        write(root, "_shared/x.sql", "CREATE TABLE x (id int);");
        let changes = load(root).unwrap();
        let names: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["2026-01-01-a", "2026-01-02-b"]);
        let a = &changes[0];
        assert_eq!(a.change.len(), 2);
        assert_eq!(a.change[1].kind, FileKind::Txt);
        assert!(a.change[1].sql.contains("CREATE TABLE x"));
        assert!(a.has_changelog);
        let before = a.checksum(Direction::Change);
        // Editing a listed file changes the .txt's checksum, so the change's.
        write(root, "_shared/x.sql", "CREATE TABLE x (id bigint);");
        let after = load(root).unwrap()[0].checksum(Direction::Change);
        assert_ne!(before, after);
    }
}
