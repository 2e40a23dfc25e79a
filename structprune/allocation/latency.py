"""Measured CPU/GPU latency of models on synthetic inputs (median of repeated runs after warm-up).

:func:`measure_latency` times whole models; :func:`time_layers` times each encoder layer inside a model's
forward, which :class:`structprune.LatencyModel` builds its tables from.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..arch import view


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


def device_name(device: torch.device | str) -> str:
    """What a latency was measured on: ``"cpu:<processor model>"``, ``"cuda:<GPU name>"`` (or the device type)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{cpu_model()}"
    return device.type


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@torch.inference_mode()
def time_layers(
    models: Sequence[nn.Module],
    layer_lists: Sequence[Sequence[nn.Module]],
    batch_size: int = 32,
    seq_len: int = 128,
    warmup: int = 2,
    repeats: int = 10,
) -> list[tuple[list[float], float, float]]:
    """Per model: the median milliseconds of each of its ``layer_lists`` modules, of everything outside them
    (the whole forward minus the layers) and of the whole forward, on :func:`synthetic_batch` inputs.

    Forward hooks time each layer inside the model's own forward (the device is synchronized around each
    layer on CUDA); the models run alternately, as in :func:`measure_latency`.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"Need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}.")
    batches = [synthetic_batch(m, batch_size, seq_len) for m in models]
    layer_times = [[[] for _ in layers] for layers in layer_lists]  # [model][layer] -> ms per run
    outside: list[list[float]] = [[] for _ in models]
    totals: list[list[float]] = [[] for _ in models]
    stamps: list[float] = []
    handles = []
    modes = [m.training for m in models]
    syncs = [torch.cuda.synchronize if b["input_ids"].is_cuda else (lambda: None) for b in batches]

    def hooks(sync):
        def before(module, args):
            sync()
            stamps.append(time.perf_counter())

        def after(module, args, output):
            sync()
            stamps.append(time.perf_counter())

        return before, after

    try:
        for m, layers, sync in zip(models, layer_lists, syncs, strict=True):
            m.eval()
            before, after = hooks(sync)
            for layer in layers:
                handles.append(layer.register_forward_pre_hook(before))
                handles.append(layer.register_forward_hook(after))
        for i in range(warmup + repeats):
            for j, m in enumerate(models):
                stamps.clear()
                syncs[j]()
                t0 = time.perf_counter()
                m(**batches[j])
                syncs[j]()
                total = (time.perf_counter() - t0) * 1000
                if len(stamps) != 2 * len(layer_lists[j]):
                    raise RuntimeError(
                        f"Expected each of the {len(layer_lists[j])} layers to run once per forward, "
                        f"timed {len(stamps) // 2} layer calls."
                    )
                if i < warmup:
                    continue
                layers_ms = [(stamps[2 * k + 1] - stamps[2 * k]) * 1000 for k in range(len(layer_lists[j]))]
                for k, t in enumerate(layers_ms):
                    layer_times[j][k].append(t)
                outside[j].append(total - sum(layers_ms))
                totals[j].append(total)
    finally:
        for h in handles:
            h.remove()
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return [
        (
            [statistics.median(t) for t in layer_times[j]],
            statistics.median(outside[j]),
            statistics.median(totals[j]),
        )
        for j in range(len(models))
    ]


def time_plans(
    model: nn.Module,
    plans: Sequence[Sequence[tuple[int, int]]],
    *,
    batch_size: int = 32,
    seq_len: int = 128,
    device=None,
    warmup: int = 2,
    repeats: int = 10,
) -> list[tuple[list[float], float, float]]:
    """:func:`time_layers` of one copy of the unpruned ``model`` per plan, pruned with structprune's own
    surgery so that layer ``i`` keeps ``plan[i] = (heads, neurons)`` (the first ones), on ``device``
    (default: the model's). ``model`` is left unchanged."""
    import copy

    from ..mask import Mask
    from ..surgery.prune import prune_  # surgery never imports allocation: no cycle

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    models = []
    for plan in plans:
        m = copy.deepcopy(model)
        mask = Mask.full(m)
        for layer, (h, n) in enumerate(plan):
            mask.head[layer, h:] = False
            mask.ffn[layer, n:] = False
        if mask != Mask.full(m):
            m = prune_(m, mask)
        models.append(m.to(dev))
    return time_layers(models, [view(m).layer_list for m in models], batch_size, seq_len, warmup, repeats)
