//! The clean-close mark `<name>.clean`: proof that the file is byte for byte what redb left at
//! a clean close, so the next open may skip the full integrity check (the module doc of
//! [`super`] says why that is safe).
//!
//! # Format (text, one line, version 1)
//!
//! ```text
//! edge-clean v1 <dev> <ino> <size> <mtime s> <mtime ns> <ctime s> <ctime ns>
//! ```
//!
//! The numbers are the file's `stat` after the database was closed, in decimal. The mark is
//! written to `<name>.clean.tmp`, fsync'd, renamed into place and the directory fsync'd, so it
//! is either complete or absent. Only this process reads it; an unknown version or a line that
//! does not parse is no mark (the full check runs).
//!
//! # Why a match proves the file unchanged
//!
//! Any write to the file through the file system (redb's own, a stray one, a restore from a
//! backup, a copy over it) sets its ctime to the kernel's clock, and no system call sets ctime
//! to a chosen value; a replaced file has another inode. ctime has the granularity of the
//! kernel's coarse clock (a few milliseconds), so [`write()`] waits until [`SETTLE`] has passed
//! since the file's last change before it takes the `stat` it records: a write after the mark
//! then gets a later ctime. What a mark cannot see is damage below the file system (a medium
//! returning other bytes than were written); see the module doc of [`super`].

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{beside, file_error, SalvageError};

/// How long after the file's last change its `stat` is recorded: more than the kernel's
/// timestamp granularity (one jiffy: 10 ms at `HZ=100`).
pub const SETTLE: Duration = Duration::from_millis(50);

const TAG: &str = "edge-clean v1";

/// `<name>.clean` beside the database.
pub fn mark_path(path: &Path) -> PathBuf {
    beside(path, ".clean")
}

/// What the mark records of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat([i64; 7]);

impl Stat {
    fn of(meta: &std::fs::Metadata) -> Stat {
        Stat([
            meta.dev() as i64,
            meta.ino() as i64,
            meta.size() as i64,
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ])
    }

    fn line(&self) -> String {
        let mut line = TAG.to_owned();
        for n in self.0 {
            line.push_str(&format!(" {n}"));
        }
        line.push('\n');
        line
    }

    fn parse(text: &str) -> Option<Stat> {
        let rest = text.strip_suffix('\n')?.strip_prefix(TAG)?;
        let numbers: Vec<i64> = rest
            .strip_prefix(' ')?
            .split(' ')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        Some(Stat(numbers.try_into().ok()?))
    }

    /// The last change, as nanoseconds since the epoch.
    fn ctime_ns(&self) -> i128 {
        self.0[5] as i128 * 1_000_000_000 + self.0[6] as i128
    }
}

/// Records that the database at `path`, closed by its last handle, is as redb left it. Call
/// only after a clean close (no handle open, no error); waits up to [`SETTLE`].
pub fn write(path: &Path) -> Result<(), SalvageError> {
    let stat = Stat::of(&std::fs::metadata(path).map_err(file_error(path))?);
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let wait = stat.ctime_ns() + SETTLE.as_nanos() as i128 - now;
        if wait <= 0 {
            break;
        }
        std::thread::sleep(Duration::from_nanos(
            wait.min(SETTLE.as_nanos() as i128) as u64
        ));
    }
    // Unchanged while we waited: nothing else writes a closed database.
    let again = Stat::of(&std::fs::metadata(path).map_err(file_error(path))?);
    if again != stat {
        return Ok(());
    }
    let mark = mark_path(path);
    let tmp = beside(&mark, ".tmp");
    let mut file = std::fs::File::create(&tmp).map_err(file_error(&tmp))?;
    file.write_all(stat.line().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(file_error(&tmp))?;
    super::rename(&tmp, &mark)
}

/// Removes the mark (and a stray temporary one) and says whether it proved the file at `path`
/// unchanged since its clean close. Called before every open: a crash after the open leaves no
/// mark, so the next open checks.
pub fn take(path: &Path) -> Result<bool, SalvageError> {
    let mark = mark_path(path);
    let tmp = beside(&mark, ".tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(file_error(&tmp))?;
    }
    let text = match std::fs::read_to_string(&mark) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // Unreadable (not UTF-8, a permission): no proof; removed below.
        Err(_) => String::new(),
    };
    std::fs::remove_file(&mark).map_err(file_error(&mark))?;
    super::sync_dir(&mark)?;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    Ok(Stat::parse(&text) == Some(Stat::of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_line_reads_back_and_junk_is_no_mark() {
        let stat = Stat([
            2049,
            123456,
            4096,
            1_700_000_000,
            5,
            1_700_000_001,
            999_999_999,
        ]);
        assert_eq!(
            stat.line(),
            "edge-clean v1 2049 123456 4096 1700000000 5 1700000001 999999999\n"
        );
        assert_eq!(Stat::parse(&stat.line()), Some(stat));
        for junk in [
            "",
            "edge-clean v2 1 2 3 4 5 6 7\n",
            "edge-clean v1 1 2 3 4 5 6\n",
            "edge-clean v1 1 2 3 4 5 6 7 8\n",
            "edge-clean v1 1 2 3 4 5 6 x\n",
            "edge-clean v1 1 2 3 4 5 6 7",
            "edge-clean v1x 1 2 3 4 5 6 7\n",
        ] {
            assert_eq!(Stat::parse(junk), None, "{junk:?}");
        }
    }
}
