//! Shared pieces of the kernel checks: inputs, poisoned outputs, canaries, comparison.

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{DType, GpuContext, Tensor};
use crate::rng::SplitMix64;

/// Written over every output (and the canary region past it) before a kernel runs.
/// As f32 and as each f16 half it is a NaN, so an element the kernel skipped fails.
pub const POISON: u32 = 0x7FC0_7FC0;
/// Bytes of canary past the end of every output view.
const CANARY_BYTES: u64 = 64;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    /// Bound on ‖out−ref‖ / ‖ref‖.
    pub rel: f64,
    /// Bound on max|out−ref| / max|ref|.
    pub max_abs_frac: f64,
}

impl Tolerance {
    pub fn of(dtype: DType) -> Tolerance {
        match dtype {
            DType::F16 => Tolerance { rel: 2e-3, max_abs_frac: 2e-3 },
            _ => Tolerance { rel: 1e-5, max_abs_frac: 1e-4 },
        }
    }
}

/// The outcome of one case, serialisable for the browser report.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub op: &'static str,
    pub case: String,
    pub dtype: DType,
    pub subgroups: bool,
    pub rel_err: f64,
    pub max_abs_err: f64,
    pub max_abs_ref: f64,
    pub tolerance: Tolerance,
    pub canary_ok: bool,
    pub passed: bool,
    /// Empty when passed; otherwise what went wrong.
    pub detail: String,
}

impl std::fmt::Display for CaseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:<10} {:<4} {:<3} {:<44} rel {:.2e} maxabs {:.2e} (|ref| {:.2e}) {}",
            if self.passed { "ok  " } else { "FAIL" },
            self.op,
            self.dtype.name(),
            if self.subgroups { "sg" } else { "shm" },
            self.case,
            self.rel_err,
            self.max_abs_err,
            self.max_abs_ref,
            self.detail
        )
    }
}

/// Random non-zero values in [lo, hi), rounded to what `dtype` can store.
pub fn inputs(rng: &mut SplitMix64, n: usize, lo: f32, hi: f32, dtype: DType) -> Vec<f32> {
    round_to(dtype, rng.vec_nonzero(n, lo, hi))
}

pub fn round_to(dtype: DType, v: Vec<f32>) -> Vec<f32> {
    match dtype {
        DType::F16 => v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v,
    }
}

/// An output tensor filled with [`POISON`], with a canary region past its end.
pub fn poisoned(ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let elems: u64 = shape.iter().map(|&d| d as u64).product();
    let t = Tensor::allocate(ctx, elems * dtype.size_bytes() + CANARY_BYTES, shape, dtype, "selftest output")?;
    t.fill_buffer_u32(ctx, POISON);
    Ok(t)
}

/// Write `data` into a poisoned tensor without touching the canary: a 4-byte-aligned upload
/// of an odd number of f16 values carries the poison half along instead of zero padding.
pub fn write_keeping_canary(ctx: &GpuContext, t: &Tensor, data: &[f32]) -> Result<()> {
    let mut bytes = Tensor::encode_f32(t.dtype(), data)?;
    let poison = POISON.to_le_bytes();
    while bytes.len() % 4 != 0 {
        bytes.push(poison[bytes.len() % 4]);
    }
    t.write_bytes(ctx, &bytes)
}

/// Did anything past the view's last element change?
pub async fn canary_intact(ctx: &GpuContext, t: &Tensor) -> Result<bool> {
    let bytes = t.read_buffer_bytes(ctx).await?;
    let end = (t.offset_bytes() + t.len() as u64 * t.dtype().size_bytes()) as usize;
    let poison = POISON.to_le_bytes();
    Ok(bytes[end..].iter().enumerate().all(|(i, b)| *b == poison[(end + i) % 4]))
}

/// Read a float output and compare it with the reference.
pub async fn check_float(
    ctx: &GpuContext,
    op: &'static str,
    case: String,
    out: &Tensor,
    reference: &[f64],
) -> Result<CaseReport> {
    let got = out.read_f32(ctx).await?;
    let canary_ok = canary_intact(ctx, out).await?;
    Ok(compare(ctx, op, case, out.dtype(), &got, reference, canary_ok))
}

pub fn compare(
    ctx: &GpuContext,
    op: &'static str,
    case: String,
    dtype: DType,
    got: &[f32],
    reference: &[f64],
    canary_ok: bool,
) -> CaseReport {
    compare_within(ctx, op, case, dtype, got, reference, canary_ok, Tolerance::of(dtype))
}

/// As [`compare`], with a tolerance other than the dtype's (approximate paths state their own).
#[allow(clippy::too_many_arguments)]
pub fn compare_within(
    ctx: &GpuContext,
    op: &'static str,
    case: String,
    dtype: DType,
    got: &[f32],
    reference: &[f64],
    canary_ok: bool,
    tol: Tolerance,
) -> CaseReport {
    // An f16 output can at best hold the reference rounded to f16 (values below f16's
    // smallest subnormal become 0): measure the kernel's error against that.
    let ideal = |r: f64| {
        if dtype == DType::F16 {
            half::f16::from_f64(r).to_f64()
        } else {
            r
        }
    };
    let (mut diff2, mut ref2, mut max_abs_err, mut max_abs_ref) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut non_finite = None;
    for (i, (&g, &r)) in got.iter().zip(reference).enumerate() {
        let r = ideal(r);
        if !g.is_finite() && non_finite.is_none() {
            non_finite = Some(i);
        }
        let d = g as f64 - r;
        diff2 += d * d;
        ref2 += r * r;
        max_abs_err = max_abs_err.max(d.abs());
        max_abs_ref = max_abs_ref.max(r.abs());
    }
    let rel_err = if ref2 > 0.0 { (diff2 / ref2).sqrt() } else { diff2.sqrt() };
    let mut detail = String::new();
    if got.len() != reference.len() {
        detail = format!("{} outputs, reference has {}", got.len(), reference.len());
    } else if let Some(i) = non_finite {
        detail = format!("non-finite output at {i}: {} (reference {})", got[i], reference[i]);
    } else if let Some(i) = reference.iter().position(|r| !r.is_finite()) {
        detail = format!("non-finite reference at {i}: {} (a case the reference cannot judge)", reference[i]);
    } else if rel_err.is_nan() || rel_err > tol.rel {
        detail = format!("relative error over {:.0e}", tol.rel);
    } else if max_abs_err > tol.max_abs_frac * max_abs_ref {
        detail = format!("max abs error over {:.0e}·max|ref|", tol.max_abs_frac);
    } else if !canary_ok {
        detail = "wrote past the end of its output".into();
    }
    CaseReport {
        op,
        case,
        dtype,
        subgroups: ctx.caps.subgroups,
        rel_err,
        max_abs_err,
        max_abs_ref,
        tolerance: tol,
        canary_ok,
        passed: detail.is_empty(),
        detail,
    }
}

/// A report for outputs that must match exactly (indices, selected values).
pub fn exact<T: PartialEq + std::fmt::Debug>(
    ctx: &GpuContext,
    op: &'static str,
    case: String,
    dtype: DType,
    got: &[T],
    want: &[T],
    canary_ok: bool,
) -> CaseReport {
    let mismatches = got.iter().zip(want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len());
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    let detail = if let Some(i) = first {
        format!("{mismatches} mismatches; first at {i}: got {:?}, want {:?}", got[i], want[i])
    } else if mismatches > 0 {
        format!("{} outputs, want {}", got.len(), want.len())
    } else if !canary_ok {
        "wrote past the end of its output".into()
    } else {
        String::new()
    };
    CaseReport {
        op,
        case,
        dtype,
        subgroups: ctx.caps.subgroups,
        rel_err: mismatches as f64,
        max_abs_err: 0.0,
        max_abs_ref: 0.0,
        tolerance: Tolerance { rel: 0.0, max_abs_frac: 0.0 },
        canary_ok,
        passed: detail.is_empty(),
        detail,
    }
}
