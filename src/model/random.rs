//! Random weights in the released checkpoint's layout (names, shapes, dtype), for tests, benchmarks
//! and demos on machines that cannot download the real weights. The tensor list is not written down
//! anywhere: loading the model through [`RandomWeights`] records exactly the tensors the loader asks for.

use super::{ChineseClip, Towers};
use crate::config::{ClipConfig, PreprocessConfig};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use crate::weights::RANDOM_WEIGHTS_KEY;

/// `n` values in [-1, 1) from a seeded linear congruential generator: the same on every target and every
/// run (the kernels' tests and benchmarks compare on them).
pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `VarBuilder` backend that invents every tensor asked of it and keeps them.
struct RandomWeights {
    state: Arc<Mutex<(StdRng, BTreeMap<String, Tensor>)>>,
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, hint: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut state = self.state.lock().unwrap();
        let (rng, tensors) = &mut *state;
        // Same std as HF's `initializer_range`; layer-norm gains (hinted 1.0) jitter around 1.
        let centre = match hint {
            Init::Const(c) if c == 1.0 => 1.0,
            _ => 0.0,
        };
        let normal = Normal::new(centre, 0.02f32).expect("valid std");
        let values: Vec<f32> = (0..shape.elem_count()).map(|_| normal.sample(rng)).collect();
        let tensor = Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?;
        tensors.insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// All tensors of a full Chinese-CLIP checkpoint for `config`, drawn from a seeded RNG.
pub fn random_checkpoint(config: &ClipConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let state = Arc::new(Mutex::new((StdRng::seed_from_u64(seed), BTreeMap::new())));
    let backend = RandomWeights { state: state.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    ChineseClip::load(super::Cpu, &super::Params::from_var_builder(vb), config, Towers::Both).map_err(candle_core::Error::wrap)?;
    let mut tensors = std::mem::take(&mut state.lock().unwrap().1);
    tensors.insert("logit_scale".into(), Tensor::new(config.logit_scale_init_value as f32, &Device::Cpu)?);
    Ok(tensors)
}

/// Writes a model directory with random weights in the released layout: the given `config.json` and
/// vocabulary, a matching `preprocessor_config.json`, and `model.safetensors` marked as random.
pub fn write_random_model(config_path: &Path, vocab_path: &Path, out: &Path, seed: u64) -> anyhow::Result<()> {
    use crate::tokenize::TextTokenizer;
    use crate::weights::hf;
    use anyhow::Context;
    let config = ClipConfig::from_file(config_path)?;
    let vocab = std::fs::read_to_string(vocab_path).with_context(|| format!("reading {}", vocab_path.display()))?;
    let tokenizer = TextTokenizer::from_vocab_txt(&vocab).with_context(|| format!("in {}", vocab_path.display()))?;
    crate::weights::hf::check_vocab_fits(&tokenizer, vocab_path, &config, config_path)?;
    let tensors = random_checkpoint(&config, seed)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let config_json = std::fs::read(config_path).with_context(|| format!("reading {}", config_path.display()))?;
    std::fs::write(out.join(hf::CONFIG_FILE), config_json).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(out.join(hf::VOCAB_FILE), vocab).with_context(|| format!("writing {}", out.display()))?;
    let preprocessor = serde_json::json!({
        "do_center_crop": false, "do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
        "do_resize": true, "image_mean": PreprocessConfig::CLIP_MEAN, "image_std": PreprocessConfig::CLIP_STD,
        "image_processor_type": "ChineseCLIPImageProcessor", "resample": 3,
        "rescale_factor": 1.0 / 255.0,
        "size": {"height": config.vision_config.image_size, "width": config.vision_config.image_size},
    });
    std::fs::write(out.join(hf::PREPROCESSOR_FILE), serde_json::to_string_pretty(&preprocessor)?)?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (RANDOM_WEIGHTS_KEY.to_string(), format!("random weights from `tuwen init-random --seed {seed}`")),
    ]);
    // Write to a temporary name first so an interrupted run never leaves a half-written model.
    let tmp = out.join(format!("{}.partial", hf::SAFETENSORS_FILE));
    safetensors::serialize_to_file(tensors.iter(), Some(metadata), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out.join(hf::SAFETENSORS_FILE))?;
    Ok(())
}
