//! The `iocane` command line: argument definitions and the commands behind them.
//!
//! Exit codes (see `iocane --help`): 0 success (for `certify`: gate passed), 1 failed check
//! (`certify`: gate failed; `replay`: a counterexample does not replay), 2 usage or input error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub mod certify;
pub mod demo;
pub mod export;
pub mod import;
pub mod inspect;
pub mod predict;
pub mod progress;
pub mod replay;
pub mod study;
pub mod train;

/// Exit code: success, or the release gate passed.
pub const EXIT_OK: u8 = 0;
/// Exit code: a failed check: the release gate failed (accuracy below the threshold), or a
/// counterexample did not replay.
pub const EXIT_GATE_FAILED: u8 = 1;
/// Exit code: usage or input error (bad flags, missing or corrupted files).
pub const EXIT_ERROR: u8 = 2;
/// Exit code: interrupted by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Installs (once per process) a Ctrl-C handler that sets the returned flag: the first Ctrl-C
/// asks `what` to stop at the next safe point, a second one exits at once with
/// [`EXIT_INTERRUPTED`]. The flag is never cleared: a Ctrl-C stops the whole command.
pub fn interrupt_flag(what: &'static str) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    static WHAT: std::sync::Mutex<&str> = std::sync::Mutex::new("");
    if let Ok(mut w) = WHAT.lock() {
        *w = what;
    }
    let flag = FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            let what = WHAT.lock().map(|w| *w).unwrap_or("the run");
            eprintln!("\ninterrupt: stopping {what} at the next safe point (press Ctrl-C again to abort)");
        });
        flag
    });
    flag.clone()
}

/// iocane: adversarially robust int8 classifiers for microcontrollers.
#[derive(Debug, Parser)]
#[command(
    name = "iocane",
    version,
    about,
    after_help = "Exit codes: 0 success / gate passed, 1 failed check (release gate failed; replay: a counterexample does not replay), 2 usage or input error, 130 interrupted (Ctrl-C)."
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
    /// Train a classifier (natural, FGSM / PGD adversarial or IBP certified training) and save a float checkpoint.
    Train(train::TrainArgs),
    /// Quantize a trained run to int8 and write model.icn, model.rs, model.h (and model.onnx).
    Export(export::ExportArgs),
    /// Import a float ONNX classifier (via tract-onnx) as a trainer checkpoint.
    Import(import::ImportArgs),
    /// Release gate: attacks and sound bounds on the exact int8 model; exit 0 pass, 1 fail, 2 error.
    Certify(certify::CertifyCmd),
    /// Run the int8 model on images (PNG, PGM or raw u8): class, label and logits of each.
    Predict(predict::PredictArgs),
    /// Re-run a report's counterexamples on the int8 model: exit 0 if each is inside the ball and misclassified, 1 otherwise.
    Replay(replay::ReplayArgs),
    /// End-to-end demo on the embedded data: train cnn-s with PGD and with IBP, export both to int8, certify at 4/255 and 0.1.
    Demo(demo::DemoArgs),
    /// The findings behind adversarial training on your data: capacity (Madry et al.), robust vs non-robust features (Ilyas et al.), saliency (Tsipras et al.).
    Study(study::StudyCmd),
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
            // Training stopped by Ctrl-C (in `train` or inside `demo`) is not an input error.
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<iocane_trainer::train::TrainError>(),
                    Some(iocane_trainer::train::TrainError::Interrupted { .. })
                )
            });
            if interrupted {
                eprintln!("{e:#}");
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    // The long commands (which check the flag at safe points and exit 130) install the
    // handler before any work, so a Ctrl-C while their data loads is not lost; the short ones
    // keep the default (Ctrl-C ends the process at once).
    if matches!(cli.command, Command::Train(_) | Command::Certify(_) | Command::Demo(_) | Command::Study(_)) {
        let _ = interrupt_flag("the command");
    }
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
        Command::Predict(p) => predict::run(&p),
        Command::Replay(r) => replay::run(&r),
        Command::Demo(d) => demo::run(&d),
        Command::Study(s) => study::run(&s),
    }
}
