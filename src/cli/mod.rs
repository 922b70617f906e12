//! The `iocane` command line: argument definitions and the commands behind them.
//!
//! Exit codes (see `iocane --help`): 0 success (for `certify`: gate passed), 1 gate failed,
//! 2 usage or input error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub mod certify;
pub mod demo;
pub mod export;
pub mod import;
pub mod inspect;
pub mod train;

/// Exit code: success, or the release gate passed.
pub const EXIT_OK: u8 = 0;
/// Exit code: the release gate failed (accuracy below the threshold).
pub const EXIT_GATE_FAILED: u8 = 1;
/// Exit code: usage or input error (bad flags, missing or corrupted files).
pub const EXIT_ERROR: u8 = 2;

/// iocane: adversarially robust int8 classifiers for microcontrollers.
#[derive(Debug, Parser)]
#[command(
    name = "iocane",
    version,
    about,
    after_help = "Exit codes: 0 success / gate passed, 1 release gate failed, 2 usage or input error."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the layers, shapes, sizes, metadata and SHA-256 of a model blob (.icn).
    Inspect {
        /// The model blob.
        file: PathBuf,
    },
    /// Train a classifier (natural, FGSM or PGD adversarial training) and save a float checkpoint.
    Train(train::TrainArgs),
    /// Quantize a trained run to int8 and write model.icn, model.rs, model.h (and model.onnx).
    Export(export::ExportArgs),
    /// Import a float ONNX classifier (via tract-onnx) as a trainer checkpoint.
    Import(import::ImportArgs),
    /// Release gate: attacks and sound bounds on the exact int8 model; exit 0 pass, 1 fail, 2 error.
    Certify(certify::CertifyCmd),
    /// End-to-end demo on the embedded data: train (PGD), export to int8, certify at 4/255 and 0.1.
    Demo(demo::DemoArgs),
}

/// Parses arguments and runs; maps errors to exit code 2 with the whole error chain.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Inspect { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let text =
                inspect::describe(&bytes).with_context(|| format!("{} is not a valid iocane model", file.display()))?;
            print!("{text}");
            Ok(EXIT_OK)
        }
        Command::Train(a) => {
            train::run(&a)?;
            Ok(EXIT_OK)
        }
        Command::Export(a) => {
            export::run(&a)?;
            Ok(EXIT_OK)
        }
        Command::Import(a) => {
            import::run(&a)?;
            Ok(EXIT_OK)
        }
        Command::Certify(c) => certify::run(&c),
        Command::Demo(d) => demo::run(&d),
    }
}
