//! Activation buffers reused across layers and calls, as the GPU backend pools its buffers: after the first
//! forward pass of a shape, the CPU backend allocates nothing. A buffer goes back to the pool when dropped;
//! a taken buffer keeps whatever it held (every op overwrites what it takes), so nothing is zeroed twice.

use crate::model::q8::Q8Rows;
use std::sync::Mutex;

/// Buffers kept for reuse at most (an encoder layer holds ~5 at once; both towers and a few threads fit).
const KEEP: usize = 32;

static FLOATS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static QUANTS: Mutex<Vec<Q8Rows>> = Mutex::new(Vec::new());

/// `len` floats from the pool (contents unspecified), returned to it on drop. They start on a 64-byte
/// boundary, so a product's 16-column tile row is one cache line (the allocator's 16-byte alignment made
/// each store straddle two, one of them shared with the neighbouring job's columns, and the kernel's
/// prefetch of the line missed half of it).
pub struct Floats {
    data: Vec<f32>,
    start: usize,
    len: usize,
}

/// Floats to skip from `data`'s start to reach a 64-byte boundary.
fn aligned_start(data: &[f32]) -> usize {
    (data.as_ptr() as usize).wrapping_neg() % 64 / 4
}

impl Floats {
    pub fn take(len: usize) -> Self {
        let mut pool = FLOATS.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest pooled buffer that is large enough.
        let fits = |v: &Vec<f32>| v.len() >= aligned_start(v) + len;
        let best = pool.iter().enumerate().filter(|(_, v)| fits(v)).min_by_key(|(_, v)| v.len()).map(|(i, _)| i);
        let data = match best {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                vec![0f32; len + 64 / 4 - 1]
            }
        };
        Self { start: aligned_start(&data), data, len }
    }

    /// A pooled copy of `values`.
    pub fn copy_of(values: &[f32]) -> Self {
        let mut buf = Self::take(values.len());
        buf.copy_from_slice(values);
        buf
    }
}

impl std::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[self.start..][..self.len]
    }
}

impl std::ops::DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[self.start..][..self.len]
    }
}

impl Drop for Floats {
    fn drop(&mut self) {
        let mut pool = FLOATS.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < KEEP {
            pool.push(std::mem::take(&mut self.data));
        }
    }
}

/// A quantized-activation buffer from the pool, returned to it on drop.
pub struct Quants(Option<Q8Rows>);

impl Quants {
    pub fn take() -> Self {
        let reused = QUANTS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Self(Some(reused.unwrap_or_default()))
    }
}

impl std::ops::Deref for Quants {
    type Target = Q8Rows;
    fn deref(&self) -> &Q8Rows {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Quants {
    fn deref_mut(&mut self) -> &mut Q8Rows {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for Quants {
    fn drop(&mut self) {
        let mut pool = QUANTS.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < KEEP {
            pool.extend(self.0.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Floats;

    #[test]
    fn floats_start_on_a_cache_line() {
        let held: Vec<Floats> = [1, 15, 16, 17, 1000, 1 << 20].iter().map(|&n| Floats::take(n)).collect();
        for f in &held {
            assert_eq!(f.as_ptr() as usize % 64, 0, "{} floats", f.len());
        }
        drop(held);
        // Reused buffers too, whatever length is asked of them.
        for n in [3, 999, 1 << 19] {
            let f = Floats::take(n);
            assert_eq!((f.as_ptr() as usize % 64, f.len()), (0, n));
        }
    }
}
