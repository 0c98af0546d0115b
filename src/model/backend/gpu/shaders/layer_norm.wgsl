// Layer norm over each row, one workgroup per row: mean, then variance of the centred values (two passes,
// as candle does, rather than E[x²] − E[x]², which cancels badly).

struct Shape {
    rows: u32,
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

var<workgroup> partial: array<f32, 256>;

fn sum_over_workgroup(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (lane < half) {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
    let row = group.x + group.y * groups.x;
    if (row >= shape.rows) {
        return;
    }
    let base = row * shape.cols;
    var s = 0.0;
    for (var c = lane; c < shape.cols; c += 256u) {
        s += x[base + c];
    }
    let mean = sum_over_workgroup(lane, s) / f32(shape.cols);
    var s2 = 0.0;
    for (var c = lane; c < shape.cols; c += 256u) {
        let d = x[base + c] - mean;
        s2 += d * d;
    }
    let inv_std = 1.0 / sqrt(sum_over_workgroup(lane, s2) / f32(shape.cols) + shape.eps);
    for (var c = lane; c < shape.cols; c += 256u) {
        output[base + c] = (x[base + c] - mean) * inv_std * weight[c] + bias[c];
    }
}
