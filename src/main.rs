//! The native command line: `webmoe logits` and `webmoe generate`.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;
use webmoe::engine::{Device, Engine, EngineOptions};
use webmoe::platform::{DirSource, block_on};
use webmoe::{Error, Result};

#[derive(Parser)]
#[command(name = "webmoe", version, about = "Mixture-of-Experts LLM inference in WGSL on wgpu")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Gpu,
    Cpu,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Hugging Face model directory (config.json + safetensors)
    #[arg(long)]
    model: std::path::PathBuf,
    /// Token ids, comma separated, e.g. 1,17,300
    #[arg(long)]
    tokens: String,
    /// Where to run: the GPU kernels, or the CPU reference
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// KV cache length (default: min(max_position_embeddings, 4096))
    #[arg(long)]
    context: Option<usize>,
    /// Most prompt tokens per forward step (1 runs every token through the decode kernels)
    #[arg(long, default_value_t = webmoe::gpu::model::MAX_CHUNK)]
    prefill_chunk: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print {"logits": [[...], ...]}: one row of vocabulary logits per input position
    Logits(ModelArgs),
    /// Print greedily generated token ids, one per line as they are produced
    Generate {
        #[command(flatten)]
        args: ModelArgs,
        /// Tokens to generate
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
    },
}

fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| Error::input(format!("--tokens: '{t}' is not a token id"))))
        .collect()
}

fn open(a: &ModelArgs) -> Result<(Engine, Vec<u32>)> {
    let tokens = parse_tokens(&a.tokens)?;
    if tokens.is_empty() {
        return Err(Error::input("--tokens: no token ids given"));
    }
    let opts = EngineOptions {
        device: match a.device {
            DeviceArg::Gpu => Device::Gpu,
            DeviceArg::Cpu => Device::Cpu,
        },
        context: a.context,
        prefill_chunk: a.prefill_chunk,
    };
    let engine = block_on(Engine::load(&DirSource::new(&a.model), opts, None))?;
    Ok((engine, tokens))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Logits(a) => {
            let (mut engine, tokens) = open(&a)?;
            let logits = block_on(engine.logits(&tokens))?;
            let rows: Vec<&[f32]> = logits.chunks(engine.vocab).collect();
            let json = serde_json::json!({ "logits": rows });
            println!("{json}");
        }
        Cmd::Generate { args, max_tokens } => {
            let (mut engine, tokens) = open(&args)?;
            let stdout = std::io::stdout();
            block_on(engine.generate(&tokens, max_tokens, |id| {
                let mut out = stdout.lock();
                writeln!(out, "{id}").and_then(|_| out.flush()).is_ok()
            }))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webmoe: error: {e}");
            ExitCode::FAILURE
        }
    }
}
