//! Reading a body as `Bytes` chunks, whatever holds it: a stored object in
//! memory (slices of its shared buffers, no copy, or pieces of its memory
//! file), a disk file (checked against its checksum when read whole), or a
//! fill being written.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use xxhash_rust::xxh3::Xxh3;

use crate::cache::CacheError;
use crate::cache::fill::FillReader;
use crate::cache::object::{Body, StoredObject};
use crate::cache::pages::Pages;

/// Largest piece read from a disk file at once.
pub const DISK_READ_BYTES: usize = 64 * 1024;

/// Reads a body as `Bytes` chunks: from memory (no copy), from a file
/// (checked against its checksum when read whole: the last chunk is
/// withheld if it does not match), or from a fill being written.
pub struct BodyReader {
    source: Source,
    pos: u64,
    end: u64,
}

enum Source {
    Memory {
        object: Arc<StoredObject>,
        index: usize,
        chunk_start: u64,
    },
    /// A memory file (`cache::pages`), read in pieces like a disk file.
    Pages(Arc<Pages>),
    Disk {
        file: File,
        offset: u64,
        /// Running checksum, expected value, file to delete on mismatch
        /// (boxed: the checksum state is large).
        check: Option<Box<(Xxh3, u64, PathBuf)>>,
    },
    Fill(FillReader),
}

impl BodyReader {
    /// A reader of bytes `start..end` of `object`'s body.
    ///
    /// # Errors
    /// `CacheError::Io` when a disk body cannot be opened (deleted since).
    pub fn of_object(
        object: Arc<StoredObject>,
        start: u64,
        end: u64,
    ) -> Result<BodyReader, CacheError> {
        let end = end.min(object.head.body_len);
        let start = start.min(end);
        let source = match &object.body {
            Body::Disk(disk) => {
                let file = File::open(&disk.file.path)?;
                let whole = start == 0 && end == object.head.body_len;
                Source::Disk {
                    file,
                    offset: disk.offset,
                    check: whole
                        .then(|| Box::new((Xxh3::new(), disk.hash, disk.file.path.clone()))),
                }
            }
            Body::Pages(pages) => Source::Pages(Arc::clone(pages)),
            Body::Memory(_) => Source::Memory {
                object,
                index: 0,
                chunk_start: 0,
            },
        };
        Ok(BodyReader {
            source,
            pos: start,
            end,
        })
    }

    /// A reader following a fill in progress.
    pub fn from_fill(reader: FillReader) -> BodyReader {
        BodyReader {
            source: Source::Fill(reader),
            pos: 0,
            end: u64::MAX,
        }
    }

    /// The next piece of body, `None` at its end.
    ///
    /// # Errors
    /// `Io` for a read error, `Corrupt` for a disk body whose checksum does
    /// not match (the file is deleted), the fill's error for a fill that
    /// failed or stalled: the response must then be cut short.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, CacheError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        match &mut self.source {
            Source::Memory {
                object,
                index,
                chunk_start,
            } => {
                let Some(chunks) = object.memory_chunks() else {
                    return Ok(None);
                };
                while let Some(chunk) = chunks.get(*index) {
                    let chunk_end = *chunk_start + chunk.len() as u64;
                    if chunk_end <= self.pos {
                        *index += 1;
                        *chunk_start = chunk_end;
                        continue;
                    }
                    let from = (self.pos - *chunk_start) as usize;
                    let to = (self.end.min(chunk_end) - *chunk_start) as usize;
                    self.pos = *chunk_start + to as u64;
                    return Ok(Some(chunk.slice(from..to)));
                }
                Ok(None)
            }
            Source::Pages(pages) => {
                let piece = read_piece(pages.file(), 0, self.pos, self.end)?;
                self.pos += piece.len() as u64;
                Ok(Some(piece.freeze()))
            }
            Source::Disk {
                file,
                offset,
                check,
            } => {
                let buf = read_piece(file, *offset, self.pos, self.end)?;
                self.pos += buf.len() as u64;
                if let Some(check) = check {
                    let (hasher, expected, path) = &mut **check;
                    hasher.update(&buf);
                    if self.pos >= self.end && hasher.digest() != *expected {
                        let _ = std::fs::remove_file(&*path);
                        return Err(CacheError::Corrupt {
                            path: path.clone(),
                            reason: "body checksum mismatch",
                        });
                    }
                }
                Ok(Some(buf.freeze()))
            }
            Source::Fill(reader) => reader.next_chunk(),
        }
    }
}

/// Bytes `pos..end` of a body that starts at `offset` in `file`, at most
/// `DISK_READ_BYTES` of them.
fn read_piece(file: &File, offset: u64, pos: u64, end: u64) -> std::io::Result<BytesMut> {
    let want = (end - pos).min(DISK_READ_BYTES as u64) as usize;
    let mut buf = BytesMut::zeroed(want);
    file.read_exact_at(&mut buf, offset + pos)?;
    Ok(buf)
}
