//! Writes a synthetic customer CSV and its truth pairs:
//! `cargo run --release -p matching --example generate -- 1000000 0.2 42 customers.csv customers_truth.csv`.

use std::fs::File;
use std::io::BufWriter;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, dup_rate, seed, out, truth] = args.as_slice() else {
        eprintln!("usage: generate N DUP_RATE SEED OUT.csv TRUTH.csv");
        return std::process::ExitCode::FAILURE;
    };
    let (Ok(n), Ok(dup_rate), Ok(seed)) = (n.parse(), dup_rate.parse(), seed.parse()) else {
        eprintln!("N and SEED must be integers, DUP_RATE a number in [0, 1)");
        return std::process::ExitCode::FAILURE;
    };
    let (out, truth) = match (File::create(out), File::create(truth)) {
        (Ok(o), Ok(t)) => (BufWriter::new(o), BufWriter::new(t)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot create output: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match matching::generate_with_truth(n, dup_rate, seed, out, truth) {
        Ok(summary) => {
            println!("{summary:?}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
