// Sampling candidates and row statistics, one workgroup per row of x [rows, width]:
//   out[row] = [ idx[0..k] | value bits[0..k] | max, lse (f32 bits), n_bad, n_finite ]
// idx/values: the k largest values in descending order, lowest index first among equals,
// NaN never chosen; slots past the row's non-NaN values get index 0xffffffff and value
// LOWEST_F32 (the contract of topk.wgsl, so reference::topk checks both).
// Statistics over the finite values: max, lse = log Σ exp (an online max/sum per invocation,
// merged with the common reductions), n_bad = NaN and +inf values, n_finite (-inf is a
// masked token: neither). The host only reads this row of 2k + 4 words, not the vocabulary.
//
// Selection is a radix select on order_key (exact integer comparisons, NaN key 0): sweep 1
// also builds a 256-bin histogram of the keys' top byte; each further sweep fixes one more
// byte of the k-th largest key K*, so after 4 sweeps K* is known together with how many
// elements equal to K* must be taken. When fewer than all of those are needed, ties are cut
// by index (lowest first) with up to 3 more histogram sweeps over the index bytes (width is
// below 2^24). A last sweep gathers the k winners into workgroup memory (any order, through
// an atomic counter) and a bitonic sort orders them. Cost: 5 reads of the row (8 with a tie
// cut) whatever k, against k reads for topk.wgsl; per invocation at most 8·width/WG loop
// iterations (lavapipe's 65535 back-edge cap allows rows of millions).
// k = 1 stops after sweep 1 (arg-max with statistics: greedy decoding).
// Requires WG == 256 (one histogram bin per invocation).
#include "common/reduce"

struct Params {
    rows: u32,
    width: u32,
    k: u32,
    // k rounded up to a power of two, ≤ MAX_K: the bitonic sort's size.
    kp: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const BINS: u32 = 256u;
const MAX_K: u32 = 1024u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> scan_buf: array<u32, WG>;
var<workgroup> cand_key: array<u32, MAX_K>;
var<workgroup> cand_idx: array<u32, MAX_K>;
var<workgroup> n_taken: atomic<u32>;
var<workgroup> n_bad_wg: atomic<u32>;
var<workgroup> n_fin_wg: atomic<u32>;
var<workgroup> n_valid_wg: atomic<u32>;
var<workgroup> sel_digit: u32;
var<workgroup> sel_need: u32;
var<workgroup> sel_count: u32;
var<workgroup> keff_wg: u32;

fn clear_hist(ids: Ids) {
    for (var b = ids.lid; b < BINS; b += WG) {
        atomicStore(&hist[b], 0u);
    }
    workgroupBarrier();
}

// Inclusive prefix sum of one u32 per invocation (in lid order).
fn wg_scan_incl(v: u32, ids: Ids) -> u32 {
#ifdef SUBGROUPS
    let incl = subgroupInclusiveAdd(v);
    let total = subgroupAdd(v);
    if (ids.sg_lane == 0u) {
        scan_buf[ids.lid / ids.sg_size] = total;
    }
    workgroupBarrier();
    var before = 0u;
    for (var j = 0u; j < ids.lid / ids.sg_size; j++) {
        before += scan_buf[j];
    }
    workgroupBarrier();
    return before + incl;
#else
    scan_buf[ids.lid] = v;
    workgroupBarrier();
    for (var s = 1u; s < WG; s = s * 2u) {
        var add = 0u;
        if (ids.lid >= s) {
            add = scan_buf[ids.lid - s];
        }
        workgroupBarrier();
        scan_buf[ids.lid] += add;
        workgroupBarrier();
    }
    let r = scan_buf[ids.lid];
    workgroupBarrier();
    return r;
#endif
}

// The histogram bin holding the need-th element, counting bins from the top digit
// (descending) or from digit 0: sets sel_digit, sel_need (need minus the elements of the bins
// before it) and sel_count (the bin's count). need must be in 1..=total.
fn select_bin(need: u32, descending: bool, ids: Ids) {
    var digit = ids.lid;
    if (descending) {
        digit = BINS - 1u - ids.lid;
    }
    let c = atomicLoad(&hist[digit]);
    let incl = wg_scan_incl(c, ids);
    if (incl >= need && incl - c < need) {
        sel_digit = digit;
        sel_need = need - (incl - c);
        sel_count = c;
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn sample_candidates_forward(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = group_id(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    let obase = row * (2u * p.k + 4u);

    // Sweep 1: statistics, the best element (k = 1) and the histogram of the top byte.
    if (ids.lid == 0u) {
        atomicStore(&n_bad_wg, 0u);
        atomicStore(&n_fin_wg, 0u);
        atomicStore(&n_valid_wg, 0u);
        atomicStore(&n_taken, 0u);
    }
    clear_hist(ids);
    var m = LOWEST_F32;
    var s = 0.0;
    var n_bad = 0u;
    var n_fin = 0u;
    var n_valid = 0u;
    var bk = 0u;
    var bi = 0xffffffffu;
    for (var i = ids.lid; i < p.width; i += WG) {
        let v = f32(x[base + i]);
        let bits = bitcast<u32>(v);
        let key = order_key(v);
        if ((bits & 0x7f800000u) != 0x7f800000u) {
            n_fin += 1u;
            if (v > m) {
                s = select(0.0, s * exp(m - v), s > 0.0) + 1.0;
                m = v;
            } else {
                s += exp(v - m);
            }
        } else if (bits != 0xff800000u) {
            n_bad += 1u;
        }
        if (key_before(key, i, bk, bi)) {
            bk = key;
            bi = i;
        }
        if (key != 0u) {
            n_valid += 1u;
            atomicAdd(&hist[key >> 24u], 1u);
        }
    }
    atomicAdd(&n_bad_wg, n_bad);
    atomicAdd(&n_fin_wg, n_fin);
    atomicAdd(&n_valid_wg, n_valid);
    let row_max = wg_max(m, ids);
    let total = wg_sum(select(0.0, s * exp(m - row_max), s > 0.0), ids);
    let best = wg_argmax_key(bk, bi, ids);
    if (ids.lid == 0u) {
        let so = obase + 2u * p.k;
        out[so] = bitcast<u32>(row_max);
        out[so + 1u] = bitcast<u32>(select(LOWEST_F32, row_max + log(total), total > 0.0));
        out[so + 2u] = atomicLoad(&n_bad_wg);
        out[so + 3u] = atomicLoad(&n_fin_wg);
        keff_wg = min(p.k, atomicLoad(&n_valid_wg));
    }
    if (p.k == 1u) {
        if (ids.lid == 0u) {
            if (best.x == 0u) {
                out[obase] = 0xffffffffu;
                out[obase + 1u] = bitcast<u32>(LOWEST_F32);
            } else {
                out[obase] = best.y;
                out[obase + 1u] = bitcast<u32>(f32(x[base + best.y]));
            }
        }
        return;
    }
    let keff = workgroupUniformLoad(&keff_wg);

    // Empty slots sort last: key 0 is below every non-NaN key.
    for (var j = ids.lid; j < p.kp; j += WG) {
        cand_key[j] = 0u;
        cand_idx[j] = 0xffffffffu;
    }
    if (keff > 0u) {
        // Radix select of the keff-th largest key, one byte per sweep (the first histogram
        // came with sweep 1).
        var prefix = 0u;
        var mask = 0u;
        var need = keff;
        var n_eq = 0u;
        for (var step = 0u; step < 4u; step++) {
            let shift = 24u - 8u * step;
            if (step > 0u) {
                clear_hist(ids);
                for (var i = ids.lid; i < p.width; i += WG) {
                    let key = order_key(f32(x[base + i]));
                    if (key != 0u && (key & mask) == prefix) {
                        atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
                    }
                }
                workgroupBarrier();
            }
            select_bin(need, true, ids);
            let d = workgroupUniformLoad(&sel_digit);
            need = workgroupUniformLoad(&sel_need);
            n_eq = workgroupUniformLoad(&sel_count);
            prefix |= d << shift;
            mask |= 0xffu << shift;
        }
        // Now `need` of the n_eq elements whose key is exactly `prefix` are taken. Cut ties by
        // index if not all of them are.
        var idx_limit = 0xffffffffu;
        if (need < n_eq) {
            var iprefix = 0u;
            var imask = 0u;
            for (var step = 0u; step < 3u; step++) {
                let shift = 16u - 8u * step;
                clear_hist(ids);
                for (var i = ids.lid; i < p.width; i += WG) {
                    let key = order_key(f32(x[base + i]));
                    if (key == prefix && (i & imask) == iprefix) {
                        atomicAdd(&hist[(i >> shift) & 0xffu], 1u);
                    }
                }
                workgroupBarrier();
                select_bin(need, false, ids);
                let d = workgroupUniformLoad(&sel_digit);
                need = workgroupUniformLoad(&sel_need);
                iprefix |= d << shift;
                imask |= 0xffu << shift;
            }
            idx_limit = iprefix;
        }
        // Gather the winners.
        workgroupBarrier();
        for (var i = ids.lid; i < p.width; i += WG) {
            let key = order_key(f32(x[base + i]));
            if (key > prefix || (key == prefix && i <= idx_limit)) {
                let slot = atomicAdd(&n_taken, 1u);
                if (slot < p.kp) {
                    cand_key[slot] = key;
                    cand_idx[slot] = i;
                }
            }
        }
    }
    workgroupBarrier();
    // Bitonic sort of kp slots into (key descending, index ascending).
    for (var size = 2u; size <= p.kp; size = size * 2u) {
        for (var stride = size / 2u; stride > 0u; stride = stride / 2u) {
            for (var t = ids.lid; t < p.kp / 2u; t += WG) {
                let a = 2u * t - (t & (stride - 1u));
                let b = a + stride;
                let ka = cand_key[a];
                let ia = cand_idx[a];
                let kb = cand_key[b];
                let ib = cand_idx[b];
                if (key_before(kb, ib, ka, ia) == ((a & size) == 0u)) {
                    cand_key[a] = kb;
                    cand_idx[a] = ib;
                    cand_key[b] = ka;
                    cand_idx[b] = ia;
                }
            }
            workgroupBarrier();
        }
    }
    for (var r = ids.lid; r < p.k; r += WG) {
        let key = cand_key[r];
        if (key == 0u) {
            out[obase + r] = 0xffffffffu;
            out[obase + p.k + r] = bitcast<u32>(LOWEST_F32);
        } else {
            let idx = cand_idx[r];
            out[obase + r] = idx;
            out[obase + p.k + r] = bitcast<u32>(f32(x[base + idx]));
        }
    }
}
