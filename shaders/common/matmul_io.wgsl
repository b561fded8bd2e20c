// The bindings the float matmul kernels share: y (output), x (activations), the weight's quant
// stream wq and, for block formats, its scale stream ws, then an optional bias.
@group(0) @binding(1) var<storage, read_write> y: array<T>;
@group(0) @binding(2) var<storage, read> x: array<T>;
@group(0) @binding(3) var<storage, read> wq: array<u32>;
#ifdef HAS_SCALES
@group(0) @binding(4) var<storage, read> ws: array<u32>;
#ifdef BIAS
@group(0) @binding(5) var<storage, read> bias: array<T>;
#endif
#else
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<T>;
#endif
#endif
