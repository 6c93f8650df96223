//! Measures `crm dedup` without the binary:
//! `cargo run --release -p matching --example dedup -- FILE.csv --truth FILE_truth.csv`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: matching::cli::DedupArgs,
}

fn main() -> std::process::ExitCode {
    match matching::cli::run(&Cli::parse().args) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
