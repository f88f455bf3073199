//! Large buffers for moving body bytes, lent while the bytes move and given
//! back after. Reading and writing a body in 64 KiB pieces takes a quarter
//! of the system calls that 16 KiB pieces take, but a buffer that large for
//! every origin connection and every worker would be 64 MiB each at a
//! thousand of them. Lent, the memory follows the bodies in flight: a
//! worker waiting for an origin's answer to begin, or a connection idle in
//! the pool, holds none; one relaying a long body holds up to two until the
//! body is done, through any waits on a slow origin.

use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;

use crossbeam_channel::{Receiver, Sender};

/// The size of a lent buffer: what one read or one write moves at most.
pub const LENT_BYTES: usize = 64 * 1024;

/// Buffers kept for the next borrower (8 MiB). When all are out a new one
/// is allocated; one given back to a full stash is freed.
const KEPT: usize = 128;

/// The buffers given back and not yet lent again.
#[derive(Debug)]
struct Stash {
    give: Sender<Box<[u8]>>,
    take: Receiver<Box<[u8]>>,
}

static STASH: LazyLock<Stash> = LazyLock::new(|| Stash::new(KEPT));

impl Stash {
    fn new(kept: usize) -> Stash {
        let (give, take) = crossbeam_channel::bounded(kept);
        Stash { give, take }
    }

    /// A kept buffer, or a new one when none is left.
    fn lend(&'static self) -> LentBuffer {
        let buf = self
            .take
            .try_recv()
            .unwrap_or_else(|_| vec![0; LENT_BYTES].into_boxed_slice());
        LentBuffer { buf, stash: self }
    }
}

/// A buffer of [`LENT_BYTES`], given back when dropped.
#[derive(Debug)]
pub struct LentBuffer {
    buf: Box<[u8]>,
    stash: &'static Stash,
}

impl LentBuffer {
    /// A buffer from the process's stash.
    pub fn lend() -> LentBuffer {
        STASH.lend()
    }
}

impl Drop for LentBuffer {
    fn drop(&mut self) {
        let _ = self.stash.give.try_send(std::mem::take(&mut self.buf));
    }
}

impl Deref for LentBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for LentBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stash(kept: usize) -> &'static Stash {
        Box::leak(Box::new(Stash::new(kept)))
    }

    #[test]
    fn a_buffer_given_back_is_lent_again() {
        let stash = stash(2);
        let mut first = stash.lend();
        assert_eq!(first.len(), LENT_BYTES);
        first[0] = 7;
        let address = first.as_ptr();
        drop(first);
        let again = stash.lend();
        assert_eq!((again.as_ptr(), again[0]), (address, 7));
    }

    #[test]
    fn only_so_many_are_kept() {
        let stash = stash(2);
        let out: Vec<LentBuffer> = (0..5).map(|_| stash.lend()).collect();
        assert_eq!(stash.take.len(), 0);
        drop(out);
        assert_eq!(stash.take.len(), 2, "the other three were freed");
        assert_eq!(LentBuffer::lend().len(), LENT_BYTES);
    }
}
