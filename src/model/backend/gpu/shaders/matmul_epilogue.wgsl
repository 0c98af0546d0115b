// The half both matmul kernels share: the shape, the epilogue's inputs, the output, and `store`, which
// applies bias → activation → residual as each result leaves the registers (no extra pass over the output).

struct Shape {
    rows: u32,         // activation rows
    cols: u32,         // output columns (the weight's rows)
    inner: u32,        // reduction length
    has_bias: u32,
    activation: u32,   // 0 none, 1 GELU (erf form, BERT), 2 quick GELU (CLIP)
    has_residual: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read> residual: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// WGSL has no erf and BERT's GELU is the exact one: Numerical Recipes' erfc fit, |error| < 1.2e-7.
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, x >= 0.0);
}

fn store(row: u32, col: u32, acc: f32) {
    if (row >= shape.rows || col >= shape.cols) {
        return;
    }
    var v = acc;
    if (shape.has_bias != 0u) {
        v += bias[col];
    }
    if (shape.activation == 1u) {
        v = 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
    } else if (shape.activation == 2u) {
        v = v / (1.0 + exp(-1.702 * v));
    }
    let i = row * shape.cols + col;
    if (shape.has_residual != 0u) {
        v += residual[i];
    }
    output[i] = v;
}
