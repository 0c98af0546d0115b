// Activations → 7-bit blocks for matmul_q8.wgsl, one thread per 32-value block, exactly as the CPU
// quantizes them: scale = max |x| / 63, values × 1/scale rounded to nearest (ties to even), packed 4 per word
// as signed bytes (the CPU stores them + 64 for its u8 × i8 instructions; dot4I8Packed takes them signed).

struct Shape {
    blocks: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> quants: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let block = id.x + id.y * groups.x * 64u;
    if (block >= shape.blocks) {
        return;
    }
    let base = block * 32u;
    var amax = 0.0;
    for (var k = 0u; k < 32u; k++) {
        amax = max(amax, abs(x[base + k]));
    }
    let scale = amax / 63.0;
    var inv = 0.0;
    if (scale != 0.0) {
        inv = 1.0 / scale;
    }
    for (var w = 0u; w < 8u; w++) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let q = i32(round(x[base + w * 4u + j] * inv));
            word |= (bitcast<u32>(q) & 0xffu) << (8u * j);
        }
        quants[block * 8u + w] = word;
    }
    scales[block] = scale;
}
