//! The `imagegate` binary's subcommands, one module each: `main.rs` parses the command line and
//! calls them. Library code lives in the `imagegate` crate; these add printing, exit codes and
//! the context (`anyhow`) an operator reads.

pub mod config;
pub mod daemon;
pub mod inspect;
pub mod kernel;
pub mod offline_verify;

use anyhow::Result;

/// How a verification result is printed.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// Exit 0/1 as the verification decided; 2 when it could not be checked at all.
pub fn exit_with(result: Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("imagegate: {error:#}");
            std::process::exit(2);
        }
    }
}
