//! The `tuwen` command line: a thin shell over the library.

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use tuwen::{Encoder, Towers};

#[derive(Parser)]
#[command(name = "tuwen", version, about = "图文 — Chinese image–text retrieval with Chinese-CLIP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one JSON line per input: {"kind","input","embedding"}, in the order given.
    Embed {
        /// Model directory in the Hugging Face layout.
        #[arg(long)]
        model: PathBuf,
        /// A text to embed (repeatable).
        #[arg(long)]
        text: Vec<String>,
        /// An image file to embed (repeatable).
        #[arg(long)]
        image: Vec<PathBuf>,
    },
    /// Write a model directory with random weights in the released layout (for tests, benchmarks, demos).
    InitRandom {
        /// A Chinese-CLIP config.json (e.g. the released one).
        #[arg(long)]
        config: PathBuf,
        /// The BERT vocab.txt to ship with it.
        #[arg(long)]
        vocab: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Download the released model (honours HF_ENDPOINT, e.g. https://hf-mirror.com).
    FetchModel {
        #[arg(long, default_value = tuwen::fetch::DEFAULT_REPO)]
        repo: String,
        #[arg(long, default_value = "models/chinese-clip-vit-base-patch16")]
        out: PathBuf,
    },
}

fn main() {
    let matches = Cli::command().get_matches();
    let result = Cli::from_arg_matches(&matches).map_err(anyhow::Error::from).and_then(|cli| run(cli, &matches));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    match cli.command {
        Command::Embed { model, text, image } => {
            let sub = matches.subcommand_matches("embed").expect("embed matches");
            embed(&model, text, image, sub)
        }
        Command::InitRandom { config, vocab, out, seed } => {
            tuwen::weights::write_random_model(&config, &vocab, &out, seed)?;
            eprintln!("wrote a RANDOM-WEIGHT model to {} (seed {seed}): its embeddings carry no meaning", out.display());
            Ok(())
        }
        Command::FetchModel { repo, out } => {
            let dir = tuwen::fetch::fetch_model(&repo, &out)?;
            eprintln!("{repo} → {}", dir.display());
            Ok(())
        }
    }
}

/// One line of `tuwen embed` output; field order is part of the contract.
#[derive(serde::Serialize)]
struct EmbeddingLine<'a> {
    kind: &'static str,
    input: &'a str,
    embedding: &'a [f32],
}

enum Input {
    Text(String),
    Image(PathBuf),
}

fn embed(model: &PathBuf, texts: Vec<String>, images: Vec<PathBuf>, matches: &ArgMatches) -> Result<()> {
    if texts.is_empty() && images.is_empty() {
        bail!("nothing to embed: give --text and/or --image");
    }
    let towers = match (texts.is_empty(), images.is_empty()) {
        (false, false) => Towers::Both,
        (false, true) => Towers::Text,
        _ => Towers::Vision,
    };
    // Restore the command-line order across the two repeated flags.
    let mut inputs: Vec<(usize, Input)> = Vec::new();
    let indices = |id: &str| matches.indices_of(id).map(|i| i.collect::<Vec<_>>()).unwrap_or_default();
    inputs.extend(indices("text").into_iter().zip(texts).map(|(i, t)| (i, Input::Text(t))));
    inputs.extend(indices("image").into_iter().zip(images).map(|(i, p)| (i, Input::Image(p))));
    inputs.sort_by_key(|(i, _)| *i);

    let encoder = Encoder::from_dir(model, towers)?;
    if let Some(how) = &encoder.info.random_weights {
        eprintln!("WARNING: {} has RANDOM weights ({how}); its embeddings carry no meaning", model.display());
    }
    let mut stdout = std::io::stdout().lock();
    for (_, input) in inputs {
        let (kind, shown, embedding) = match input {
            Input::Text(t) => {
                let e = encoder.embed_text(&t)?;
                ("text", t, e)
            }
            Input::Image(p) => {
                let e = encoder.embed_image_file(&p)?;
                ("image", p.display().to_string(), e)
            }
        };
        let line = serde_json::to_string(&EmbeddingLine { kind, input: &shown, embedding: &embedding })?;
        writeln!(stdout, "{line}").context("writing to stdout")?;
    }
    Ok(())
}
