//! What the node writes is readable by its own user only.
//!
//! The data dir holds the journal and sled (argon2 hashes, sealed cards, token hashes), the simulator's ledger,
//! and possibly `master.key` and `admin-token`. [`restrict_new_files`] sets the process's file creation mask to
//! `077`, so that every directory the process creates is `0700` and every file `0600`, whichever library creates
//! it (sled, the segment log, tempfiles). A data dir made by hand or by an older version may be wider:
//! [`report_wide_permissions`] names what in it others can read, at start, without changing it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Entries of a data dir looked at, at most, when checking its permissions at start.
pub const PERMISSION_CHECK_ENTRIES_MAX: usize = 100_000;
/// Paths named in the warning at most.
const NAMED_MAX: usize = 5;

/// Makes every file and directory this process creates from now on private to its user (umask `077`).
pub fn restrict_new_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// What under `dir` (itself included) the group or others may access: the paths, up to
/// [`PERMISSION_CHECK_ENTRIES_MAX`] entries looked at.
pub fn wide_permissions(dir: &Path) -> Vec<PathBuf> {
    let mut wide = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        seen += 1;
        if seen > PERMISSION_CHECK_ENTRIES_MAX {
            break;
        }
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.file_type().is_symlink() {
            continue;
        }
        if metadata.permissions().mode() & 0o077 != 0 {
            wide.push(path.clone());
        }
        if metadata.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.filter_map(|entry| entry.ok().map(|entry| entry.path())));
        }
    }
    wide
}

/// Logs a warning when the group or others may access anything in the data dir `dir`.
pub fn report_wide_permissions(dir: &Path) {
    let wide = wide_permissions(dir);
    if wide.is_empty() {
        return;
    }
    let named: Vec<String> = wide
        .iter()
        .take(NAMED_MAX)
        .map(|path| path.display().to_string())
        .collect();
    tracing::warn!(
        data_dir = %dir.display(),
        count = wide.len(),
        examples = ?named,
        "the data dir holds password hashes and sealed cards, but its group or others may read some of it: \
         run `chmod -R go-rwx` on it"
    );
}
