"""Measured CPU/GPU latency of models on synthetic inputs (median of repeated runs after warm-up)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn


def synthetic_batch(model: nn.Module, batch_size: int = 32, seq_len: int = 128, seed: int = 0) -> dict:
    """Random token ids (no padding) of the model's vocabulary, on the model's device."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(5, max(vocab, 6), (batch_size, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


@torch.inference_mode()
def measure_latency(
    models: Mapping[str, nn.Module],
    batch_size: int = 32,
    seq_len: int = 128,
    warmup: int = 2,
    repeats: int = 10,
) -> dict[str, dict[str, float]]:
    """Latency in milliseconds of each model, measured alternately (dense, pruned, dense, ...) in one process.

    Alternating the models spreads machine noise evenly over them. Returns, per name, the median,
    min and max over ``repeats`` timed forward passes, after ``warmup`` untimed ones.

    Example::

        sp.measure_latency({"dense": teacher, "pruned": student}, batch_size=32, seq_len=128)["pruned"]["median_ms"]
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"Need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}.")
    batches = {name: synthetic_batch(m, batch_size, seq_len) for name, m in models.items()}
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for m in models.values():
            m.eval()
        for i in range(warmup + repeats):
            for name, m in models.items():
                sync = torch.cuda.synchronize if batches[name]["input_ids"].is_cuda else (lambda: None)
                sync()
                t0 = time.perf_counter()
                m(**batches[name])
                sync()
                if i >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": len(t)}
        for name, t in times.items()
    }
