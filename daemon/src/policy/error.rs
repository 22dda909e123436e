//! Policy errors name the file, the line and column, and the field, so a user can fix a policy
//! without guessing; the daemon refuses to start on any of them.

use std::path::PathBuf;

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Syntax or meaning error at a place in the file.
    #[error("{}:{line}:{column}: {field}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    /// The policy file itself cannot be read.
    #[error("{}: cannot read policy: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// 1-based (line, column) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
