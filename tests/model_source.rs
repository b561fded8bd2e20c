//! Loading from a `ModelSource` (byte ranges, as the browser reads a `Blob`): the same model
//! as the in-memory path bit for bit, every tensor read once and nothing larger than the
//! largest tensor, and typed errors (never a panic) for short, corrupt or failing sources.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pupil::gpu::DType;
use pupil::model::gguf::parse_header;
use pupil::model::{read_header, synth, LlamaModel, Logits, ModelOptions, ModelSource};
use pupil::{GpuContext, PupilError};

/// Completes on its second poll (after waking itself), as a JS promise would: the loader
/// must not rely on reads being ready at once.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A file served in ranges that records every read; `fail_at` makes reads touching that byte
/// fail; `len` may lie (claim more bytes than there are).
struct Counting<'a> {
    file: &'a [u8],
    len: u64,
    reads: RefCell<Vec<(u64, u64)>>,
    fail_at: Option<u64>,
}

impl<'a> Counting<'a> {
    fn new(file: &'a [u8]) -> Self {
        Counting { file, len: file.len() as u64, reads: RefCell::default(), fail_at: None }
    }
}

impl ModelSource for Counting<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    async fn read_at(&self, offset: u64, len: u64) -> pupil::Result<Vec<u8>> {
        YieldOnce(false).await;
        self.reads.borrow_mut().push((offset, len));
        if self.fail_at.is_some_and(|b| (offset..offset + len).contains(&b)) {
            return Err(PupilError::Format(format!("read of {offset}+{len} failed")));
        }
        self.file.read_at(offset, len).await
    }
}

fn opts() -> ModelOptions {
    ModelOptions { dtype: Some(DType::F32), context: Some(256), chunk: 32, ..ModelOptions::default() }
}

fn load_async(ctx: &GpuContext, source: &Counting, opts: &ModelOptions) -> pupil::Result<LlamaModel> {
    let mut last = (0, 0);
    let r = pollster::block_on(LlamaModel::load_from(ctx, source, opts, &mut |d, t| last = (d, t)));
    if r.is_ok() {
        assert_eq!(last.0, last.1, "progress ends at the total");
    }
    r
}

/// Last-position logits of `prompt` as raw bits.
fn logits(ctx: &GpuContext, m: &LlamaModel, prompt: &[u32]) -> Vec<u32> {
    let cache = m.new_cache(ctx, 1).unwrap();
    m.forward(ctx, &cache, 0, 0, prompt, Logits::Last).unwrap();
    let v = pollster::block_on(m.logits(1).unwrap().read_f32(ctx)).unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

fn tiny() -> Vec<u8> {
    synth::synthesize(&synth::preset("tiny-llama").unwrap(), 7, &mut |_, _| {}).unwrap()
}

/// Byte-range reads give the in-memory load's logits bit for bit; each tensor is read exactly
/// once, header reads stay before the data, and no read exceeds the largest tensor.
fn check_same_model(ctx: &GpuContext, file: &[u8], prompt: &[u32]) {
    let memory = LlamaModel::load(ctx, file, &opts(), &mut |_, _| {}).unwrap();
    let source = Counting::new(file);
    let streamed = load_async(ctx, &source, &opts()).unwrap();
    assert_eq!(logits(ctx, &memory, prompt), logits(ctx, &streamed, prompt));
    assert_eq!(memory.weight_bytes, streamed.weight_bytes);

    let h = parse_header(file).unwrap();
    let reads = source.reads.borrow();
    let (header, data): (Vec<(u64, u64)>, Vec<_>) = reads.iter().copied().partition(|r| r.0 < h.data_offset);
    assert!(header.iter().all(|r| r.0 + r.1 <= file.len() as u64));
    assert!(header.len() <= 6, "{} header reads", header.len());
    let largest = h.tensors.iter().map(|t| t.size).max().unwrap();
    for t in &h.tensors {
        let n = data.iter().filter(|r| **r == (h.data_offset + t.offset, t.size)).count();
        assert_eq!(n, 1, "tensor {} read {n} times", t.name);
    }
    assert_eq!(data.len(), h.tensors.len(), "only tensors are read past the header");
    assert!(data.iter().all(|r| r.1 <= largest));
}

#[test]
fn byte_range_load_matches_in_memory_load_on_a_synthetic_model() {
    let ctx = common::context_with(pupil::ContextOptions { allow_f16: false, ..Default::default() });
    check_same_model(&ctx, &tiny(), &[1, 2, 3, 100, 200, 7]);
}

#[test]
fn byte_range_load_matches_in_memory_load_on_smollm2() {
    let Some(file) = common::smollm2() else { return };
    let ctx = common::context_with(pupil::ContextOptions { allow_f16: false, ..Default::default() });
    check_same_model(&ctx, &file, &[1, 9690, 30, 2683, 314, 253]);
}

/// The header arrives in a few growing reads, whatever the first read's size.
#[test]
fn header_reads_grow_until_the_header_parses() {
    let Some(file) = common::smollm2() else { return };
    let source = Counting::new(&file);
    let h = pollster::block_on(read_header(&source)).unwrap();
    assert_eq!(h.tensors.len(), parse_header(&file).unwrap().tensors.len());
    let reads = source.reads.borrow();
    // Contiguous: each read starts where the previous ended.
    let mut end = 0;
    for &(o, l) in reads.iter() {
        assert_eq!(o, end);
        end += l;
    }
    assert!(end >= h.data_offset - h.alignment && end <= file.len() as u64);
    assert!(reads.len() <= 6, "{} reads", reads.len());
}

fn expect_err(r: pupil::Result<LlamaModel>, what: &str) -> PupilError {
    match r {
        Ok(_) => panic!("{what}: loaded"),
        Err(e) => e,
    }
}

#[test]
fn short_corrupt_and_failing_sources_give_typed_errors() {
    let ctx = common::context_with(pupil::ContextOptions { allow_f16: false, ..Default::default() });
    let file = tiny();
    let h = parse_header(&file).unwrap();
    // Cut inside the header, at the data start, inside a tensor, one byte short.
    for cut in [0, 3, 24, 1000, h.data_offset as usize, h.data_offset as usize + 100, file.len() - 1] {
        let e = expect_err(load_async(&ctx, &Counting::new(&file[..cut]), &opts()), "truncated");
        assert!(matches!(e, PupilError::Truncated { .. }), "cut at {cut}: {e}");
    }
    // A source that claims the full length but holds less: the tensor read fails, typed.
    let mut lying = Counting::new(&file[..file.len() - 10]);
    lying.len = file.len() as u64;
    let e = expect_err(load_async(&ctx, &lying, &opts()), "lying length");
    assert!(matches!(e, PupilError::Truncated { .. }), "{e}");
    // A read that fails (a File changed on disk): the source's error comes through.
    let mut failing = Counting::new(&file);
    failing.fail_at = Some(h.data_offset + h.tensor("blk.1.ffn_up.weight").unwrap().offset);
    let e = expect_err(load_async(&ctx, &failing, &opts()), "failing read");
    assert!(e.to_string().contains("failed"), "{e}");
    // Bad magic, an absurd tensor count, flipped header bytes: Format, Truncated or
    // Unsupported, never a panic.
    let mut bad = file.clone();
    bad[0] = b'X';
    let e = expect_err(load_async(&ctx, &Counting::new(&bad), &opts()), "bad magic");
    assert_eq!(e.kind(), "Format", "{e}");
    let mut absurd = file.clone();
    absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = expect_err(load_async(&ctx, &Counting::new(&absurd), &opts()), "absurd count");
    assert_eq!(e.kind(), "Truncated", "{e}");
    for at in (4..h.data_offset as usize).step_by(997) {
        let mut flipped = file.clone();
        flipped[at] ^= 0xA5;
        if let Err(e) = load_async(&ctx, &Counting::new(&flipped), &opts()) {
            assert!(["Format", "Truncated", "Unsupported", "TooLarge", "InvalidArgument"].contains(&e.kind()), "{e}");
        }
    }
    // A model over the memory budget is refused before any tensor is read.
    let source = Counting::new(&file);
    let small = ModelOptions { memory_budget: Some(1 << 20), ..opts() };
    let e = expect_err(load_async(&ctx, &source, &small), "budget");
    assert_eq!(e.kind(), "TooLarge", "{e}");
    assert!(source.reads.borrow().iter().all(|r| r.0 < h.data_offset), "a tensor was read before refusing");
}
