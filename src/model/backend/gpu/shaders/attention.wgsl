// Attention for one query row of one head per workgroup, scale + mask + softmax fused: the scores never
// leave workgroup memory. Reads query, key and value from the stacked `[batch·seq, 3·hidden]` product; the
// first `queries` rows of each sequence are queries (all of them, or only the [CLS] token's).

struct Shape {
    seq: u32,
    heads: u32,
    head_dim: u32,
    hidden: u32,
    has_mask: u32,
    scale: f32,
    queries: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> mask_bias: array<f32>;   // [batch][seq], added to every query's scores
@group(0) @binding(3) var<storage, read_write> output: array<f32>; // [batch·queries][hidden]

const MAX_SEQ: u32 = 1024u;
const MAX_HEAD_DIM: u32 = 256u;

var<workgroup> scores: array<f32, MAX_SEQ>;
var<workgroup> query: array<f32, MAX_HEAD_DIM>;
var<workgroup> partial: array<f32, 64>;

fn reduce(lane: u32, value: f32, take_max: bool) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var half = 32u; half > 0u; half >>= 1u) {
        if (lane < half) {
            if (take_max) {
                partial[lane] = max(partial[lane], partial[lane + half]);
            } else {
                partial[lane] += partial[lane + half];
            }
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let i = group.x;
    let batch = group.y / shape.heads;
    let head = group.y % shape.heads;
    let stride = 3u * shape.hidden;
    let first = batch * shape.seq;
    let q_base = (first + i) * stride + head * shape.head_dim;
    for (var d = lane; d < shape.head_dim; d += 64u) {
        query[d] = qkv[q_base + d];
    }
    workgroupBarrier();

    var local_max = -0x1.fffffep+127f; // -f32::MAX, spelt exactly
    for (var j = lane; j < shape.seq; j += 64u) {
        let k_base = (first + j) * stride + shape.hidden + head * shape.head_dim;
        var s = 0.0;
        for (var d = 0u; d < shape.head_dim; d++) {
            s = fma(query[d], qkv[k_base + d], s);
        }
        s *= shape.scale;
        if (shape.has_mask != 0u) {
            s += mask_bias[first + j];
        }
        scores[j] = s;
        local_max = max(local_max, s);
    }
    let top = reduce(lane, local_max, true);
    var local_sum = 0.0;
    for (var j = lane; j < shape.seq; j += 64u) {
        let e = exp(scores[j] - top);
        scores[j] = e;
        local_sum += e;
    }
    let total = reduce(lane, local_sum, false);

    let v_base = first * stride + 2u * shape.hidden + head * shape.head_dim;
    for (var d = lane; d < shape.head_dim; d += 64u) {
        var o = 0.0;
        for (var j = 0u; j < shape.seq; j++) {
            o = fma(scores[j], qkv[v_base + j * stride + d], o);
        }
        output[(batch * shape.queries + i) * shape.hidden + head * shape.head_dim + d] = o / total;
    }
}
