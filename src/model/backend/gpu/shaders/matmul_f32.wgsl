// f32 product (appended to matmul_epilogue.wgsl): `x · Wᵀ` with both operands stored along the reduction
// (activations `[rows][inner]`, weights PyTorch's `[cols][inner]`), for f32 checkpoints and the patch
// embedding. A workgroup computes a 64×64 tile, each thread 4×4 of it, over 16-deep slices staged in
// workgroup memory (rows 17 floats apart against bank conflicts).

@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
const STRIDE: u32 = 17u;

var<workgroup> a_tile: array<f32, 1088>;
var<workgroup> b_tile: array<f32, 1088>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
    let row0 = group.y * TILE;
    let col0 = group.x * TILE;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < shape.inner; k0 += DEPTH) {
        for (var i = lane; i < TILE * DEPTH; i += 256u) {
            let r = i / DEPTH;
            let k = k0 + i % DEPTH;
            var a = 0.0;
            if (row0 + r < shape.rows && k < shape.inner) {
                a = x[(row0 + r) * shape.inner + k];
            }
            a_tile[r * STRIDE + i % DEPTH] = a;
            var w = 0.0;
            if (col0 + r < shape.cols && k < shape.inner) {
                w = weight[(col0 + r) * shape.inner + k];
            }
            b_tile[r * STRIDE + i % DEPTH] = w;
        }
        workgroupBarrier();
        for (var k = 0u; k < DEPTH; k++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[(local.y + 16u * i) * STRIDE + k];
                b[i] = b_tile[(local.x + 16u * i) * STRIDE + k];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
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
