// x[r] += table[r % period], in place: position embeddings added to every sequence of a batch.

struct Shape {
    rows: u32,
    cols: u32,
    period: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 64u;
    if (i >= shape.rows * shape.cols) {
        return;
    }
    let r = i / shape.cols;
    x[i] += table[(r % shape.period) * shape.cols + i % shape.cols];
}
