//! `fetchproxy fetch`: input → batch → save + manifest + progress → summary.

use crate::cli::FetchArgs;

/// Runs a batch; returns the exit code (0 all fetched or skipped, 1 some
/// URL failed, 2 usage error).
pub fn run(args: FetchArgs) -> u8 {
    let _ = args;
    todo!()
}
