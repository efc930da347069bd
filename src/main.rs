//! `phalanx`: run demo nodes and observe, call and benchmark a mesh from the shell.
//!
//! Every command joins the mesh as a node of its own (through `--seed` addresses or, on the same
//! host, the user's shared secret file), does its work and leaves.
#![allow(clippy::print_stdout)]

mod cli;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args).await {
        Ok(code) => code,
        Err(err) => {
            let body = serde_json::to_string_pretty(err.body()).unwrap_or_else(|_| err.to_string());
            println!("{body}");
            ExitCode::FAILURE
        }
    }
}
