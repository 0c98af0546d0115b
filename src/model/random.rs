//! Random weights in the released checkpoint's layout (names, shapes, dtype), for tests, benchmarks
//! and demos on machines that cannot download the real weights. The tensor list is not written down
//! anywhere: loading the model through [`RandomWeights`] records exactly the tensors the loader asks for.

use super::{ChineseClip, Towers};
use crate::config::ClipConfig;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Safetensors metadata key marking a checkpoint as random (the value says how it was made).
pub const RANDOM_WEIGHTS_KEY: &str = "tuwen.random_weights";

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
