// Embedding gather from a repacked GGUF table (any format of common/dequant.wgsl), e.g.
// SmolLM2's Q8_0 tied embedding or Gemma 3's 262144 x 640 table split across bindings:
// y[i, :] = scale * table[ids[i], :] (scale 1, or Gemma's sqrt(hidden), applied in f32 before the
// store as Hugging Face scales the looked-up rows). The table part bound here holds rows row_start .. row_start +
// rows; ids in other parts are left to their part's dispatch. Ids past the vocabulary give
// zeros (written by the part starting at row 0). One invocation per eight output values.
#include "common/ids"
#include "common/dequant"

struct Params {
    n_ids: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
    vocab: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T>;
@group(0) @binding(2) var<storage, read> token_ids: array<u32>;
@group(0) @binding(3) var<storage, read> wq: array<u32>;
#ifdef HAS_SCALES
@group(0) @binding(4) var<storage, read> ws: array<u32>;
#endif

@compute @workgroup_size(WG)
fn embedding_quant_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gid = group_id(wg, nwg) * WG + ids.lid;
    let groups = p.dim / 8u;
    if (gid >= p.n_ids * groups) {
        return;
    }
    let i = gid / groups;
    let g = gid % groups;
    let id = token_ids[i];
    let o = i * p.dim + 8u * g;
    if (id >= p.vocab) {
        if (p.row_start == 0u) {
            for (var j = 0u; j < 8u; j++) {
                y[o + j] = T(0.0);
            }
        }
        return;
    }
    if (id < p.row_start || id >= p.row_start + p.rows) {
        return;
    }
    let w = load8(id - p.row_start, g, p.dim / BLOCK);
    for (var j = 0u; j < 4u; j++) {
        y[o + j] = T(w.a[j] * p.scale);
        y[o + 4u + j] = T(w.b[j] * p.scale);
    }
}
