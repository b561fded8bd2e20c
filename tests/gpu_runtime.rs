//! The runtime around the kernels: memory accounting, limits, typed errors, batching.

mod common;

use pupil::gpu::{Batch, DType, Tensor};
use pupil::ops::{add::add_forward, softmax::softmax_forward, topk::topk_forward};
use pupil::{reference, ContextOptions, PupilError};

#[test]
fn memory_is_counted_while_tensors_live() {
    let ctx = common::full_context();
    let base = ctx.memory.current_bytes();
    let a = Tensor::empty(&ctx, &[1000], DType::F32).unwrap();
    let b = Tensor::empty(&ctx, &[3], DType::F16).unwrap(); // 6 bytes, padded to 8
    assert_eq!(ctx.memory.current_bytes() - base, 4000 + 8);
    let view = a.view(256, &[10]).unwrap(); // views share the allocation
    assert_eq!(ctx.memory.current_bytes() - base, 4008);
    drop(a);
    assert_eq!(ctx.memory.current_bytes() - base, 4008, "a view keeps its buffer alive");
    drop(view);
    drop(b);
    assert_eq!(ctx.memory.current_bytes(), base);
    assert!(ctx.memory.peak_bytes() >= base + 4008);
}

#[test]
fn bindings_over_the_limit_are_refused_before_dispatch() {
    let ctx = common::context_with(ContextOptions { max_storage_binding: Some(1 << 20), ..ContextOptions::default() });
    let x = Tensor::empty(&ctx, &[2, 200_000], DType::F32).unwrap(); // 1.6 MB
    let y = Tensor::empty(&ctx, &[2, 200_000], DType::F32).unwrap();
    let mut b = Batch::new(&ctx);
    match softmax_forward(&mut b, &x, &y, 1.0) {
        Err(PupilError::TooLarge { bytes, limit, .. }) => {
            assert_eq!((bytes, limit), (1_600_000, 1 << 20))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(b.is_empty());
}

#[test]
fn buffers_over_the_device_limit_are_refused_before_allocation() {
    let ctx = common::full_context();
    let before = ctx.memory.current_bytes();
    let too_many = (ctx.caps.max_buffer_size / 4 + 1) as usize;
    assert!(matches!(Tensor::empty(&ctx, &[too_many], DType::F32), Err(PupilError::TooLarge { .. })));
    assert_eq!(ctx.memory.current_bytes(), before);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let ctx = common::context(false, false).unwrap();
    let x = Tensor::empty(&ctx, &[4, 8], DType::F32).unwrap();
    let y_short = Tensor::empty(&ctx, &[4, 7], DType::F32).unwrap();
    let idx = Tensor::empty(&ctx, &[4, 9], DType::U32).unwrap();
    let val = Tensor::empty(&ctx, &[4, 9], DType::F32).unwrap();
    let mut b = Batch::new(&ctx);
    assert!(matches!(softmax_forward(&mut b, &x, &y_short, 1.0), Err(PupilError::Shape { .. })));
    assert!(matches!(softmax_forward(&mut b, &x, &x, 0.0), Err(PupilError::InvalidArgument { .. })));
    assert!(matches!(softmax_forward(&mut b, &x, &idx, 1.0), Err(PupilError::DType { .. })));
    assert!(matches!(topk_forward(&mut b, &x, 9, &idx, &val), Err(PupilError::InvalidArgument { .. })));
    // An f16 tensor on a device opened without the f16 path.
    let h = Tensor::empty(&ctx, &[4, 8], DType::F16).unwrap();
    assert!(matches!(softmax_forward(&mut b, &h, &h, 1.0), Err(PupilError::MissingFeature(_))));
    assert!(b.is_empty());
}

#[test]
fn dispatches_in_one_batch_see_each_others_writes() {
    // y = softmax(a + b) recorded as two dispatches in one pass, one submit.
    let ctx = common::full_context();
    let (rows, width) = (3, 1000);
    let mut rng = pupil::rng::SplitMix64::new(7);
    let a = rng.vec_nonzero(rows * width, -3.0, 3.0);
    let c = rng.vec_nonzero(rows * width, -3.0, 3.0);
    let at = Tensor::from_f32(&ctx, &a, &[rows, width], DType::F32).unwrap();
    let ct = Tensor::from_f32(&ctx, &c, &[rows, width], DType::F32).unwrap();
    let sum = Tensor::empty(&ctx, &[rows, width], DType::F32).unwrap();
    let y = Tensor::empty(&ctx, &[rows, width], DType::F32).unwrap();
    let before = ctx.stats();
    let mut b = Batch::new(&ctx);
    add_forward(&mut b, &at, &ct, &sum).unwrap();
    softmax_forward(&mut b, &sum, &y, 1.0).unwrap();
    b.submit();
    let after = ctx.stats();
    assert_eq!(after.dispatches - before.dispatches, 2);
    assert_eq!(after.submits - before.submits, 1);
    let got = pollster::block_on(y.read_f32(&ctx)).unwrap();
    let s: Vec<f32> = a.iter().zip(&c).map(|(x, y)| x + y).collect();
    let want = reference::softmax(&s, width, 1.0);
    let err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(err < 1e-6, "max error {err}");
}

#[test]
fn several_passes_and_copies_in_one_submit() {
    // pass 1: s = a + c; copy s -> t; pass 2: y = softmax(t). One submit, two passes.
    let ctx = common::full_context();
    let (rows, width) = (2, 300);
    let mut rng = pupil::rng::SplitMix64::new(8);
    let a = rng.vec_nonzero(rows * width, -3.0, 3.0);
    let c = rng.vec_nonzero(rows * width, -3.0, 3.0);
    let at = Tensor::from_f32(&ctx, &a, &[rows, width], DType::F32).unwrap();
    let ct = Tensor::from_f32(&ctx, &c, &[rows, width], DType::F32).unwrap();
    let s = Tensor::empty(&ctx, &[rows, width], DType::F32).unwrap();
    let t = Tensor::empty(&ctx, &[rows, width], DType::F32).unwrap();
    let y = Tensor::empty(&ctx, &[rows, width], DType::F32).unwrap();
    let before = ctx.stats();
    let mut b = Batch::new(&ctx);
    add_forward(&mut b, &at, &ct, &s).unwrap();
    b.copy(&s, &t).unwrap();
    softmax_forward(&mut b, &t, &y, 1.0).unwrap();
    b.next_pass();
    assert_eq!(b.len(), 2);
    b.submit();
    let after = ctx.stats();
    assert_eq!((after.submits - before.submits, after.compute_passes - before.compute_passes), (1, 2));
    let got = pollster::block_on(y.read_f32(&ctx)).unwrap();
    let sum: Vec<f32> = a.iter().zip(&c).map(|(x, y)| x + y).collect();
    let want = reference::softmax(&sum, width, 1.0);
    let err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(err < 1e-6, "max error {err}");
    let mut b = Batch::new(&ctx);
    assert!(matches!(b.copy(&s, &Tensor::empty(&ctx, &[3], DType::F32).unwrap()), Err(PupilError::Shape { .. })));
}
