// out[r] = src[ids[r]]: embedding lookup, and picking each sequence's first ([CLS]) row.

struct Shape {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 64u;
    if (i >= shape.rows * shape.cols) {
        return;
    }
    let r = i / shape.cols;
    output[i] = src[ids[r] * shape.cols + i % shape.cols];
}
