//! `norn up`'s secret key and passwords: made once, kept in the state
//! directory (mode 0600), so sealed passwords stay readable across restarts.
//! Losing the key file loses the sealed values; back it up with the database.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use norn_shared::crypto::SecretKey;

pub fn load_or_create(state_dir: &Path) -> anyhow::Result<SecretKey> {
    let path = state_dir.join("secret.key");
    let made = make_once(&path, || SecretKey::generate().as_bytes().to_vec())?;
    if made {
        eprintln!(
            "norn: made a secret key in {} (back it up: it opens the stored passwords)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    SecretKey::parse(&text).with_context(|| format!("{} holds no valid key", path.display()))
}

/// A random password kept in `path` (mode 0600): made once, then reused.
pub fn password(path: &Path) -> anyhow::Result<String> {
    make_once(path, || norn_shared::crypto::random_password().into_bytes())?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// Writes `path` (mode 0600) unless it exists; true when this call made it.
///
/// The content goes to a private temporary file first, which is then linked
/// into place: a link never replaces, so when two processes race exactly one
/// wins, and nobody ever reads a file that is still being written (which a
/// plain `create_new` + write allows).
fn make_once(path: &Path, content: impl FnOnce() -> Vec<u8>) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // tempfile creates it 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(&content())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // The temporary file is removed when `tmp` drops, whatever happens here.
    match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::load_or_create(dir.path()).unwrap();
        let again = super::load_or_create(dir.path()).unwrap();
        assert_eq!(first.id(), again.id());
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn racing_processes_all_read_one_whole_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv").join("admin.password");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let seen: Vec<String> = (0..16)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    super::password(&path).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(!seen[0].is_empty());
        assert!(
            seen.iter().all(|p| p == &seen[0]),
            "the racers read different passwords: {seen:?}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the password is left: no temporary file.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
