//! The native command line: `logits`, `generate`, `chat`, `bench`, `pack`, `perplexity`, `route`
//! and `info`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;
use webmoe::chat::Message;
use webmoe::engine::{Device, Engine, EngineOptions, Event, GenerateOptions};
use webmoe::model::{ModelFiles, Progress};
use webmoe::platform::{DirSource, block_on, ModelSource};
use webmoe::sampling::SamplingParams;
use webmoe::tensor::DType;
use webmoe::{Error, Result};

#[path = "cli/info.rs"]
mod info;
#[path = "cli/measure.rs"]
mod measure;

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

#[derive(Clone, Copy, ValueEnum)]
enum QuantArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

impl QuantArg {
    fn dtype(self) -> DType {
        match self {
            QuantArg::Q8_0 => DType::Q8_0,
            QuantArg::Q4_0 => DType::Q4_0,
            QuantArg::Q4_1 => DType::Q4_1,
        }
    }
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A .gguf file, a Hugging Face model directory (config.json + safetensors), or a
    /// packed model's manifest.json
    #[arg(long)]
    model: std::path::PathBuf,
    /// Where to run: the GPU kernels, or the CPU reference
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// KV cache length (default: min(max_position_embeddings, 4096))
    #[arg(long)]
    context: Option<usize>,
    /// Most prompt tokens per forward step (1 runs every token through the decode kernels)
    #[arg(long, default_value_t = webmoe::gpu::model::MAX_CHUNK)]
    prefill_chunk: usize,
    /// Quantize f32/f16/bf16 weights on load
    #[arg(long, value_enum)]
    quant: Option<QuantArg>,
    /// KV cache storage: f32, or f16 (half the memory, keys and values rounded to f16)
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv: String,
    /// Experts kept on the GPU per MoE layer (at least top-k); the rest are uploaded from
    /// host memory when the router asks for them
    #[arg(long)]
    resident_experts: Option<usize>,
    /// GPU bytes the model may allocate (suffixes K, M, G): the skeleton, then the KV
    /// cache, then as many experts per layer as fit
    #[arg(long, value_parser = parse_bytes)]
    gpu_memory: Option<u64>,
    /// Which resident expert gives way: lru, lfu, pinned:N (the N most used stay), none
    #[arg(long, default_value = "lru", value_parser = |s: &str| webmoe::gpu::paging::Policy::parse(s).map_err(|e| e.to_string()))]
    expert_policy: webmoe::gpu::paging::Policy,
    /// Predict the next layer's experts from this layer's residual and upload them early
    #[arg(long)]
    prefetch: bool,
    /// With a packed model's manifest.json: load the skeleton, and read each expert from
    /// its file (packed with --expert-files; else from the shards that hold it) when the
    /// router first asks for it, so the experts need not fit in host memory either
    #[arg(long)]
    lazy_experts: bool,
}

/// "123", "64K", "512M", "2G" (binary multiples).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("'{s}': expected bytes with an optional K, M or G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("'{s}': expected bytes with an optional K, M or G"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("'{s}': expected a non-negative size"));
    }
    Ok((n * mul as f64) as u64)
}

#[derive(Args)]
struct SampleArgs {
    /// Tokens to generate at most
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 0 keeps every token
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Same seed, same output
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this text (repeatable)
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating through end-of-sequence tokens
    #[arg(long)]
    ignore_eos: bool,
}

impl SampleArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                logit_bias: Vec::new(),
                seed: self.seed,
            },
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print {"logits": [[...], ...]}: one row of vocabulary logits per input position
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Token ids, comma separated, e.g. 1,17,300
        #[arg(long)]
        tokens: String,
    },
    /// Stream a continuation of a prompt, a chat message, or token ids
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// Plain text prompt (the tokenizer adds BOS where the model wants it)
        #[arg(long, group = "input")]
        prompt: Option<String>,
        /// One user message, wrapped in the model's chat template
        #[arg(long, group = "input")]
        chat: Option<String>,
        /// Token ids, comma separated
        #[arg(long, group = "input")]
        tokens: Option<String>,
        /// System message for --chat
        #[arg(long)]
        system: Option<String>,
        /// Print generated token ids, one per line, instead of text
        #[arg(long)]
        ids: bool,
    },
    /// Interactive multi-turn chat (the KV cache is kept between turns)
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        #[arg(long)]
        system: Option<String>,
    },
    /// Prefill and decode speed, time to first token, load time, GPU memory
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Per-kernel times and each decode GEMV's bandwidth against a copy kernel
        #[arg(long)]
        kernels: bool,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
        /// Decode with 25/50/75/100% of each MoE layer's experts resident, without reuse,
        /// with LRU and with LRU + prefetch: hit rate, prefetch recall, MB uploaded and
        /// host-sync ms per token, tok/s against all-resident and what PCIe links allow
        #[arg(long)]
        residency: bool,
        /// With --residency: decode the tokens of this text (default: a fixed spread of ids)
        #[arg(long, requires = "residency")]
        file: Option<std::path::PathBuf>,
    },
    /// Write a packed web model: manifest.json and shards the browser uploads as they are
    Pack {
        /// A .gguf file, or a Hugging Face model directory
        #[arg(long)]
        model: std::path::PathBuf,
        /// Output directory
        #[arg(long)]
        out: std::path::PathBuf,
        /// Target shard size in MiB
        #[arg(long, default_value_t = 32)]
        shard_mb: usize,
        /// Quantize f32/f16/bf16 weights first
        #[arg(long, value_enum)]
        quant: Option<QuantArg>,
        /// Each expert in a file of its own, so a page can load it when the router first
        /// asks for it (`load(url, {experts: 'lazy'})`, `--lazy-experts`)
        #[arg(long)]
        expert_files: bool,
    },
    /// Perplexity of a text, measured as llama.cpp's llama-perplexity measures it: windows
    /// of --context tokens (default 512), each starting with BOS, scored on its second half
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// The text to score (UTF-8)
        #[arg(long)]
        file: std::path::PathBuf,
        /// Score only the first N windows (llama-perplexity --chunks)
        #[arg(long)]
        chunks: Option<usize>,
        /// Print one JSON object: perplexity, plus_minus, tokens, windows
        #[arg(long)]
        json: bool,
    },
    /// Routing locality: every token's chosen experts per MoE layer over a text, and per
    /// layer the expert usage, how often consecutive tokens keep the same first choice or
    /// share an expert (beside random routing), and LRU expert-cache hit rates by size
    Route {
        #[command(flatten)]
        model: ModelArgs,
        /// The text to route (UTF-8), run in windows of --context - 1 tokens (default 512)
        #[arg(long)]
        file: std::path::PathBuf,
        /// Route only the first N tokens of the text
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Print one JSON object: tokens, windows, and per layer its usage, locality and LRU hit rates
        #[arg(long)]
        json: bool,
    },
    /// Architecture, tensor types, parameters (total and active per token), sizes
    Info {
        /// A .gguf file, or a Hugging Face model directory
        #[arg(long)]
        model: std::path::PathBuf,
    },
}

fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let t: Vec<u32> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| Error::input(format!("--tokens: '{t}' is not a token id"))))
        .collect::<Result<_>>()?;
    if t.is_empty() {
        return Err(Error::input("--tokens: no token ids given"));
    }
    Ok(t)
}

/// A progress bar on stderr while reading, quantizing and uploading (hidden when stderr
/// is not a terminal).
fn progress_bar() -> (ProgressBar, Progress) {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:40!} [{bar:30}] {percent:>3}%")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let p = Progress(Rc::new(move |p: &webmoe::model::LoadProgress| {
        b.set_length(p.total.max(1));
        b.set_position(p.done);
        b.set_message(format!("{} {}", p.phase, p.what));
    }));
    (bar, p)
}

fn open(a: &ModelArgs) -> Result<Engine> {
    let (bar, progress) = progress_bar();
    let opts = EngineOptions {
        device: match a.device {
            DeviceArg::Gpu => Device::Gpu,
            DeviceArg::Cpu => Device::Cpu,
        },
        context: a.context,
        prefill_chunk: a.prefill_chunk,
        quant: a.quant.map(QuantArg::dtype),
        kv: if a.kv == "f16" { DType::F16 } else { DType::F32 },
        residency: webmoe::gpu::paging::Residency {
            experts: a.resident_experts,
            gpu_memory: a.gpu_memory,
            policy: a.expert_policy,
            prefetch: a.prefetch,
        },
        progress: Some(progress.clone()),
    };
    let src = DirSource::new(&a.model).with_progress(progress);
    let engine = if a.lazy_experts {
        let name = src.single_file().filter(|f| f.ends_with(".json")).map(str::to_string).ok_or_else(|| {
            Error::input(format!("--lazy-experts: {} is not a packed model's manifest.json", a.model.display()))
        })?;
        block_on(async { Engine::from_packed(webmoe::pack::load_lazy(Rc::new(src), &name).await?, opts, None).await })
    } else {
        block_on(Engine::load(&src, opts, None))
    };
    bar.finish_and_clear();
    engine
}

/// Generates after `prompt`, streaming text (or ids) to stdout; returns the reply text.
fn stream(engine: &mut Engine, prompt: &[u32], opts: &GenerateOptions, ids: bool) -> Result<String> {
    let stdout = std::io::stdout();
    let t0 = Instant::now();
    let mut first: Option<Instant> = None;
    let text_mode = !ids && engine.tokenizer.is_some();
    let g = block_on(engine.generate(prompt, opts, |ev| {
        first.get_or_insert_with(Instant::now);
        let mut out = stdout.lock();
        let r = match ev {
            Event::Token(id) if !text_mode => writeln!(out, "{id}"),
            Event::Text(t) if text_mode => write!(out, "{t}"),
            _ => Ok(()),
        };
        r.and_then(|_| out.flush()).is_ok()
    }))?;
    if text_mode {
        println!();
    }
    if std::io::stderr().is_terminal() || std::env::var_os("WEBMOE_STATS").is_some() {
        let t1 = Instant::now();
        let ttft = first.map_or(0.0, |f| (f - t0).as_secs_f64());
        let decode = first.map_or(0.0, |f| (t1 - f).as_secs_f64());
        let rate = if g.tokens.len() > 1 && decode > 0.0 { (g.tokens.len() - 1) as f64 / decode } else { 0.0 };
        // The host's own time per token (sampling, text, output) at the start and the end
        // of the reply: medians of the first and the last 100 tokens.
        let median = |v: &[u32]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let h = &g.host_us;
        let n = h.len().min(100);
        eprintln!(
            "[{} prompt tokens ({} prefilled), first token after {:.2} s, {} tokens at {:.1} tok/s, {}; host {} µs/token over the first {n}, {} µs over the last {n}]",
            g.prompt_tokens,
            g.prefilled_tokens,
            ttft,
            g.tokens.len(),
            rate,
            g.finish.as_str(),
            median(&h[..n]),
            median(&h[h.len() - n..]),
        );
    }
    Ok(g.text)
}

fn bench(m: &ModelArgs, opts: webmoe::bench::BenchOptions, json: bool) -> Result<()> {
    let t0 = Instant::now();
    let mut engine = open(m)?;
    let load = t0.elapsed().as_secs_f64();
    let r = block_on(webmoe::bench::run(&mut engine, &opts))?;
    if json {
        let mut v = serde_json::to_value(&r).map_err(|e| Error::input(e.to_string()))?;
        v["model"] = serde_json::json!(m.model.display().to_string());
        v["load_seconds"] = serde_json::json!(load);
        println!("{v}");
        return Ok(());
    }
    let s = |x: &webmoe::bench::Stat| format!("{:8.2} (min {:.2}, max {:.2})", x.median, x.min, x.max);
    println!("model        {}", m.model.display());
    println!(
        "adapter      {} ({}, GEMV lanes {})",
        r.adapter,
        if r.subgroups { "subgroup reductions" } else { "workgroup-memory reductions" },
        r.gemv_lanes
    );
    println!(
        "load         {load:.2} s, GPU memory {:.1} MiB in {} buffers",
        r.gpu_bytes as f64 / (1u64 << 20) as f64,
        r.gpu_buffers
    );
    println!("prefill      {} tok/s   ({} tokens, median of {})", s(&r.prefill_tokens_per_s), r.prompt_tokens, r.reps);
    println!("decode       {} tok/s   ({} tokens)", s(&r.decode_tokens_per_s), r.gen_tokens);
    println!("first token  {} s", s(&r.time_to_first_token_s));
    println!("buffers created while generating: {}", r.buffers_created_while_generating);
    if let Some(bw) = r.copy_gb_per_s {
        println!(
            "copy kernel  {bw:.2} GB/s   (kernel times from {})",
            if r.timestamps { "GPU timestamps" } else { "wall clock" }
        );
        for (title, rows) in [("prefill step", &r.prefill_kernels), ("decode step", &r.decode_kernels)] {
            let total: f64 = rows.iter().map(|k| k.seconds).sum();
            println!("{title}: {:.1} ms", total * 1e3);
            for k in rows {
                let bw = match (k.gb_per_s, k.of_copy) {
                    (Some(g), Some(f)) => format!("{g:7.2} GB/s  {:5.1}% of copy", f * 100.0),
                    _ => String::new(),
                };
                println!(
                    "  {:18} {:4} x {:9.3} ms  {:5.1}%  {bw}",
                    k.kernel,
                    k.calls,
                    k.seconds * 1e3,
                    100.0 * k.seconds / total
                );
            }
        }
    }
    Ok(())
}

fn pack(
    model: &std::path::Path,
    out: &std::path::Path,
    shard_mb: usize,
    quant: Option<QuantArg>,
    expert_files: bool,
) -> Result<()> {
    let (bar, progress) = progress_bar();
    let mut files = block_on(ModelFiles::load(&DirSource::new(model).with_progress(progress.clone())))?;
    if let Some(q) = quant.map(QuantArg::dtype) {
        files.quantize(q, Some(&progress))?;
    }
    let tokenizer = webmoe::tokenizer::Tokenizer::from_model(&files)?.map(|t| t.to_spec()).transpose()?;
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let opts = webmoe::pack::PackOptions { shard_bytes: shard_mb.max(1) << 20, expert_files };
    let (manifest, shards) = webmoe::pack::pack_with(&files, &name, tokenizer, opts, Some(&progress))?;
    bar.finish_and_clear();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    for (info, bytes) in manifest.shards.iter().zip(&shards) {
        let p = out.join(&info.file);
        std::fs::write(&p, bytes).map_err(|e| Error::io(p.display(), e))?;
    }
    let json = serde_json::to_vec(&manifest).map_err(|e| Error::input(e.to_string()))?;
    let p = out.join("manifest.json");
    std::fs::write(&p, json).map_err(|e| Error::io(p.display(), e))?;
    println!(
        "{}: {} tensors in {} shards, {:.1} MiB",
        p.display(),
        manifest.tensors.len(),
        manifest.shards.len(),
        manifest.total_bytes as f64 / (1u64 << 20) as f64
    );
    Ok(())
}

fn chat(engine: &mut Engine, model: &std::path::Path, system: Option<String>, opts: &GenerateOptions) -> Result<()> {
    if !engine.has_chat_template() {
        return Err(Error::input(
            "this model has no chat template (a base model?): use `webmoe generate --prompt TEXT` to continue text",
        ));
    }
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!("webmoe chat on {} — /reset starts over, /exit (or Ctrl-D) quits", engine.device_name());
    }
    let mut messages: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    loop {
        if tty {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(|e| Error::io("stdin", e))? == 0 {
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages.retain(|m| m.role == "system");
                engine.reset();
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let prompt = engine.encode_chat(&messages)?;
        let reply = match stream(engine, &prompt, opts, false) {
            Err(e) if e.is_retryable() => {
                // A lost GPU: the model reloaded on a new device with the chat so far; ask again.
                eprintln!("\n[{e}: reloading the model and restoring the chat]");
                *engine = block_on(engine.rebuilt(&DirSource::new(model)))?;
                stream(engine, &prompt, opts, false)?
            }
            r => r?,
        };
        messages.push(Message::new("assistant", &reply));
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Logits { model, tokens } => {
            let tokens = parse_tokens(&tokens)?;
            let mut engine = open(&model)?;
            let logits = block_on(engine.logits(&tokens))?;
            let rows: Vec<&[f32]> = logits.chunks(engine.vocab).collect();
            println!("{}", serde_json::json!({ "logits": rows }));
        }
        Cmd::Perplexity { model, file, chunks, json } => measure::perplexity(model, &file, chunks, json)?,
        Cmd::Route { model, file, max_tokens, json } => measure::route(model, &file, max_tokens, json)?,
        Cmd::Generate { model, sample, prompt, chat, tokens, system, ids } => {
            let given_tokens = tokens.as_deref().map(parse_tokens).transpose()?;
            if prompt.is_none() && chat.is_none() && given_tokens.is_none() {
                return Err(Error::input("give one of --prompt, --chat or --tokens"));
            }
            let mut engine = open(&model)?;
            let input = match (prompt, chat, given_tokens) {
                (Some(p), _, _) => engine.encode(&p)?,
                (_, Some(c), _) => {
                    let mut m: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
                    m.push(Message::new("user", &c));
                    engine.encode_chat(&m)?
                }
                (_, _, Some(t)) => t,
                _ => unreachable!("checked above"),
            };
            stream(&mut engine, &input, &sample.options(), ids)?;
        }
        Cmd::Chat { model, sample, system } => chat(&mut open(&model)?, &model.model, system, &sample.options())?,
        Cmd::Info { model } => info::info(&model)?,
        Cmd::Bench { model, prompt_tokens, gen_tokens, reps, kernels, json, residency, file } => {
            let opts = webmoe::bench::BenchOptions { prompt_tokens, gen_tokens, reps, kernels };
            if residency {
                measure::residency_table(&model, &opts, file.as_deref(), json)?
            } else {
                bench(&model, opts, json)?
            }
        }
        Cmd::Pack { model, out, shard_mb, quant, expert_files } => pack(&model, &out, shard_mb, quant, expert_files)?,
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
