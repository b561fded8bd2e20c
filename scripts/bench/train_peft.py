#!/usr/bin/env python3
"""The PyTorch + PEFT side of `pupil-bench train`: the same LoRA configuration (rank 16,
alpha 32, q k v o gate up down, dropout 0), the same model shape (the GGUF `pupil synth
smollm2-135m` writes, read by transformers and dequantized to float32), batch 4 x seq 256 of
random ids, AdamW with clipping; eager attention, float32. Prints seconds per step, tokens/s and
peak memory (CUDA when a GPU is there and --device cuda, else the process's peak RSS).

Dev-only (not run in CI). Same venv as the fixture scripts (torch, transformers, peft):

    cargo build --release --bin pupil
    /tmp/torchvenv/bin/python scripts/bench/train_peft.py [--device cpu|cuda] [--steps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import subprocess
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pupil", default=str(ROOT / "target" / "release" / "pupil"))
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = pathlib.Path(tmp) / "m.gguf"
        subprocess.run([args.pupil, "synth", args.shape, "--seed", "1", "-o", str(gguf)], check=True, capture_output=True)
        base = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        bias="none",
    )
    model = get_peft_model(base, cfg).to(args.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.seq), generator=g).to(args.device)

    def step() -> float:
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    secs = (time.perf_counter() - t0) / args.steps
    tokens = args.batch * args.seq
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        what = "CUDA peak allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        what = "process peak RSS"
    trainable = sum(p.numel() for p in params)
    print(
        f"PyTorch {torch.__version__} + PEFT on {args.device} ({torch.get_num_threads()} threads): synthetic {args.shape}, "
        f"LoRA rank {args.rank} ({trainable} trainable), batch {args.batch} x seq {args.seq}, f32 eager: "
        f"{secs:.1f} s/step, {tokens / secs:.1f} tokens/s, {what} {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
