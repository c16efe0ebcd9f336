//! Crash-safe file writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in
/// the same directory, fsync, rename over `path`, fsync the directory. A
/// crash leaves either the old file or the new one, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, tmp) = write_temp(path, bytes)?;
    let result = (|| {
        #[cfg(feature = "test-util")]
        hold_before_rename();
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Publishes `bytes` at `path` only if nothing is there yet, atomically and
/// with mode 0600: a complete temporary file, fsynced, then hard-linked to
/// `path` (`link(2)` fails if the name exists, unlike `rename(2)`). Returns
/// `false`, touching nothing, if `path` already existed: of several
/// processes racing, exactly one publishes and the others read its file.
pub(crate) fn publish_new(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let (dir, tmp) = write_temp(path, bytes)?;
    let result = match fs::hard_link(&tmp, path) {
        Ok(()) => File::open(dir).and_then(|d| d.sync_all()).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    };
    let _ = fs::remove_file(&tmp);
    result
}

/// Writes `bytes` to a fresh private temporary file beside `path`, fsynced;
/// returns the directory and the temporary file's path. Removes the
/// temporary file again if writing it fails.
fn write_temp<'p>(path: &'p Path, bytes: &[u8]) -> std::io::Result<(&'p Path, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut suffix = [0u8; 8];
    crate::rng::fill(&mut suffix).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        name.to_string_lossy(),
        u64::from_be_bytes(suffix)
    ));
    let written = create_private(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((dir, tmp))
}

/// Crash tests only (`test-util`): with `CARECONNECT_TEST_HOLD_BEFORE_RENAME=N`
/// and `CARECONNECT_TEST_HOLD_MARKER=PATH` set, the process's N-th atomic
/// write (from 1) creates PATH once its temporary file is written and then
/// waits for ever, never renaming: a test that sees PATH kills the process
/// exactly mid-write, decided by progress rather than by timing.
#[cfg(feature = "test-util")]
fn hold_before_rename() {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let at = std::env::var("CARECONNECT_TEST_HOLD_BEFORE_RENAME")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let marker = std::env::var_os("CARECONNECT_TEST_HOLD_MARKER");
    if let (Some(at), Some(marker)) = (at, marker)
        && n == at
    {
        let _ = fs::write(marker, b"held");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Removes temporary files that [`write_atomic`] left for `path` when its
/// process died mid-write. Call only while holding the lock that serialises
/// writers of `path`: then no such file can belong to a live writer.
pub(crate) fn remove_stale_temps(path: &Path) -> std::io::Result<usize> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Ok(0);
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Creates a new file readable and writable only by its owner.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
