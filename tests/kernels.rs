//! Every kernel family against its CPU reference (see `src/selftest/` for the cases and the
//! tolerances), on all four paths: f32/f16 storage × subgroup/shared-memory reductions.

mod common;

use pupil::gpu::DType;
use pupil::selftest;

fn run(family: &str, f16: bool, subgroups: bool) {
    let Some(ctx) = common::context(f16, subgroups) else {
        return;
    };
    let dtype = if f16 { DType::F16 } else { DType::F32 };
    let reports = pollster::block_on(selftest::run_family(&ctx, family, dtype)).expect("kernel check failed to run");
    assert!(!reports.is_empty(), "no cases for {family}");
    for r in &reports {
        println!("{r}");
    }
    let failed: Vec<String> = reports.iter().filter(|r| !r.passed).map(|r| r.to_string()).collect();
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), reports.len(), failed.join("\n"));
}

macro_rules! kernel_tests {
    ($($family:ident),* $(,)?) => {$(
        mod $family {
            #[test]
            fn f32_shared_memory() { super::run(stringify!($family), false, false) }
            #[test]
            fn f32_subgroups() { super::run(stringify!($family), false, true) }
            #[test]
            fn f16_shared_memory() { super::run(stringify!($family), true, false) }
            #[test]
            fn f16_subgroups() { super::run(stringify!($family), true, true) }
        }
    )*};
}

kernel_tests!(
    rms_norm,
    rope,
    activation,
    add,
    softmax,
    embedding,
    argmax,
    topk,
    matmul,
    attention,
    gate,
    sampling,
    backward,
    optim,
    matmul_dense,
    dropout
);

#[test]
fn every_family_has_tests_here() {
    // Keep the macro list above in step with the library's list.
    let here = [
        "rms_norm",
        "rope",
        "activation",
        "add",
        "softmax",
        "embedding",
        "argmax",
        "topk",
        "matmul",
        "attention",
        "gate",
        "sampling",
        "matmul_dense",
        "backward",
        "optim",
        "dropout",
    ];
    assert_eq!(selftest::FAMILIES, here);
}
