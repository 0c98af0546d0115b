//! Checkpoints of the official Chinese-CLIP code (`cn_clip`): the released `clip_cn_*.pt` and what its
//! fine-tuning writes (`epoch_latest.pt`: `epoch`, `step`, `name`, `state_dict`, `optimizer`), fp32 or fp16,
//! keys with or without `module.`. Read as data only: the pickle is parsed, never run, and any class a
//! checkpoint does not need is refused. The architecture comes from the tensors' shapes; the tensors are
//! renamed to the HF layout the towers load (`transformers`' own converter does the same renaming).

use super::RANDOM_WEIGHTS_KEY;
use crate::config::{ClipConfig, PreprocessConfig, Recipe, TextConfig, Towers, VisionConfig};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// cn_clip's tokenizer vocabulary (`cn_clip/clip/vocab.txt`, the same for all five models): a `.pt` holds none.
pub const VOCAB_TXT: &str = include_str!("cn_clip_vocab.txt");

/// The classes a state dict (and a training checkpoint's optimizer state) is pickled with; anything else is
/// refused before a tensor is read.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// A cn_clip checkpoint, read and renamed to the HF layout.
pub struct Checkpoint {
    pub path: PathBuf,
    pub config: ClipConfig,
    pub preprocess: PreprocessConfig,
    /// "ViT-B/16 + RoBERTa-wwm-ext-base" and the like, for messages.
    pub architecture: String,
    /// f32, the towers' tensors under HF names.
    pub tensors: HashMap<String, Tensor>,
    /// Set by tuwen's own fixtures (a `tuwen.random_weights` entry beside the state dict).
    pub random_weights: Option<String>,
}

/// The two towers as the shapes describe them.
struct Shapes<'a>(&'a BTreeMap<String, Vec<usize>>);

impl Shapes<'_> {
    fn get(&self, name: &str) -> Result<&[usize]> {
        self.0.get(name).map(Vec::as_slice).ok_or_else(|| anyhow!("missing tensor {name}"))
    }

    fn dims<const N: usize>(&self, name: &str) -> Result<[usize; N]> {
        let d = self.get(name)?;
        d.try_into().map_err(|_| anyhow!("tensor {name} has shape {d:?}, expected {N} dimensions"))
    }

    /// How many `prefix{i}.` blocks there are; they must be numbered 0‥n.
    fn count(&self, prefix: &str) -> Result<usize> {
        let found: BTreeSet<usize> = self
            .0
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect();
        let n = found.len();
        if found.iter().enumerate().any(|(i, &j)| i != j) {
            bail!("layers {prefix}* are numbered {found:?}, not 0‥{}", n.saturating_sub(1));
        }
        Ok(n)
    }
}

const TEXT_LAYER: &[&str] = &[
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias", "attention.output.dense.weight",
    "attention.output.dense.bias", "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
];
const TEXT_TOP: &[&str] = &[
    "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias",
    "text_projection",
];
const VIT_LAYER: &[&str] = &[
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight", "ln_1.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias",
];
const VIT_TOP: &[&str] = &[
    "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
    "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias", "visual.proj",
];
/// In the file, not used by the encoders.
fn ignored(name: &str) -> bool {
    name == "logit_scale" || name.starts_with("bert.pooler.") || name == "bert.embeddings.position_ids"
}

/// The text tower's config from its shapes (RoBERTa-wwm: 64-wide heads, GELU, eps 1e-12).
fn text_config(s: &Shapes) -> Result<(TextConfig, usize)> {
    let [vocab_size, hidden_size] = s.dims("bert.embeddings.word_embeddings.weight")?;
    let [max_positions, _] = s.dims("bert.embeddings.position_embeddings.weight")?;
    let [type_vocab_size, _] = s.dims("bert.embeddings.token_type_embeddings.weight")?;
    let [intermediate_size, _] = s.dims("bert.encoder.layer.0.intermediate.dense.weight")?;
    let [_, projection_dim] = s.dims("text_projection")?;
    if hidden_size % 64 != 0 {
        bail!("the text tower is {hidden_size} wide, not a multiple of cn_clip's 64-wide attention heads");
    }
    let config = TextConfig {
        vocab_size,
        hidden_size,
        num_hidden_layers: s.count("bert.encoder.layer.")?,
        num_attention_heads: hidden_size / 64,
        intermediate_size,
        hidden_act: "gelu".into(),
        max_position_embeddings: max_positions,
        type_vocab_size,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: "absolute".into(),
    };
    Ok((config, projection_dim))
}

/// The ViT's config from its shapes. The head width is not in the file: cn_clip's configs give 64, and 80 for
/// ViT-H/14 (the only 1280-wide one).
fn vit_config(s: &Shapes) -> Result<(VisionConfig, usize)> {
    let [width, channels, patch, patch_w] = s.dims("visual.conv1.weight")?;
    if channels != 3 || patch != patch_w {
        bail!("visual.conv1.weight has shape {:?}: not a ViT patch embedding", [width, channels, patch, patch_w]);
    }
    let [positions, _] = s.dims("visual.positional_embedding")?;
    let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != positions {
        bail!("visual.positional_embedding has {positions} rows, not a square grid of patches plus one");
    }
    let [_, projection_dim] = s.dims("visual.proj")?;
    let [intermediate_size, _] = s.dims("visual.transformer.resblocks.0.mlp.c_fc.weight")?;
    let head_width = if width == 1280 { 80 } else { 64 };
    if width % head_width != 0 {
        bail!("the image tower is {width} wide, not a multiple of cn_clip's {head_width}-wide attention heads");
    }
    let config = VisionConfig {
        hidden_size: width,
        intermediate_size,
        num_hidden_layers: s.count("visual.transformer.resblocks.")?,
        num_attention_heads: width / head_width,
        num_channels: 3,
        image_size: grid * patch,
        patch_size: patch,
        hidden_act: "quick_gelu".into(),
        layer_norm_eps: 1e-5,
    };
    Ok((config, projection_dim))
}

/// The cn_clip names the architecture has, for the missing/unexpected checks.
fn expected_names(text: &TextConfig, vision: Option<&VisionConfig>) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = TEXT_TOP.iter().map(|s| s.to_string()).collect();
    for i in 0..text.num_hidden_layers {
        names.extend(TEXT_LAYER.iter().map(|n| format!("bert.encoder.layer.{i}.{n}")));
    }
    if let Some(v) = vision {
        names.extend(VIT_TOP.iter().map(|s| s.to_string()));
        for i in 0..v.num_hidden_layers {
            names.extend(VIT_LAYER.iter().map(|n| format!("visual.transformer.resblocks.{i}.{n}")));
        }
    }
    names
}

fn architecture_name(text: &TextConfig, vision: Option<&VisionConfig>) -> String {
    let vision = match vision {
        None => "RN50".to_string(),
        Some(v) => match (v.hidden_size, v.patch_size, v.image_size) {
            (768, 16, 224) => "ViT-B/16".into(),
            (768, 32, 224) => "ViT-B/32".into(),
            (1024, 14, 224) => "ViT-L/14".into(),
            (1024, 14, 336) => "ViT-L/14@336".into(),
            (1280, 14, 224) => "ViT-H/14".into(),
            (w, p, r) => format!("ViT (width {w}, patch {p}, {r} px)"),
        },
    };
    let text = match (text.hidden_size, text.num_hidden_layers) {
        (768, 12) => "RoBERTa-wwm-ext-base".into(),
        (1024, 24) => "RoBERTa-wwm-ext-large".into(),
        (768, 3) => "RBT3".into(),
        (h, l) => format!("RoBERTa (width {h}, {l} layer{})", if l == 1 { "" } else { "s" }),
    };
    format!("{vision} + {text}")
}

/// The pickled object of a torch zip archive, checked to hold only data and tensors.
fn read_pickle(path: &Path) -> Result<Object> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow!("not a complete PyTorch checkpoint (its zip archive is damaged or truncated: {e})"))?;
    let names = zip.file_names().map(|n| n.map(|n| n.into_owned())).collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| anyhow!("not a PyTorch checkpoint: a file name in its zip archive is unreadable ({e})"))?;
    let pickles: Vec<String> = names.into_iter().filter(|n| n.ends_with("/data.pkl") || n == "data.pkl").collect();
    let [pickle] = pickles.as_slice() else {
        bail!("not a PyTorch checkpoint: the zip archive holds {} data.pkl files, not one", pickles.len());
    };
    let mut bytes = Vec::new();
    zip.by_name(pickle)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
        .map_err(|e| anyhow!("reading {pickle} in the archive: {e}"))?;
    let mut stack = Stack::empty();
    let mut reader = std::io::BufReader::new(bytes.as_slice());
    stack.read_loop(&mut reader).map_err(|e| anyhow!("{pickle}: not a pickle tuwen reads ({e})"))?;
    let object = stack.finalize().map_err(|e| anyhow!("{pickle}: not a pickle tuwen reads ({e})"))?;
    refuse_unknown_globals(&object)?;
    Ok(object)
}

/// Errors on the first class outside `ALLOWED_GLOBALS` (whatever it is, it was only named, never called).
fn refuse_unknown_globals(object: &Object) -> Result<()> {
    match object {
        Object::Class { module_name, class_name } => {
            if !ALLOWED_GLOBALS.contains(&(module_name.as_str(), class_name.as_str())) {
                bail!(
                    "the checkpoint's pickle refers to {module_name}.{class_name}, which a state dict does not need: \
                     refused (tuwen reads tensors and plain data from a checkpoint and never runs code from it)"
                );
            }
            Ok(())
        }
        Object::Tuple(items) | Object::List(items) => items.iter().try_for_each(refuse_unknown_globals),
        Object::Dict(items) => items.iter().try_for_each(|(k, v)| {
            refuse_unknown_globals(k)?;
            refuse_unknown_globals(v)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            refuse_unknown_globals(callable)?;
            refuse_unknown_globals(args)
        }
        Object::PersistentLoad(inner) => refuse_unknown_globals(inner),
        _ => Ok(()),
    }
}

fn dict_get<'a>(items: &'a [(Object, Object)], key: &str) -> Option<&'a Object> {
    items.iter().find(|(k, _)| matches!(k, Object::Unicode(s) if s == key)).map(|(_, v)| v)
}

/// Reads a cn_clip checkpoint: the towers asked for, renamed and f32.
pub fn read(path: &Path, towers: Towers) -> Result<Checkpoint> {
    read_inner(path, towers).with_context(|| format!("{}", path.display()))
}

fn read_inner(path: &Path, towers: Towers) -> Result<Checkpoint> {
    let object = read_pickle(path)?;
    let Object::Dict(top) = &object else {
        bail!("not a Chinese-CLIP checkpoint: the file holds a pickled object, not a dict of tensors");
    };
    let random_weights = match dict_get(top, RANDOM_WEIGHTS_KEY) {
        Some(Object::Unicode(s)) => Some(s.clone()),
        _ => None,
    };
    let key = dict_get(top, "state_dict").map(|_| "state_dict");
    let pth = PthTensors::new(path, key).map_err(|e| anyhow!("reading the tensor index: {e}"))?;
    // Keys as cn_clip names them (fine-tuning saves the DistributedDataParallel wrapper's `module.`).
    let stored: HashMap<String, String> = pth
        .tensor_infos()
        .keys()
        .map(|k| (k.strip_prefix("module.").unwrap_or(k).to_string(), k.clone()))
        .collect();
    if stored.is_empty() {
        bail!("not a Chinese-CLIP checkpoint: it holds no tensors{}", if key.is_some() { " under state_dict" } else { "" });
    }
    let shapes: BTreeMap<String, Vec<usize>> =
        stored.iter().map(|(name, key)| (name.clone(), pth.tensor_infos()[key].layout.dims().to_vec())).collect();
    if !shapes.contains_key("bert.embeddings.word_embeddings.weight") || !shapes.keys().any(|k| k.starts_with("visual.")) {
        let some: Vec<&str> = shapes.keys().take(4).map(String::as_str).collect();
        bail!(
            "not a Chinese-CLIP checkpoint of the official code: no bert.* text tower and visual.* image tower \
             (its tensors start {some:?}); an HF model directory or a tuwen GGUF is given as a directory or a .gguf"
        );
    }
    let s = Shapes(&shapes);
    let (text, text_dim) = text_config(&s).context("the text tower (bert.*)")?;
    let resnet = shapes.contains_key("visual.layer1.0.conv1.weight");
    let vision = if resnet { None } else { Some(vit_config(&s).context("the image tower (visual.*)")?) };
    let architecture = architecture_name(&text, vision.as_ref().map(|v| &v.0));
    if let Some((_, dim)) = &vision {
        if *dim != text_dim {
            bail!("visual.proj projects to {dim} dimensions but text_projection to {text_dim}");
        }
    }
    if resnet && towers.vision() {
        bail!(
            "{architecture}: the ResNet-50 image tower does not run in tuwen yet; its text tower does (what embeds \
             texts only, e.g. `tuwen embed --text`); the ViT models (ViT-B/16, ViT-L/14, ViT-L/14@336, ViT-H/14) \
             run both towers"
        );
    }
    let expected = expected_names(&text, vision.as_ref().map(|v| &v.0));
    let present: BTreeSet<&String> = shapes.keys().filter(|k| !ignored(k)).collect();
    let unexpected: Vec<&str> =
        present.iter().filter(|k| !expected.contains(k.as_str()) && !(resnet && k.starts_with("visual."))).map(|k| k.as_str()).collect();
    if !unexpected.is_empty() {
        bail!("tensors a {architecture} Chinese-CLIP does not have: {}", list(&unexpected));
    }
    let wanted = |name: &str| if name.starts_with("visual.") { towers.vision() } else { towers.text() };
    let missing: Vec<&str> = expected.iter().filter(|n| wanted(n) && !shapes.contains_key(*n)).map(String::as_str).collect();
    if !missing.is_empty() {
        bail!("a {architecture} Chinese-CLIP's tensors missing from the file: {}", list(&missing));
    }

    let load = |name: &str| -> Result<Tensor> {
        let t = pth
            .get(&stored[name])
            .map_err(|e| anyhow!("reading tensor {name}: {e}"))?
            .ok_or_else(|| anyhow!("tensor {name} is not in the archive"))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let mut tensors = HashMap::new();
    if towers.text() {
        for name in expected.iter().filter(|n| !n.starts_with("visual.")) {
            let t = load(name)?;
            if name == "text_projection" {
                tensors.insert("text_projection.weight".to_string(), t.t()?.contiguous()?);
            } else {
                tensors.insert(format!("text_model.{}", name.strip_prefix("bert.").unwrap()), t);
            }
        }
    }
    if let (true, Some((v, _))) = (towers.vision(), &vision) {
        let h = v.hidden_size;
        let vm = |rest: &str| format!("vision_model.{rest}");
        tensors.insert(vm("embeddings.patch_embedding.weight"), load("visual.conv1.weight")?);
        tensors.insert(vm("embeddings.class_embedding"), load("visual.class_embedding")?);
        tensors.insert(vm("embeddings.position_embedding.weight"), load("visual.positional_embedding")?);
        for (from, to) in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")] {
            for p in ["weight", "bias"] {
                tensors.insert(vm(&format!("{to}.{p}")), load(&format!("visual.{from}.{p}"))?);
            }
        }
        tensors.insert("visual_projection.weight".into(), load("visual.proj")?.t()?.contiguous()?);
        for i in 0..v.num_hidden_layers {
            let from = |n: &str| format!("visual.transformer.resblocks.{i}.{n}");
            let to = |n: &str| vm(&format!("encoder.layers.{i}.{n}"));
            // nn.MultiheadAttention keeps query, key and value stacked in one matrix, in that order. A
            // narrowed view would share the stacked storage, which the GGUF writer reads whole: `force_contiguous` copies.
            let (w, b) = (load(&from("attn.in_proj_weight"))?, load(&from("attn.in_proj_bias"))?);
            for (j, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                tensors.insert(to(&format!("self_attn.{part}.weight")), w.narrow(0, j * h, h)?.force_contiguous()?);
                tensors.insert(to(&format!("self_attn.{part}.bias")), b.narrow(0, j * h, h)?.force_contiguous()?);
            }
            for (f, t) in [
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
                ("ln_2", "layer_norm2"),
            ] {
                for p in ["weight", "bias"] {
                    tensors.insert(to(&format!("{t}.{p}")), load(&from(&format!("{f}.{p}")))?);
                }
            }
        }
    }
    let vision_config = vision.map(|v| v.0).unwrap_or_default();
    let config = ClipConfig { projection_dim: text_dim, logit_scale_init_value: 2.6592, text_config: text, vision_config };
    if !resnet {
        config.validate().with_context(|| format!("the {architecture} shapes"))?;
    }
    let preprocess = PreprocessConfig { recipe: Recipe::CnClip, ..PreprocessConfig::for_vision(&config.vision_config) };
    Ok(Checkpoint { path: path.to_path_buf(), config, preprocess, architecture, tensors, random_weights })
}

fn list(names: &[&str]) -> String {
    let shown: Vec<&str> = names.iter().take(6).copied().collect();
    let more = names.len().saturating_sub(shown.len());
    format!("{}{}", shown.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() })
}
