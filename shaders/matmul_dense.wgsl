// Dense matrix product of two float tensors: C[i, j] (+)= alpha * sum_k A(i, k) * B(k, j),
// for the small trainable matrices (LoRA A and B) and the weight gradients of training, where
// neither side is a GGUF weight. Layouts (row-major storage):
//   A(i, k) = a[i * K + k]            or, TRANS_A, a[k * M + i]   (dW = dY^T X: A = dY [K, M])
//   B(k, j) = b[k * N + j] (B_KN)     or           b[j * K + k]   (the Linear convention: y = x W^T)
// so forward (x W^T) is the default, dX = dY W is B_KN, and dW = dY^T X is TRANS_A + B_KN.
// A and C may be column blocks of wider rows (lda, a_offset; ldc, c_offset: e.g. the Q columns
// of a fused Q|K projection); the formulas above are for lda = K (M with TRANS_A), ldc = N.
// A is T; B is T or, B_F32, f32 (f32 master weights on the f16 path); C is T or, C_F32, f32
// (f32 gradients). Accumulation f32.
//
// Tiles: a workgroup computes a 16 x 16 block of C, one output per invocation, staging 16 x 16
// tiles of A and B in workgroup memory per step of k (zero-padded at the edges).
#include "common/ids"

#ifdef B_F32
alias TB = f32;
#else
alias TB = T;
#endif
#ifdef C_F32
alias TC = f32;
#else
alias TC = T;
#endif

const TILE: u32 = 16u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    alpha: f32,
    lda: u32,
    a_offset: u32,
    ldc: u32,
    c_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<TB>;
@group(0) @binding(3) var<storage, read_write> c: array<TC>;

var<workgroup> tile_a: array<f32, 256>;
var<workgroup> tile_b: array<f32, 256>;

fn load_a(i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= p.k) {
        return 0.0;
    }
#ifdef TRANS_A
    return f32(a[p.a_offset + kk * p.lda + i]);
#else
    return f32(a[p.a_offset + i * p.lda + kk]);
#endif
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (kk >= p.k || j >= p.n) {
        return 0.0;
    }
#ifdef B_KN
    return f32(b[kk * p.n + j]);
#else
    return f32(b[j * p.k + kk]);
#endif
}

@compute @workgroup_size(256)
fn matmul_dense(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tiles_n = (p.n + TILE - 1u) / TILE;
    let g = group_id(wg, nwg);
    let i0 = (g / tiles_n) * TILE;
    let j0 = (g % tiles_n) * TILE;
    let li = ids.lid / TILE;
    let lj = ids.lid % TILE;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        // tile_a[r][q] = A(i0 + r, k0 + q); tile_b[q][s] = B(k0 + q, j0 + s)
        tile_a[ids.lid] = load_a(i0 + li, k0 + lj);
        tile_b[ids.lid] = load_b(k0 + li, j0 + lj);
        workgroupBarrier();
        for (var q = 0u; q < TILE; q++) {
            acc += tile_a[li * TILE + q] * tile_b[q * TILE + lj];
        }
        workgroupBarrier();
    }
    let i = i0 + li;
    let j = j0 + lj;
    if (i < p.m && j < p.n) {
        let at = p.c_offset + i * p.ldc + j;
        var out = p.alpha * acc;
        if (p.accumulate != 0u) {
            out += f32(c[at]);
        }
        c[at] = TC(out);
    }
}
