//! Speculative decoding (`engine::speculative`): a draft proposes, the target verifies in one
//! pass. The reference is the target alone under greedy sampling (`engine::generate` with the
//! GPU sampler, a different kernel from the verification's arg-max): the output must be the
//! same tokens for every draft — the target itself (every guess kept), a depth-pruned copy
//! (some kept) and an unrelated model (few kept) — and every k.

mod common;

use pupil::engine::{
    generate, generate_speculative, Flow, GenerateOptions, Session, SpeculativeOptions, SpeculativeStats, StopReason,
};
use pupil::gpu::GpuContext;
use pupil::model::gguf::parse_header;
use pupil::model::prune::keep_layers;
use pupil::model::{synth, LlamaModel, ModelOptions};
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::PupilError;

fn load(ctx: &GpuContext, file: &[u8]) -> LlamaModel {
    let opts = ModelOptions { context: Some(256), ..ModelOptions::default() };
    LlamaModel::load(ctx, file, &opts, &mut |_, _| {}).unwrap()
}

/// The target's greedy tokens after `prompt`.
fn greedy(ctx: &GpuContext, model: &LlamaModel, prompt: &[u32], max_tokens: usize, stop: &[u32]) -> Vec<u32> {
    let mut session = Session::new(ctx, model).unwrap();
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
    let opts = GenerateOptions { max_tokens, stop_tokens: stop.to_vec() };
    let mut out = Vec::new();
    pollster::block_on(generate(ctx, &mut session, prompt, &opts, &mut sampler, &mut |id| {
        out.push(id);
        Flow::Continue
    }))
    .unwrap();
    out
}

fn speculate(
    ctx: &GpuContext,
    target: &LlamaModel,
    draft: &LlamaModel,
    prompt: &[u32],
    opts: &SpeculativeOptions,
    stop_after: Option<usize>,
) -> (Vec<u32>, SpeculativeStats) {
    let (mut t, mut d) = (Session::new(ctx, target).unwrap(), Session::new(ctx, draft).unwrap());
    let mut out = Vec::new();
    let stats = pollster::block_on(generate_speculative(ctx, &mut t, &mut d, prompt, opts, &mut |id| {
        out.push(id);
        if stop_after == Some(out.len()) {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }))
    .unwrap();
    assert!(t.len() <= prompt.len() + out.len() && d.len() <= prompt.len() + out.len());
    assert_eq!(t.tokens()[..], [prompt, &out[..]].concat()[..t.len()], "the target keeps only what was generated");
    (out, stats)
}

/// Greedy speculative output equals the target's own for a self draft, a pruned draft and an
/// unrelated one at k = 1, 3 and 6; acceptance is 1 for the self draft and lower for the
/// others; stop tokens, the token limit and the caller's stop end it where the target alone
/// would.
#[test]
fn speculative_greedy_output_is_the_targets() {
    let ctx = common::context(false, true).unwrap();
    let spec = synth::preset("tiny-llama").unwrap();
    let target_file = synth::synthesize(&spec, 1, &mut |_, _| {}).unwrap();
    let target = load(&ctx, &target_file);
    let pruned_file = pollster::block_on(keep_layers(&parse_header(&target_file).unwrap(), &target_file[..], &[0]));
    let pruned = load(&ctx, &pruned_file.unwrap());
    let other = load(&ctx, &synth::synthesize(&spec, 7, &mut |_, _| {}).unwrap());
    let prompt: Vec<u32> = (0..9).map(|i| (i * 37 + 11) % spec.vocab as u32).collect();
    let n = 24;
    let want = greedy(&ctx, &target, &prompt, n, &[]);
    assert_eq!(want.len(), n);
    let mut rates = Vec::new();
    for (name, draft) in [("self", &target), ("pruned", &pruned), ("other", &other)] {
        for k in [1, 3, 6] {
            let opts = SpeculativeOptions {
                draft_tokens: k,
                max_tokens: n,
                stop_tokens: vec![],
                sampling: SamplerConfig::greedy(),
            };
            let (got, s) = speculate(&ctx, &target, draft, &prompt, &opts, None);
            println!(
                "draft {name}, k {k}: acceptance {:.3}, {:.2} tokens per target pass, {} passes for {} tokens",
                s.acceptance_rate, s.tokens_per_target_pass, s.target_passes, s.generation.generated_tokens
            );
            assert_eq!(got, want, "draft {name}, k {k}");
            assert_eq!((s.generation.generated_tokens, s.generation.stop), (n, StopReason::Length));
            assert!(s.accepted_tokens <= s.drafted_tokens && s.target_passes >= (n - 1).div_ceil(k + 1));
            rates.push((name, k, s.acceptance_rate));
            if name == "self" {
                assert_eq!(s.acceptance_rate, 1.0, "the target agrees with itself");
                assert_eq!(s.target_passes, (n - 1).div_ceil(k + 1), "every pass gives k + 1 tokens");
            }
        }
    }
    let rate = |who: &str| rates.iter().filter(|r| r.0 == who).map(|r| r.2).sum::<f64>() / 3.0;
    assert!(rate("other") < rate("self"), "{rates:?}");

    // A stop token (the first time the target picks it) ends it there, with or without a
    // draft; so do the caller and a small limit.
    let stop = want[12];
    let until = want.iter().position(|&t| t == stop).unwrap();
    let opts = SpeculativeOptions {
        draft_tokens: 4,
        max_tokens: n,
        stop_tokens: vec![stop],
        sampling: SamplerConfig::greedy(),
    };
    for draft in [&target, &pruned] {
        let (got, s) = speculate(&ctx, &target, draft, &prompt, &opts, None);
        assert_eq!((&got[..], s.generation.stop), (&want[..until], StopReason::StopToken));
    }
    assert_eq!(greedy(&ctx, &target, &prompt, n, &[stop]), want[..until]);
    let (got, s) = speculate(
        &ctx,
        &target,
        &pruned,
        &prompt,
        &SpeculativeOptions { stop_tokens: vec![], ..opts.clone() },
        Some(5),
    );
    assert_eq!((&got[..], s.generation.stop), (&want[..5], StopReason::Caller));
    let (got, s) =
        speculate(&ctx, &target, &target, &prompt, &SpeculativeOptions { max_tokens: 2, ..opts.clone() }, None);
    assert_eq!((&got[..], s.generation.stop), (&want[..2], StopReason::Length));
}

/// The context limit ends it with `Context`, as the target alone ends; a draft of another
/// vocabulary and a k the target cannot verify in one pass are refused.
#[test]
fn speculative_decoding_refuses_what_it_cannot_verify() {
    let ctx = common::context(false, true).unwrap();
    let spec = synth::preset("tiny-llama").unwrap();
    let file = synth::synthesize(&spec, 1, &mut |_, _| {}).unwrap();
    let opts = ModelOptions { context: Some(24), ..ModelOptions::default() };
    let target = LlamaModel::load(&ctx, &file, &opts, &mut |_, _| {}).unwrap();
    let prompt: Vec<u32> = (0..9).map(|i| (i * 37 + 11) % spec.vocab as u32).collect();
    let want = greedy(&ctx, &target, &prompt, 100, &[]);
    let o =
        SpeculativeOptions { draft_tokens: 4, max_tokens: 100, stop_tokens: vec![], sampling: SamplerConfig::greedy() };
    let (got, s) = speculate(&ctx, &target, &target, &prompt, &o, None);
    assert_eq!((got.len(), s.generation.stop), (want.len(), StopReason::Context));
    assert_eq!(got, want);

    let mut small = synth::preset("tiny-llama").unwrap();
    small.vocab = 300;
    let other = load(&ctx, &synth::synthesize(&small, 2, &mut |_, _| {}).unwrap());
    let (mut t, mut d) = (Session::new(&ctx, &target).unwrap(), Session::new(&ctx, &other).unwrap());
    let err = pollster::block_on(generate_speculative(&ctx, &mut t, &mut d, &prompt, &o, &mut |_| Flow::Continue));
    let err = err.unwrap_err();
    println!("{err}");
    assert!(matches!(err, PupilError::InvalidArgument { .. }) && err.to_string().contains("vocabulary"), "{err}");
    let mut d = Session::new(&ctx, &target).unwrap();
    let big = SpeculativeOptions { draft_tokens: target.chunk, ..o };
    let err = pollster::block_on(generate_speculative(&ctx, &mut t, &mut d, &prompt, &big, &mut |_| Flow::Continue));
    assert!(matches!(err, Err(PupilError::InvalidArgument { .. })));
}

/// Sampling: each generated token is distributed as the target alone samples it. Over 300
/// seeds with a pruned draft (which the target mostly rejects), the second token's (the first
/// verified guess or its replacement)
/// frequencies are within 0.15 total variation of its exact marginal under the target,
/// Σ_t0 p(t0) · p(· | t0) (the target's own distributions, through the sampler); the draft's
/// own marginal — what keeping every guess would give — is farther off than that, so the test
/// can tell. The same seed gives the same tokens.
#[test]
fn speculative_sampling_follows_the_targets_distribution() {
    let ctx = common::context(false, true).unwrap();
    let spec = synth::preset("tiny-llama").unwrap();
    let target_file = synth::synthesize(&spec, 1, &mut |_, _| {}).unwrap();
    let target = load(&ctx, &target_file);
    let pruned_file = pollster::block_on(keep_layers(&parse_header(&target_file).unwrap(), &target_file[..], &[1]));
    let draft = load(&ctx, &pruned_file.unwrap());
    let prompt: Vec<u32> = (0..7).map(|i| (i * 53 + 5) % spec.vocab as u32).collect();
    let cfg = SamplerConfig { temperature: 1.0, top_k: 6, ..SamplerConfig::default() };
    // Exact marginal of the second token under a model: Σ_t0 p(t0) p(· | prompt, t0).
    let marginal = |model: &LlamaModel| {
        let mut sampler = Sampler::new(cfg.clone()).unwrap();
        let mut session = Session::new(&ctx, model).unwrap();
        session.set_prompt(&ctx, &prompt).unwrap();
        let d0 =
            pollster::block_on(sampler.distribution(pupil::gpu::Batch::new(&ctx), &session.logits().unwrap(), &prompt))
                .unwrap();
        let mut out = std::collections::BTreeMap::<u32, f64>::new();
        for (&t0, p0) in d0.tokens().iter().zip(d0.probs()) {
            let seq = [&prompt[..], &[t0]].concat();
            session.set_prompt(&ctx, &seq).unwrap();
            let d1 = pollster::block_on(sampler.distribution(
                pupil::gpu::Batch::new(&ctx),
                &session.logits().unwrap(),
                &seq,
            ))
            .unwrap();
            for (&t1, p1) in d1.tokens().iter().zip(d1.probs()) {
                *out.entry(t1).or_default() += p0 * p1;
            }
        }
        out
    };
    let (exact, drafts) = (marginal(&target), marginal(&draft));
    let tv = |a: &std::collections::BTreeMap<u32, f64>, b: &std::collections::BTreeMap<u32, f64>| {
        let keys: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
        keys.iter().map(|t| (a.get(t).unwrap_or(&0.0) - b.get(t).unwrap_or(&0.0)).abs()).sum::<f64>() / 2.0
    };
    let runs = 300;
    let mut counts = std::collections::BTreeMap::<u32, f64>::new();
    let (mut drafted, mut accepted) = (0, 0);
    for seed in 0..runs {
        let opts = SpeculativeOptions {
            draft_tokens: 2,
            max_tokens: 3,
            stop_tokens: vec![],
            sampling: SamplerConfig { seed, ..cfg.clone() },
        };
        let (got, s) = speculate(&ctx, &target, &draft, &prompt, &opts, None);
        assert_eq!(got.len(), 3);
        *counts.entry(got[1]).or_default() += 1.0 / runs as f64;
        (drafted, accepted) = (drafted + s.drafted_tokens, accepted + s.accepted_tokens);
        if seed == 3 {
            assert_eq!(speculate(&ctx, &target, &draft, &prompt, &opts, None).0, got, "seeded: reproducible");
        }
    }
    let (e, d) = (tv(&counts, &exact), tv(&drafts, &exact));
    println!(
        "second token over {runs} seeds: TV to the target's exact marginal {e:.3}; the draft's marginal is {d:.3} away; \
         acceptance {:.3} ({accepted}/{drafted})",
        accepted as f64 / drafted.max(1) as f64
    );
    assert!(e < 0.15, "speculative sampling drifts from the target: TV {e}");
    assert!(d > 0.3, "the draft must differ from the target for this test to tell: TV {d}");
    assert!(accepted > 0 && accepted < drafted, "both branches ran: {accepted}/{drafted}");
}

/// On the real default model (SmolLM2-135M-Instruct Q4_1) with its own depth-pruned copy as
/// the draft (28 of 30 layers, as `pupil prune --keep` writes it; unhealed, a much shallower
/// copy agrees with it on almost nothing), greedy speculative text is
/// the model's own text token for token — so the verification pass's logits pick what decode
/// picks on a real vocabulary of 49,152 — and the draft's guesses are kept often enough to
/// save target passes.
#[test]
fn speculative_text_on_smollm2_is_the_models_own() {
    let Some(file) = common::smollm2() else { return };
    let ctx = common::context(false, true).unwrap();
    let header = parse_header(&file).unwrap();
    let tokenizer = pupil::tokenizer::Tokenizer::from_gguf(&header).unwrap();
    let keep: Vec<usize> = (0..30).filter(|l| ![14, 21].contains(l)).collect();
    let draft_file = pollster::block_on(keep_layers(&header, &file[..], &keep)).unwrap();
    let (target, draft) = (load(&ctx, &file), load(&ctx, &draft_file));
    drop((file, draft_file));
    let prompt = tokenizer.encode_for_model("The three primary colours are", false).unwrap();
    let n = 20;
    let want = greedy(&ctx, &target, &prompt, n, &[]);
    let opts =
        pupil::engine::TextOptions { max_tokens: n, stop_tokens: vec![], stop_strings: vec![], skip_special: true };
    let (mut t, mut d) = (Session::new(&ctx, &target).unwrap(), Session::new(&ctx, &draft).unwrap());
    let mut shown = String::new();
    let out = pollster::block_on(pupil::engine::generate_text_speculative(
        &ctx,
        &mut t,
        &mut d,
        &tokenizer,
        &prompt,
        &opts,
        4,
        &SamplerConfig::greedy(),
        &mut |delta, _, _| {
            shown.push_str(delta);
            Flow::Continue
        },
    ))
    .unwrap();
    let s = &out.stats;
    println!(
        "{:?}: acceptance {:.3} ({}/{}), {:.2} tokens per target pass ({} passes for {} tokens)",
        out.text, s.acceptance_rate, s.accepted_tokens, s.drafted_tokens, s.tokens_per_target_pass, s.target_passes, n
    );
    assert_eq!(out.tokens, want, "greedy speculative tokens are the model's");
    assert_eq!(out.text, tokenizer.decode(&want, true).unwrap());
    assert_eq!(shown, out.text, "the streamed deltas make the text");
    assert!(s.accepted_tokens > 0 && s.target_passes < n - 1, "the draft saves passes");
}
