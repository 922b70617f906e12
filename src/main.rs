//! The `iocane` command-line tool. See `iocane --help`.
fn main() -> std::process::ExitCode {
    iocane::cli::main_with_args(std::env::args_os())
}
