// Each row scaled to unit L2 norm (norm clamped at 1e-12, as the CPU path does), one workgroup per row.

struct Shape {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let base = group.x * shape.cols;
    var s = 0.0;
    for (var c = lane; c < shape.cols; c += 64u) {
        s += x[base + c] * x[base + c];
    }
    partial[lane] = s;
    workgroupBarrier();
    for (var half = 32u; half > 0u; half >>= 1u) {
        if (lane < half) {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    let norm = max(sqrt(partial[0]), 1e-12);
    for (var c = lane; c < shape.cols; c += 64u) {
        output[base + c] = x[base + c] / norm;
    }
}
