//! `pupil`: the native command-line front end. Thin: parses arguments, calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pupil::{selftest, ContextOptions, GpuContext};

#[derive(Parser)]
#[command(name = "pupil", version, about = "Run, fine-tune and distil small language models on your GPU")]
struct Cli {
    /// Do not use the f16 storage path even if the adapter supports shader-f16.
    #[arg(long, global = true)]
    no_f16: bool,
    /// Do not use subgroup reductions even if the adapter supports them.
    #[arg(long, global = true)]
    no_subgroups: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter, backend, features and limits Pupil will use.
    Info,
    /// Check every kernel against its CPU reference on this GPU.
    Selftest {
        /// Only these kernel families (default: all).
        #[arg(long = "family", value_parser = clap::builder::PossibleValuesParser::new(selftest::FAMILIES))]
        families: Vec<String>,
        /// Print every case, not just failures and the summary.
        #[arg(short, long)]
        verbose: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let mut options = ContextOptions::from_env();
    options.allow_f16 &= !cli.no_f16;
    options.allow_subgroups &= !cli.no_subgroups;
    match pollster::block_on(run(cli.command, options)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, options: ContextOptions) -> pupil::Result<ExitCode> {
    let ctx = GpuContext::new(options).await?;
    match command {
        Command::Info => {
            print!("{}", ctx.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest { families, verbose } => {
            print!("{}", ctx.describe());
            let families: Vec<&str> = if families.is_empty() {
                selftest::FAMILIES.to_vec()
            } else {
                families.iter().map(String::as_str).collect()
            };
            let reports = selftest::run_families(&ctx, &families).await?;
            for r in reports.iter().filter(|r| verbose || !r.passed) {
                println!("{r}");
            }
            let failed = reports.iter().filter(|r| !r.passed).count();
            let passed = reports.len() - failed;
            println!("kernel selftest: {passed} passed, {failed} failed");
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
