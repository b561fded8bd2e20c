// Attention logits: the scaled dot product, optionally soft-capped (cap · tanh(s / cap), as
// Gemma 2 uses). Shared by attention_prefill.wgsl and attention_decode.wgsl; the including
// shader's params `p` carry `scale` and `softcap` (0 = off).

// tanh without cancellation trouble at large |x| (WGSL's tanh has no stated accuracy).
fn tanh_f32(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

fn logit(dot: f32) -> f32 {
    let s = dot * p.scale;
    if (p.softcap > 0.0) {
        return p.softcap * tanh_f32(s / p.softcap);
    }
    return s;
}
