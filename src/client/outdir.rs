//! The out-dir before a batch starts: created when missing, then checked
//! to be a directory this process can write in, so that a problem is
//! reported as the out-dir's (a file in the way, no permission) and not as
//! that of the first file written there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::client::save::Scratch;

/// Why the out-dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("--out-dir {}: is a file, not a directory", .dir.display())]
    IsFile { dir: PathBuf },
    #[error("--out-dir {}: {} is a file, not a directory", .dir.display(), .file.display())]
    UnderFile { dir: PathBuf, file: PathBuf },
    #[error("--out-dir {}: cannot create it: {source}", .dir.display())]
    Create { dir: PathBuf, source: io::Error },
    #[error("--out-dir {}: cannot write in it: {source}", .dir.display())]
    NotWritable { dir: PathBuf, source: io::Error },
}

/// Checks, without making anything, that no file stands where `dir` or
/// one of its ancestors would be.
///
/// # Errors
/// An `OutDirError` that names `dir` and the file in the way.
pub fn check(dir: &Path) -> Result<(), OutDirError> {
    match file_in_the_way(dir) {
        None => Ok(()),
        Some(file) if file == dir => Err(OutDirError::IsFile {
            dir: dir.to_path_buf(),
        }),
        Some(file) => Err(OutDirError::UnderFile {
            dir: dir.to_path_buf(),
            file,
        }),
    }
}

/// Creates `dir` if needed and checks that a file can be made in it.
///
/// # Errors
/// An `OutDirError` that names `dir` (and the file in the way, if any).
pub fn prepare(dir: &Path) -> Result<(), OutDirError> {
    check(dir)?;
    fs::create_dir_all(dir).map_err(|source| OutDirError::Create {
        dir: dir.to_path_buf(),
        source,
    })?;
    // A temporary file as the downloads make them, removed when dropped.
    Scratch::new(dir)
        .create()
        .map(drop)
        .map_err(|source| OutDirError::NotWritable {
            dir: dir.to_path_buf(),
            source,
        })
}

/// `dir` itself or its nearest existing ancestor, when that is not a directory.
fn file_in_the_way(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| fs::metadata(p).ok().map(|m| (p, m)))
        .filter(|(_, meta)| !meta.is_dir())
        .map(|(p, _)| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_dir_is_created_and_left_empty() {
        let base = tempfile::tempdir().expect("temp dir");
        let dir = base.path().join("a/b");
        prepare(&dir).expect("created");
        assert!(dir.is_dir());
        assert_eq!(
            fs::read_dir(&dir).expect("list").count(),
            0,
            "probe removed"
        );
    }

    #[test]
    fn a_file_in_the_way_is_named() {
        let base = tempfile::tempdir().expect("temp dir");
        let file = base.path().join("urls.txt");
        fs::write(&file, "http://a.example/\n").expect("write");
        let err = prepare(&file).expect_err("a file");
        assert_eq!(
            err.to_string(),
            format!("--out-dir {}: is a file, not a directory", file.display())
        );
        let under = file.join("pages");
        let err = prepare(&under).expect_err("under a file");
        assert_eq!(
            err.to_string(),
            format!(
                "--out-dir {}: {} is a file, not a directory",
                under.display(),
                file.display()
            )
        );
    }
}
