//! The `tuwen` command line: a thin shell over the library.

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use tuwen::embed::Placement;
use tuwen::gallery::Gallery;
use tuwen::{Encoder, Towers};

#[derive(Parser)]
#[command(name = "tuwen", version, about = "图文 — Chinese image–text retrieval with Chinese-CLIP")]
struct Cli {
    /// Threads for encoders, decoding and search [default: all cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where the encoders run: auto (a hardware GPU when there is one, else the CPU), cpu, or gpu (any
    /// adapter, CPU emulations such as lavapipe included; an error when there is none).
    #[arg(long, global = true, default_value = "auto")]
    backend: tuwen::model::BackendChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one JSON line per input: {"kind","input","embedding"}, in the order given.
    Embed {
        /// Model: a directory in the Hugging Face layout, a cn_clip checkpoint (`clip_cn_*.pt`, `epoch_latest.pt`), or a GGUF from `tuwen quantize`.
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
    /// Embed a gallery into a bundle (resumable: rerun the same command after an interruption).
    Index {
        #[command(subcommand)]
        what: IndexCommand,
    },
    /// Search a bundle with a text or an image: one line per hit, rank<TAB>id<TAB>score<TAB>caption.
    Search {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, required_unless_present = "db", conflicts_with = "db")]
        bundle: Option<PathBuf>,
        /// Search a gallery table in PostgreSQL + pgvector instead (`tuwen db push`): postgres://…
        #[arg(long)]
        db: Option<String>,
        /// The gallery's table with --db.
        #[arg(long, default_value = "gallery", requires = "db")]
        table: String,
        /// With --db: scan every row instead of asking the HNSW index (exact, slower).
        #[arg(long, requires = "db")]
        exact: bool,
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        text: Option<String>,
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(short, long, default_value_t = 10)]
        k: usize,
    },
    /// Teddy Cup task 1 (text → image): write result1.csv.
    Task1 {
        #[arg(long)]
        model: PathBuf,
        /// word_test.csv (text_id, caption).
        #[arg(long)]
        texts: PathBuf,
        /// image_data.csv (image_id): the gallery, files in --images.
        #[arg(long)]
        image_list: Option<PathBuf>,
        #[arg(long)]
        images: Option<PathBuf>,
        /// Reuse an image bundle made by `tuwen index images` instead of embedding the gallery.
        #[arg(long, conflicts_with = "image_table")]
        image_bundle: Option<PathBuf>,
        /// Take the gallery from this table of --db (pushed by `tuwen db push`).
        #[arg(long, requires = "db")]
        image_table: Option<String>,
        /// PostgreSQL + pgvector URL for --image-table.
        #[arg(long)]
        db: Option<String>,
        #[arg(long, default_value = "result1.csv")]
        out: PathBuf,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Teddy Cup task 2 (image → text): write result2.csv.
    Task2 {
        #[arg(long)]
        model: PathBuf,
        /// image_test.csv (image_id): the query images, files in --images.
        #[arg(long)]
        image_list: PathBuf,
        #[arg(long)]
        images: PathBuf,
        /// word_data.csv (text_id, caption): the texts to retrieve.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Reuse a text bundle made by `tuwen index texts`.
        #[arg(long, conflicts_with = "text_table")]
        text_bundle: Option<PathBuf>,
        /// Take the texts from this table of --db (pushed by `tuwen db push`).
        #[arg(long, requires = "db")]
        text_table: Option<String>,
        /// PostgreSQL + pgvector URL for --text-table.
        #[arg(long)]
        db: Option<String>,
        #[arg(long, default_value = "result2.csv")]
        out: PathBuf,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Recall@1/5/10 both ways over image_id,caption pairs (e.g. ImageWordData.csv).
    Eval {
        /// HF model directory, a cn_clip checkpoint (.pt), or a tuwen GGUF. Given more than once: each model
        /// alone and their fusion (--fuse) are reported.
        #[arg(long, required = true)]
        model: Vec<PathBuf>,
        /// CSV with columns image_id,caption (e.g. ImageWordData.csv).
        #[arg(long)]
        pairs: PathBuf,
        /// Folder of the images named by image_id.
        #[arg(long)]
        images: PathBuf,
        /// How several models' similarities are fused: zmean (weighted mean of per-query z-scores) or rrf
        /// (reciprocal-rank fusion).
        #[arg(long, default_value = "zmean")]
        fuse: String,
        /// Each --model's weight in the fusion, in the same order (default: all 1).
        #[arg(long)]
        weight: Vec<f32>,
        /// Also write {"text_to_image":{…},"image_to_text":{…},"mean_recall":…,"n":…} here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Write a single-file GGUF model (one tower or both) with quantized weights.
    Quantize {
        /// HF model directory or cn_clip checkpoint (.pt) (or a tuwen GGUF to cut one tower out of, same dtype).
        #[arg(long)]
        model: PathBuf,
        /// q8_0 (default), q4_0, q4k or f16 for the linear layers; norms and embeddings stay f32.
        #[arg(long, default_value = "q8_0")]
        dtype: tuwen::weights::gguf::QuantDtype,
        /// text, vision or both: the page fetches only the tower a query needs.
        #[arg(long, default_value = "both")]
        tower: Towers,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the static search site for a gallery of image_id,caption pairs (what `./build.sh site` runs).
    /// Without --pairs: a site with no gallery of its own, where visitors search their own photos only.
    Site {
        /// HF model directory, a cn_clip checkpoint (.pt), or a tuwen GGUF holding both towers.
        #[arg(long)]
        model: PathBuf,
        /// The site's gallery: a CSV with columns image_id,caption (omit for a private photo search only).
        #[arg(long, requires = "images")]
        pairs: Option<PathBuf>,
        /// Folder of the images named by image_id.
        #[arg(long, requires = "pairs")]
        images: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Quantization of the towers when --model is an HF directory.
        #[arg(long, default_value = "q8_0")]
        dtype: tuwen::weights::gguf::QuantDtype,
        /// The page's sources.
        #[arg(long, default_value = "www")]
        www: PathBuf,
        /// The wasm package (wasm-bindgen --target web output).
        #[arg(long, default_value = "pkg")]
        pkg: PathBuf,
    },
    /// Serve a built site on 127.0.0.1 (any static server works too).
    Serve {
        #[arg(long, default_value = "site")]
        dir: PathBuf,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Send COOP/COEP headers (cross-origin isolation, for pages that use wasm threads).
        #[arg(long)]
        isolated: bool,
    },
    /// Write a small synthetic gallery (pairs.csv + images/) for demos and tests without real data.
    DemoGallery {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 54)]
        count: usize,
    },
    /// Galleries in PostgreSQL + pgvector.
    Db {
        #[command(subcommand)]
        what: DbCommand,
    },
    /// Download the released model (honours HF_ENDPOINT, e.g. https://hf-mirror.com).
    FetchModel {
        #[arg(long, default_value = tuwen::fetch::DEFAULT_REPO)]
        repo: String,
        #[arg(long, default_value = "models/chinese-clip-vit-base-patch16")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Images of a folder (all of them, or those listed in a CSV's image_id column).
    Images {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        images: PathBuf,
        /// A CSV with an image_id column (e.g. image_data.csv).
        #[arg(long)]
        list: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        opts: IndexArgs,
    },
    /// Texts of a CSV (id column and caption).
    Texts {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        csv: PathBuf,
        /// The id column: text_id (word_data.csv) or image_id (ImageWordData.csv).
        #[arg(long, default_value = "text_id")]
        id_column: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        opts: IndexArgs,
    },
    /// Join the bundles of a `--shard i/n` run into one.
    Merge {
        #[arg(long)]
        out: PathBuf,
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Load a bundle into a table (idempotent; a killed push resumes) and index it with HNSW (cosine).
    Push {
        #[arg(long)]
        bundle: PathBuf,
        /// postgres://user:password@host:port/database
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "gallery")]
        table: String,
    },
}

#[derive(clap::Args)]
struct IndexArgs {
    /// f16 (default) or int8 (per-row scale, half the size).
    #[arg(long, default_value = "f16")]
    storage: tuwen::bundle::Storage,
    /// Embed only slice i of n (0-based), to spread a large run over machines; then `index merge`.
    #[arg(long)]
    shard: Option<tuwen::index::Shard>,
}

#[derive(clap::Args)]
struct JobArgs {
    /// Folder for intermediate bundles (a killed run resumes from it) [default: <out>.work].
    #[arg(long)]
    work: Option<PathBuf>,
    #[arg(long, default_value = "f16")]
    storage: tuwen::bundle::Storage,
    /// Re-rank with all queries: none or dual-softmax.
    #[arg(long, default_value = "none")]
    rerank: tuwen::search::Rerank,
}

impl JobArgs {
    fn options(self, out: &std::path::Path) -> tuwen::apps::teddy::JobOptions {
        tuwen::apps::teddy::JobOptions {
            work: self.work.unwrap_or_else(|| tuwen::apps::teddy::work_beside(out)),
            storage: self.storage,
            rerank: self.rerank,
            progress: true,
        }
    }
}

static BACKEND: std::sync::OnceLock<tuwen::model::BackendChoice> = std::sync::OnceLock::new();
static PLACEMENT: std::sync::Mutex<Option<Placement>> = std::sync::Mutex::new(None);

/// The device `--backend` chose, opened on first use (one for the whole command) and logged with the reason.
fn placement() -> Result<Placement> {
    let mut opened = PLACEMENT.lock().unwrap();
    if opened.is_none() {
        let choice = BACKEND.get().copied().unwrap_or_default();
        let at = tuwen::util::resolve_now(Placement::open(choice))??;
        eprintln!("encoders run on the {}", at.report);
        *opened = Some(at);
    }
    Ok(opened.clone().unwrap())
}

fn load(model: &std::path::Path, towers: Towers) -> Result<Encoder> {
    let encoder = Encoder::load_on(model, towers, placement()?)?;
    if let Some(how) = &encoder.info.random_weights {
        eprintln!("WARNING: {} has RANDOM weights ({how}); its embeddings carry no meaning", model.display());
    }
    Ok(encoder)
}

fn main() {
    // Mesa's implicit Vulkan layer that picks the display's GPU connects to Wayland/X11 and prints
    // "XDG_RUNTIME_DIR is invalid" on headless machines; tuwen picks adapters itself and opens no window.
    // (Set here, before any thread starts.)
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let matches = Cli::command().get_matches();
    let result = Cli::from_arg_matches(&matches).map_err(anyhow::Error::from).and_then(|cli| run(cli, &matches));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    BACKEND.set(cli.backend).expect("set once");
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // More threads than a few per core only costs memory (each decodes an image) and start-up time.
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let n = if n > 4 * cores {
            eprintln!("warning: --threads {n} on {cores} core(s): using {} (4 per core is the most that helps)", 4 * cores);
            4 * cores
        } else {
            n
        };
        // candle's matmuls read RAYON_NUM_THREADS; decoding and search use rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("setting up threads")?;
    }
    match cli.command {
        Command::Embed { model, text, image } => {
            let sub = matches.subcommand_matches("embed").expect("embed matches");
            embed(&model, text, image, sub)
        }
        Command::InitRandom { config, vocab, out, seed } => {
            tuwen::model::random::write_random_model(&config, &vocab, &out, seed)?;
            eprintln!("wrote a RANDOM-WEIGHT model to {} (seed {seed}): its embeddings carry no meaning", out.display());
            Ok(())
        }
        Command::Index { what } => index(what),
        Command::Search { model, bundle, db, table, exact, text, image, k } => {
            let within = match (bundle, db) {
                (Some(bundle), _) => SearchIn::Bundle(bundle),
                (None, Some(url)) => SearchIn::Db { url, table, exact },
                (None, None) => bail!("give --bundle or --db"),
            };
            search(&model, within, text, image, k)
        }
        Command::Task1 { model, texts, image_list, images, image_bundle, image_table, db, out, job } => {
            let given = image_bundle.is_some() || image_table.is_some();
            let encoder = load(&model, if given { Towers::Text } else { Towers::Both })?;
            let gallery = given_gallery(&encoder, image_bundle, db.as_deref(), image_table, tuwen::bundle::Kind::Image)?;
            let opts = job.options(&out);
            let n = tuwen::apps::teddy::task1(&encoder, &texts, image_list.as_deref(), images.as_deref(), gallery, &out, &opts)?;
            eprintln!("wrote {} ({n} texts × {} images each)", out.display(), tuwen::apps::teddy::RESULTS_PER_QUERY);
            Ok(())
        }
        Command::Task2 { model, image_list, images, texts, text_bundle, text_table, db, out, job } => {
            let given = text_bundle.is_some() || text_table.is_some();
            let encoder = load(&model, if given { Towers::Vision } else { Towers::Both })?;
            let gallery = given_gallery(&encoder, text_bundle, db.as_deref(), text_table, tuwen::bundle::Kind::Text)?;
            let opts = job.options(&out);
            let n = tuwen::apps::teddy::task2(&encoder, &image_list, &images, texts.as_deref(), gallery, &out, &opts)?;
            eprintln!("wrote {} ({n} images × {} texts each)", out.display(), tuwen::apps::teddy::RESULTS_PER_QUERY);
            Ok(())
        }
        Command::Eval { model, pairs, images, fuse, weight, json, job } => {
            let fusion: tuwen::search::Fusion = fuse.parse()?;
            if !weight.is_empty() && weight.len() != model.len() {
                anyhow::bail!("{} --weight for {} --model: give one weight per model, or none", weight.len(), model.len());
            }
            let encoders = model.iter().map(|m| load(m, Towers::Both)).collect::<Result<Vec<_>>>()?;
            // Intermediate bundles beside the JSON report when there is one; their reuse is keyed on the
            // files, model and preprocessing, so another folder or changed images are embedded afresh.
            let opts = job.options(&json.clone().unwrap_or_else(|| PathBuf::from("tuwen-eval")));
            if let Some(path) = &json {
                tuwen::util::refuse_overwriting(path, &[&pairs])?;
            }
            let report = if encoders.len() == 1 {
                serde_json::to_value(tuwen::apps::teddy::eval(&encoders[0], &pairs, &images, &opts).inspect(|r| println!("{r}"))?)?
            } else {
                let models: Vec<tuwen::apps::teddy::FusedModel> = encoders
                    .iter()
                    .zip(&model)
                    .enumerate()
                    .map(|(i, (encoder, path))| tuwen::apps::teddy::FusedModel {
                        name: path.display().to_string(),
                        encoder,
                        weight: weight.get(i).copied().unwrap_or(1.0),
                    })
                    .collect();
                let report = tuwen::apps::teddy::eval_fused(&models, &pairs, &images, &opts, fusion, &fuse)?;
                println!("{report}");
                serde_json::to_value(report)?
            };
            if let Some(path) = json {
                tuwen::util::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Quantize { model, dtype, tower, out } => {
            tuwen::util::refuse_overwriting(&out, &[&model])?;
            let bytes = tuwen::quantize::quantize_model(&model, dtype, tower, &out)?;
            eprintln!("wrote {} ({} tower{}, {}, {:.1} MB)", out.display(), tower.name(), if tower == Towers::Both { "s" } else { "" },
                dtype.name(), bytes as f64 / 1e6);
            Ok(())
        }
        Command::Site { model, pairs, images, out, dtype, www, pkg } => {
            let gallery = pairs.zip(images);
            let job = tuwen::apps::site::SiteJob { model, gallery, out, www, pkg, dtype, progress: true, backend: placement()? };
            let report = job.run()?;
            eprintln!("{report}");
            Ok(())
        }
        Command::Serve { dir, port, isolated } => tuwen::serve::serve(&dir, port, isolated, |url| {
            eprintln!("serving {} at {url} (Ctrl-C stops)", dir.display());
        }),
        Command::DemoGallery { out, count } => {
            let pairs = tuwen::apps::site::generate_gallery(&out, count)?;
            eprintln!("wrote {count} synthetic images and {}", pairs.display());
            Ok(())
        }
        Command::Db { what: DbCommand::Push { bundle, url, table } } => {
            let gallery = tuwen::bundle::Bundle::open(&bundle)?;
            let mut client = tuwen::db::connect(&url)?;
            let report = tuwen::db::push(&mut client, &gallery, &bundle, &table, true)?;
            eprintln!(
                "{} → table {table}: {} rows ({} already there from an earlier push) in {:.1} s, HNSW index (cosine) ready",
                bundle.display(),
                report.rows,
                report.resumed,
                report.seconds
            );
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

fn index(what: IndexCommand) -> Result<()> {
    use tuwen::index::{IndexJob, Items};
    let (model, items, out, opts) = match what {
        IndexCommand::Merge { out, shards } => {
            tuwen::util::refuse_overwriting(&out, &shards.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
            let n = tuwen::index::merge(&shards, &out)?;
            eprintln!("merged {} shards into {} ({n} entries)", shards.len(), out.display());
            return Ok(());
        }
        IndexCommand::Images { model, images, list, out, opts } => {
            tuwen::util::refuse_overwriting(&out, &list.iter().map(PathBuf::as_path).chain([model.as_path()]).collect::<Vec<_>>())?;
            let ids = match &list {
                Some(list) => tuwen::gallery::files::read_image_list(list, &images)?,
                None => tuwen::gallery::files::list_images(&images)?,
            };
            (model, Items::images(&images, ids), out, opts)
        }
        IndexCommand::Texts { model, csv, id_column, out, opts } => {
            tuwen::util::refuse_overwriting(&out, &[&csv, &model])?;
            let (ids, captions) = tuwen::gallery::files::read_captions(&csv, &id_column)?.into_iter().unzip();
            (model, Items::Texts { ids, captions }, out, opts)
        }
    };
    let towers = if matches!(items, Items::Images { .. }) { Towers::Vision } else { Towers::Text };
    let encoder = load(&model, towers)?;
    let report = IndexJob { encoder: &encoder, items, out, storage: opts.storage, shard: opts.shard, progress: true }.run()?;
    eprintln!("{report}");
    Ok(())
}

/// Where `search` looks: a bundle file, or a table in PostgreSQL + pgvector.
enum SearchIn {
    Bundle(PathBuf),
    Db { url: String, table: String, exact: bool },
}

fn search(model: &std::path::Path, within: SearchIn, text: Option<String>, image: Option<PathBuf>, k: usize) -> Result<()> {
    let start = std::time::Instant::now();
    // A bad bundle is reported before the model is loaded.
    let file = match &within {
        SearchIn::Bundle(path) => Some(Gallery::open_file(path)?),
        SearchIn::Db { .. } => None,
    };
    let encoder = load(model, if text.is_some() { Towers::Text } else { Towers::Vision })?;
    let stamp = encoder.stamp()?;
    // Either kind of gallery takes either query.
    let mut gallery = match (within, file) {
        (_, Some(file)) => file,
        (SearchIn::Db { url, table, exact }, None) => Gallery::open_table(&url, &table, &stamp, None, exact)?,
        (SearchIn::Bundle(_), None) => unreachable!("opened above"),
    };
    gallery.check(&stamp, None)?;
    let loaded = start.elapsed();
    let query = match (&text, &image) {
        (Some(t), _) => encoder.embed_text(t)?,
        (None, Some(p)) => encoder.embed_image_file(p)?,
        (None, None) => bail!("give --text or --image"),
    };
    let encoded = start.elapsed();
    let found = gallery.search(&query, k)?;
    let searched = start.elapsed();
    let mut stdout = std::io::stdout().lock();
    for (rank, hit) in found.iter().enumerate() {
        // Keep one line per hit even for multi-line captions.
        let caption = hit.caption.as_deref().unwrap_or_default().replace(['\t', '\n', '\r'], " ");
        writeln!(stdout, "{}\t{}\t{:.6}\t{caption}", rank + 1, hit.id, hit.score)?;
    }
    eprintln!(
        "load {:.0} ms, encode {:.1} ms, search {:.2} ms {}",
        loaded.as_secs_f64() * 1e3,
        (encoded - loaded).as_secs_f64() * 1e3,
        (searched - encoded).as_secs_f64() * 1e3,
        gallery.describe(),
    );
    Ok(())
}

/// The gallery given instead of files: a bundle file, or a database table.
fn given_gallery(
    encoder: &Encoder,
    bundle: Option<PathBuf>,
    db: Option<&str>,
    table: Option<String>,
    kind: tuwen::bundle::Kind,
) -> Result<Option<Gallery>> {
    Ok(match (bundle, db, table) {
        (Some(path), _, _) => Some(Gallery::open_file(&path)?),
        (None, Some(url), Some(table)) => Some(Gallery::open_table(url, &table, &encoder.stamp()?, Some(kind), false)?),
        (None, Some(_), None) => bail!("--db needs the table to read: --image-table / --text-table"),
        _ => None,
    })
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

    let encoder = load(model, towers)?;
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
