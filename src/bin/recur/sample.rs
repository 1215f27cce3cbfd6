//! `recur sample`: text from a character model checkpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use recur::Rng;
use recur::models::CharLm;

use crate::CmdResult;

/// Options of `recur sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A checkpoint written by `recur train` (`last.safetensors` or `best.safetensors`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to start from (default: a newline if the model knows it, else its first character).
    #[arg(long)]
    pub prime: Option<String>,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    pub length: usize,
    /// Softmax temperature: lower is more conservative, 0 always takes the likeliest character.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `recur sample`.
pub fn run(args: &SampleArgs) -> CmdResult {
    if args.length > 100_000_000 {
        return Err(format!(
            "--length {} is too large (at most 100000000)",
            args.length
        ));
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(format!(
            "--temperature must be >= 0, got {}",
            args.temperature
        ));
    }
    let (lm, store) = CharLm::<f32>::load(&args.checkpoint).map_err(|e| e.to_string())?;
    let vocab = lm.vocab();
    let prime = match &args.prime {
        Some(p) if p.is_empty() => return Err("--prime is empty".into()),
        Some(p) => {
            if let Some(c) = p.chars().find(|&c| vocab.id(c).is_none()) {
                return Err(format!(
                    "--prime contains {c:?}, which the model has never seen"
                ));
            }
            p.clone()
        }
        None if vocab.id('\n').is_some() => "\n".into(),
        None => vocab.char(0).map_err(|e| e.to_string())?.to_string(),
    };
    let text = lm
        .generate(
            &store,
            &prime,
            args.length,
            args.temperature,
            None,
            &mut Rng::new(args.seed),
        )
        .map_err(|e| e.to_string())?;
    println!("{prime}{text}");
    Ok(ExitCode::SUCCESS)
}
