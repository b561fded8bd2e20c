// Quantized matrix-matrix products for prefill and training, tiled in workgroup memory.
//   default:     y[M, N] (+)= x[M, K] · Wᵀ (+ bias)      (forward)
//   TRANSPOSED:  y[M, K] (+)= x[M, N] · W                (dX = dY · W through a frozen W)
// W is one row-part of a repacked GGUF matrix (common/dequant.wgsl) with `n` rows of `k`
// columns; the part covers columns row_offset .. row_offset+n of the forward output (and of
// x in TRANSPOSED mode, whose row stride is then x_stride).
// Tiles: 64 x 64 outputs per workgroup of 256 invocations (4 x 4 each), reduction steps of
// 32; x and dequantized W tiles are staged as f32 in 2 x 8 KiB of workgroup memory (the
// WebGPU default limit is 16 KiB). Grid: x over output-column tiles, y over row tiles.
#include "common/dequant"

struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    y_stride: u32,
    accumulate: u32,
    x_stride: u32,
}

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
#include "common/matmul_io"

// Tiles stored reduction-index-major as vec4s: xs[kk * 16 + i] holds rows 4i..4i+3 of the
// x tile at reduction index kk, wt[kk * 16 + j] output columns 4j..4j+3 of the W tile. In the
// inner loop the 16 invocations of a row read consecutive vec4s (no bank conflicts) and do
// 16 FMAs per two loads.
var<workgroup> xs: array<vec4<f32>, TM * TK / 4u>;
var<workgroup> wt: array<vec4<f32>, TN * TK / 4u>;

@compute @workgroup_size(256)
fn matmul_gemm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let c0 = wg.x * TN;  // first output column of this tile
    let m0 = wg.y * TM;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let bpr = p.k / BLOCK;
    var acc: array<vec4<f32>, 4>;
#ifdef TRANSPOSED
    let red_len = p.n;  // reduce over the part's weight rows
    let out_cols = p.k;
#else
    let red_len = p.k;  // reduce over columns
    let out_cols = p.n;
#endif
    for (var r0 = 0u; r0 < red_len; r0 += TK) {
        // Stage x[m0 .. m0+64, r0 .. r0+32].
        for (var i = 0u; i < 8u; i++) {
            let e = lid + 256u * i;
            let r = e / TK;
            let c = e % TK;
            var v = 0.0;
#ifdef TRANSPOSED
            if (m0 + r < p.m && r0 + c < p.n) {
                v = f32(x[(m0 + r) * p.x_stride + p.row_offset + r0 + c]);
            }
#else
            if (m0 + r < p.m) {
                v = f32(x[(m0 + r) * p.k + r0 + c]);
            }
#endif
            xs[c * (TM / 4u) + r / 4u][r % 4u] = v;
        }
        // Stage the W tile.
#ifdef TRANSPOSED
        // W rows r0 .. r0+32 (reduction), columns c0 .. c0+64 (outputs): 8 groups per row.
        let wr = lid / 8u;
        let gc = lid % 8u;
        var w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (r0 + wr < p.n && c0 + 8u * gc < p.k) {
            w = load8(r0 + wr, c0 / 8u + gc, bpr);
        }
        wt[wr * (TN / 4u) + 2u * gc] = w.a;
        wt[wr * (TN / 4u) + 2u * gc + 1u] = w.b;
#else
        // W rows c0 .. c0+64 (outputs), columns r0 .. r0+32 (reduction): 4 groups per row.
        let wc = lid / 4u;
        let gk = lid % 4u;
        var w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (c0 + wc < p.n) {
            w = load8(c0 + wc, r0 / 8u + gk, bpr);
        }
        for (var i = 0u; i < 4u; i++) {
            wt[(8u * gk + i) * (TN / 4u) + wc / 4u][wc % 4u] = w.a[i];
            wt[(8u * gk + 4u + i) * (TN / 4u) + wc / 4u][wc % 4u] = w.b[i];
        }
#endif
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = xs[kk * (TM / 4u) + ty];
            let b = wt[kk * (TN / 4u) + tx];
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + tx * 4u + j;
            if (m < p.m && c < out_cols) {
                var v = acc[i][j];
#ifdef TRANSPOSED
                let o = m * p.y_stride + c;
#else
#ifdef BIAS
                v += f32(bias[p.row_offset + c]);
#endif
                let o = m * p.y_stride + p.row_offset + c;
#endif
                if (p.accumulate != 0u) {
                    v += f32(y[o]);
                }
                y[o] = T(v);
            }
        }
    }
}
