//! The WGSL kernels (`shaders/*.wgsl`), compiled once per device into compute pipelines.

pub(super) struct Kernel {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
}

pub(super) struct Kernels {
    pub(super) matmul_q8: Kernel,
    pub(super) matmul_f32: Kernel,
    pub(super) quantize_rows: Kernel,
    pub(super) layer_norm: Kernel,
    pub(super) attention: Kernel,
    pub(super) gather_rows: Kernel,
    pub(super) add_rows: Kernel,
    pub(super) l2_normalize: Kernel,
}

impl Kernels {
    pub(super) fn new(device: &wgpu::Device) -> Self {
        const EPILOGUE: &str = include_str!("shaders/matmul_epilogue.wgsl");
        let kernel = |name: &str, source: std::borrow::Cow<'static, str>| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            Kernel { layout: pipeline.get_bind_group_layout(0), pipeline }
        };
        let with_epilogue = |body: &str| format!("{EPILOGUE}\n{body}").into();
        Self {
            matmul_q8: kernel("matmul_q8", with_epilogue(include_str!("shaders/matmul_q8.wgsl"))),
            matmul_f32: kernel("matmul_f32", with_epilogue(include_str!("shaders/matmul_f32.wgsl"))),
            quantize_rows: kernel("quantize_rows", include_str!("shaders/quantize_rows.wgsl").into()),
            layer_norm: kernel("layer_norm", include_str!("shaders/layer_norm.wgsl").into()),
            attention: kernel("attention", include_str!("shaders/attention.wgsl").into()),
            gather_rows: kernel("gather_rows", include_str!("shaders/gather_rows.wgsl").into()),
            add_rows: kernel("add_rows", include_str!("shaders/add_rows.wgsl").into()),
            l2_normalize: kernel("l2_normalize", include_str!("shaders/l2_normalize.wgsl").into()),
        }
    }
}
