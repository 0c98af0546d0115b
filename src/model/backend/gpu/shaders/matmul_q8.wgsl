// q8_0 product (appended to matmul_epilogue.wgsl): activations quantized per 32-value block by
// quantize_rows.wgsl × weights in GGUF q8_0 blocks, one row of blocks per output column. Each block's
// dot product is exact in i32 (dot4I8Packed), then scaled by both blocks' scales and accumulated in f32 —
// the CPU kernels' arithmetic, so both backends agree to rounding.
//
// A workgroup computes a 64×64 output tile, each of its 16×16 threads a 4×4 patch (rows y, y+16, …;
// columns x, x+16, …). Per block, the tile's 64 activation rows and 64 weight columns (8 words each) are
// staged in workgroup memory, rows 9 words apart so neighbouring threads hit different banks.

@group(0) @binding(4) var<storage, read> x_quants: array<u32>;   // [rows][inner / 4], 4 × i8 per word
@group(0) @binding(5) var<storage, read> x_scales: array<f32>;   // [rows][inner / 32]
@group(0) @binding(6) var<storage, read> w_quants: array<u32>;   // [cols][inner / 4]
@group(0) @binding(7) var<storage, read> w_scales: array<f32>;   // [cols][inner / 32]

const TILE: u32 = 64u;
const WORDS: u32 = 8u;
const STRIDE: u32 = 9u;

var<workgroup> a_words: array<u32, 576>;
var<workgroup> b_words: array<u32, 576>;
var<workgroup> a_scales: array<f32, 64>;
var<workgroup> b_scales: array<f32, 64>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
    let row0 = group.y * TILE;
    let col0 = group.x * TILE;
    let blocks = shape.inner / 32u;
    let row_words = shape.inner / 4u;
    var acc: array<array<f32, 4>, 4>;
    for (var b = 0u; b < blocks; b++) {
        for (var i = lane; i < TILE * WORDS; i += 256u) {
            let r = i / WORDS;
            let word = b * WORDS + i % WORDS;
            var a = 0u;
            if (row0 + r < shape.rows) {
                a = x_quants[(row0 + r) * row_words + word];
            }
            a_words[r * STRIDE + i % WORDS] = a;
            var w = 0u;
            if (col0 + r < shape.cols) {
                w = w_quants[(col0 + r) * row_words + word];
            }
            b_words[r * STRIDE + i % WORDS] = w;
        }
        if (lane < TILE) {
            var s = 0.0;
            if (row0 + lane < shape.rows) {
                s = x_scales[(row0 + lane) * blocks + b];
            }
            a_scales[lane] = s;
        } else if (lane < 2u * TILE) {
            let c = lane - TILE;
            var s = 0.0;
            if (col0 + c < shape.cols) {
                s = w_scales[(col0 + c) * blocks + b];
            }
            b_scales[c] = s;
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let r = local.y + 16u * i;
            var a: array<u32, 8>;
            for (var w = 0u; w < WORDS; w++) {
                a[w] = a_words[r * STRIDE + w];
            }
            for (var j = 0u; j < 4u; j++) {
                let c = local.x + 16u * j;
                var dot = 0i;
                for (var w = 0u; w < WORDS; w++) {
                    dot += dot4I8Packed(a[w], b_words[c * STRIDE + w]);
                }
                acc[i][j] = fma(f32(dot), b_scales[c] * a_scales[r], acc[i][j]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(row0 + local.y + 16u * i, col0 + local.x + 16u * j, acc[i][j]);
        }
    }
}
