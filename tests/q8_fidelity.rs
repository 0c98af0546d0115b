//! The bounds the quantized tests hold q8_0 to (tests/common: cosine to the f32 model per input and on
//! average) must catch a wrong kernel, not only pass a right one. This binary breaks every q8_0 product on
//! purpose (a process-wide switch, hence a test binary of its own) and checks the bounds then fail.

mod common;
use common::*;
use tuwen::model::q8::fault;
use tuwen::{Encoder, Towers};

#[test]
fn the_q8_bounds_pass_the_kernels_and_catch_a_broken_product() {
    let f32_model = Encoder::from_dir(&tiny_model(), Towers::Both).unwrap();
    let q8 = Encoder::from_gguf_bytes(&tiny_q8_0_gguf(), Towers::Both).unwrap();
    let reference = fixture_embeddings(&f32_model);

    let before = fixture_embeddings(&q8);
    let healthy = fidelity(&before, &reference);
    eprintln!("q8_0 vs f32: mean cosine {:.6}, min {:.6}", healthy.0, healthy.1);
    assert!(meets_q8_bounds(healthy), "healthy q8_0: {healthy:?}");

    fault::drop_last_group_of_every_block(true);
    let broken = fidelity(&fixture_embeddings(&q8), &reference);
    fault::drop_last_group_of_every_block(false);
    eprintln!("q8_0 with every product missing 4 of each 32 values: mean cosine {:.6}, min {:.6}", broken.0, broken.1);
    assert!(!meets_q8_bounds(broken), "a broken product passed the bounds: {broken:?}");

    // Switched back, the kernels compute what they did before: the same bits.
    assert_eq!(fixture_embeddings(&q8), before);
}
