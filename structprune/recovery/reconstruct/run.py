"""Layer-wise least-squares reconstruction: retraining-free recovery after pruning.

Layer by layer, in order, the kept structures are re-fitted so that the pruned layer's output on
calibration data matches the unpruned model's. The student runs on its *own* (already reconstructed)
inputs, the reference on the unpruned model's, so each fit also corrects the error coming from below.

What is matched is the pre-LayerNorm sum of each block (``o(x) + residual`` for attention,
``down(x) + residual`` for the FFN; in post-norm layers the FFN's residual is its input, in pre-norm
layers, ModernBERT's, the un-normalized ``x + attn``), so the student's residual drift is part of the
target. What is fitted (``fit=``):

- ``"weights"`` (default): the output projection's columns of the kept heads / neurons and its bias,
  ``min ||X W^T + b - Y||^2 + lam ||W - W_0||^2`` (ridge toward the current weights). One Cholesky
  solve of a ``[kept, kept]`` system per block; far more freedom than scales and still cheap.
- ``"scales"``: one factor per kept head / neuron plus the bias (Kwon et al. 2022's mask tuning),
  ridge toward 1, factors clamped to ``[0, max_scale]``.

A student narrower than its reference (hidden dimensions pruned, e.g. ``sp.compress(..., hidden=256)``)
is fitted to the reference's block sums at the dimensions it kept, each token's target mapped by the
per-token shift and scale that take the reference's residual to the student's (its LayerNorms normalize
over the kept dimensions only). The reference is then the model at the student's depth and full width.

Both solve in float64 from Gram statistics, with ``lam = damp * mean(diag)``. Each fit is accepted only
where it lowers the block's calibration error: the ridge solution never raises it (the current weights
are a feasible point), a bounded step toward it keeps that property (the error is convex along the
segment), and a non-finite solution falls back to the current weights with a warning. Too few
calibration tokens for the unknowns: a warning and a larger ridge.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ...arch import LayerView, view
from ...batches import model_inputs
from ...gates import Gates
from ...mask import Mask
from ...options import FromDict
from ...progress import bar, warn
from .solve import BlockStats, block_error, solve_scales, solve_weights

logger = logging.getLogger(__name__)

FITS = ("weights", "scales")


@dataclass
class ReconstructConfig(FromDict):
    """Options of :func:`reconstruct`."""

    options_name: ClassVar[str] = "reconstruct"

    fit: str = field(default="weights", metadata={"help": "'weights' (kept output-projection columns + bias) or 'scales' (one factor per kept unit + bias)."})  # fmt: skip
    damp: float = field(default=0.01, metadata={"help": "Ridge strength relative to the mean diagonal of the Gram matrix."})  # fmt: skip
    max_scale: float = field(default=4.0, metadata={"help": "fit='scales': factors are clamped to [0, max_scale]."})  # fmt: skip
    max_change: float = field(default=2.0, metadata={"help": "fit='weights': largest ||W - W_0|| / ||W_0|| allowed; a larger step is shortened."})  # fmt: skip
    fit_bias: bool = field(default=True, metadata={"help": "Also re-fit the output projection's bias."})
    tokens_per_unknown: float = field(default=4.0, metadata={"help": "Below this many calibration tokens per unknown: warn and raise the ridge."})  # fmt: skip
    max_examples: int | None = field(default=None, metadata={"help": "Use at most this many calibration examples."})  # fmt: skip
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {self.fit!r}.")
        if not self.damp > 0:
            raise ValueError(f"damp must be > 0 (a ridge keeps the solve stable), got {self.damp!r}.")
        if not self.max_scale > 0 or not self.max_change > 0:
            raise ValueError("max_scale and max_change must be > 0; they bound how far a fit may move.")
        if not self.tokens_per_unknown > 0:
            raise ValueError(f"tokens_per_unknown must be > 0, got {self.tokens_per_unknown!r}.")
        if self.max_examples is not None and (
            not isinstance(self.max_examples, int) or self.max_examples < 1
        ):
            raise ValueError(f"max_examples must be a positive integer or None, got {self.max_examples!r}.")


@dataclass
class BlockFit:
    """One fitted block: its calibration error (sum of squares over real tokens) before and after."""

    layer: int
    block: str
    unknowns: int
    tokens: int
    error_before: float
    error_after: float
    damp: float
    step: float
    """Fraction of the way to the ridge solution taken (1 unless bounded or rejected)."""


@dataclass
class ReconstructReport:
    """What :func:`reconstruct` did: one :class:`BlockFit` per attention / FFN block, and totals."""

    fit: str
    examples: int
    tokens: int
    seconds: float
    blocks: list[BlockFit]

    @property
    def error_before(self) -> float:
        return sum(b.error_before for b in self.blocks)

    @property
    def error_after(self) -> float:
        return sum(b.error_after for b in self.blocks)

    def to_dict(self) -> dict:
        return {**asdict(self), "error_before": self.error_before, "error_after": self.error_after}


class _Stop(Exception):
    """Raised from a hook to end a layer's forward once what is needed has been seen."""


def _first(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _out(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def take_examples(batches: Iterable[Mapping], max_examples: int | None) -> list[dict]:
    """Materialize calibration batches (re-iterable), cut to ``max_examples`` examples in total."""
    out, seen = [], 0
    for batch in batches:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"Each calibration batch must be a dict of model inputs; got {type(batch).__name__}. Use "
                "structprune.data.make_dataloader or a DataCollatorWithPadding."
            )
        if "input_ids" not in batch and "inputs_embeds" not in batch:
            raise ValueError("A calibration batch has no 'input_ids'; tokenize the calibration data first.")
        n = len(next(iter(t for t in batch.values() if isinstance(t, torch.Tensor))))
        if max_examples is not None and seen + n > max_examples:
            keep = max_examples - seen
            batch = {k: (t[:keep] if isinstance(t, torch.Tensor) else t) for k, t in batch.items()}
            n = keep
        if n:
            out.append(dict(batch))
            seen += n
        if max_examples is not None and seen >= max_examples:
            break
    if not out:
        raise ValueError(
            "The calibration data is empty; reconstruction needs examples (a few hundred is typical)."
        )
    return out


def _examples(batches: list[dict]) -> int:
    return sum(len(b["input_ids"]) for b in batches)


class _Side:
    """One model side (reference or student) walked layer by layer over cached hidden states."""

    def __init__(self, model: nn.Module, gates: Gates | None):
        self.model = model
        self.view = view(model)
        self.gates = gates
        self.by_orig: dict[int, LayerView] = {lv.orig: lv for lv in self.view.layers}
        self.calls: list[dict[int, tuple]] = []  # per batch: each layer's (args, kwargs), by original index

    @torch.no_grad()
    def capture(self, inputs: list[dict]) -> None:
        """Record every layer's call for every batch: the first layer's input and each layer's other
        arguments (the attention mask, a shared position bias or table; ModernBERT gives global and
        sliding-window layers different masks and rotary tables), stopping the forward at the last layer.
        Only the first layer's input is kept; the others are replaced when a layer is run."""
        current: dict[int, tuple] = {}
        last = self.view.layers[-1].orig

        def hook(module, args, kwargs, orig):
            if current:  # keep the arguments, not the hidden states
                args, kwargs = _with_hidden(args, kwargs, None)
            current[orig] = (args, kwargs)
            if orig == last:
                raise _Stop

        handles = [
            lv.module.register_forward_pre_hook(
                lambda m, a, k, orig=lv.orig: hook(m, a, k, orig), with_kwargs=True
            )
            for lv in self.view.layers
        ]
        try:
            for batch in inputs:
                try:
                    with self.gates.attach(self.model) if self.gates else _null():
                        self.model(**batch)
                except _Stop:
                    pass
                self.calls.append(dict(current))
                current.clear()
        finally:
            for handle in handles:
                handle.remove()

    def first_input(self, b: int) -> torch.Tensor:
        """The first layer's input of batch ``b``."""
        return _first(*self.calls[b][self.view.layers[0].orig])

    def run(self, orig: int, b: int, hidden: torch.Tensor, observer=None) -> torch.Tensor | None:
        """Run layer ``orig`` of batch ``b`` on ``hidden`` with this side's gates (if any) and ``observer``;
        returns the layer output, or None when the observer stopped it early."""
        lv = self.by_orig[orig]
        args, kwargs = _with_hidden(*self.calls[b][orig], hidden)
        head = self.gates.head if self.gates else None
        ffn = self.gates.ffn if self.gates else None
        try:
            with Gates(head, ffn, observer=observer).attach(self.model):
                return _out(lv.module(*args, **kwargs))
        except _Stop:
            return None


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _columns(lv: LayerView, keep: torch.Tensor | None, group: int) -> torch.Tensor | None:
    """Positions of the kept units' columns in the current projection input (None: all of them)."""
    ids = lv.heads if group > 1 else lv.ffn
    if keep is None or all(bool(keep[orig]) for orig in ids):
        return None
    pos = [j for j, orig in enumerate(ids) if bool(keep[orig])]
    return torch.tensor([j * group + t for j in pos for t in range(group)], dtype=torch.long)


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    reference: nn.Module | Mask,
    calibration_data: Iterable[Mapping],
    config: ReconstructConfig | None = None,
    **options,
) -> ReconstructReport:
    """Re-fit the kept heads / neurons of ``model`` so each layer matches the unpruned one; in place.

    Two ways to call it:

    - ``reference`` is a :class:`Mask`: ``model`` is the unpruned (or less pruned) model and the mask is
      applied with gates; the fitted weights of the kept structures are written into ``model``, whose
      masked output then equals what ``sp.prune_(model, mask)`` gives (what :func:`compress` does).
    - ``reference`` is a model: ``model`` was pruned from it (same original coordinates); the reference
      is only read. ``model`` may be narrower (hidden dimensions pruned) than a full-width reference.

    ``calibration_data``: batches (dicts of model inputs; labels are ignored - the targets are the
    reference model's own layer outputs). Options are the fields of :class:`ReconstructConfig`.

    Example::

        mask = sp.search(sp.score(model, batches, method="fisher"), model, flops=0.5)
        report = sp.reconstruct(model, mask, batches)      # fit on the masked model
        sp.prune_(model, mask)
        report.error_after < report.error_before            # True
    """
    cfg = config if config is not None else ReconstructConfig(**options)
    if config is not None and options:
        raise TypeError("Pass either config=ReconstructConfig(...) or keyword options, not both.")
    start = time.perf_counter()
    mask, ref_model, gates = _reference(model, reference)
    device = next(model.parameters()).device
    inputs = [model_inputs(b, device) for b in take_examples(calibration_data, cfg.max_examples)]
    real = [_real_tokens(b, device) for b in inputs]  # [B, T] bool per batch
    was_training = (model.training, ref_model.training)
    model.eval()
    ref_model.eval()

    ref, stu = _Side(ref_model, None), _Side(model, gates)
    ref.capture(inputs)
    if mask is None:
        stu.capture(inputs)
    else:
        stu.calls = ref.calls  # one model, gated: the same layer calls
    h_ref = [ref.first_input(b) for b in range(len(inputs))]  # each layer's input, per batch
    h_stu = [stu.first_input(b) for b in range(len(inputs))]

    dims = _narrowed(stu, ref, device)  # a narrower student: the reference dimensions it kept
    fits: list[BlockFit] = []
    few: list[_Few] = []
    for orig in bar(sorted(ref.by_orig), enabled=cfg.progress, desc="reconstruct", leave=False):
        targets = _reference_targets(ref, orig, h_ref, real, dims)  # also moves h_ref to the next layer
        if orig not in stu.by_orig or (mask is not None and orig not in mask.kept_layers):
            continue  # dropped layer: the student passes its input through
        slv = stu.by_orig[orig]
        for kind, group in (("o", stu.view.structure.head_size), ("down", 1)):
            lin = slv.o if kind == "o" else slv.down
            keep = None if mask is None else (mask.head[orig] if kind == "o" else mask.ffn[orig])
            cols = _columns(slv, keep, group)
            stats = _student_stats(stu, slv, orig, kind, cols, lin, h_stu, real, targets[kind], device,
                                   ref_res=targets.get(f"{kind}_res"))  # fmt: skip
            block = "attn" if kind == "o" else "ffn"
            fits.append(_fit_block(cfg, lin, cols, stats, orig, block, group, few))
        for b in range(len(inputs)):
            h_stu[b] = stu.run(orig, b, h_stu[b])
    model.train(was_training[0])
    ref_model.train(was_training[1])
    n_tokens = int(sum(int(r.sum()) for r in real))
    report = ReconstructReport(cfg.fit, _examples(inputs), n_tokens, time.perf_counter() - start, fits)
    if few:
        warn(_few_message(cfg, few, len(fits), report.examples, n_tokens))
    logger.info(
        "reconstruct: %d blocks, calibration error %.4g -> %.4g (%.1fs)",
        len(fits),
        report.error_before,
        report.error_after,
        report.seconds,
    )
    return report


def _reference(model: nn.Module, reference) -> tuple[Mask | None, nn.Module, Gates | None]:
    """``(mask, reference model, student gates)`` for a Mask or an unpruned reference model."""
    st = view(model).structure
    if isinstance(reference, Mask):
        reference.check_compatible(model)
        mask, ref_model, gates = reference, model, Gates.from_mask(reference)
    elif isinstance(reference, nn.Module):
        rs = view(reference).structure
        if (rs.num_layers, rs.num_heads, rs.intermediate_size, rs.hidden_size) != (
            st.num_layers, st.num_heads, st.intermediate_size, st.hidden_size,
        ):  # fmt: skip
            raise ValueError(
                "The reference model is not the one this model was pruned from (original sizes differ); pass "
                "the unpruned model, or the unpruned model with a Mask."
            )
        Mask.full(model).check_compatible(reference)
        mask, ref_model, gates = None, reference, None
    else:
        raise TypeError(
            f"reference must be the unpruned model or a structprune.Mask, got {type(reference).__name__}."
        )
    if mask is not None and (st.hidden is not None or mask.hidden is not None):
        raise ValueError(
            "reconstruct with a Mask re-fits heads and FFN neurons at the full hidden size; this model or mask "
            "prunes hidden dimensions. Prune first (sp.prune_) and pass the unpruned model as the reference."
        )
    ref_hidden = view(ref_model).structure.hidden
    if mask is None and ref_hidden is not None and st.hidden != ref_hidden:
        raise ValueError(
            "The reference model has pruned hidden dimensions; pass the model before its hidden size was cut "
            "(a student narrower than its reference is fitted to the reference's kept dimensions)."
        )
    return mask, ref_model, gates


def _narrowed(stu: _Side, ref: _Side, device) -> torch.Tensor | None:
    """The reference's residual-stream dimensions the student kept, when it kept fewer (else None)."""
    kept, ref_kept = stu.view.structure.hidden, ref.view.structure.hidden
    if kept is None or kept == ref_kept:
        return None
    return torch.tensor(kept, dtype=torch.long, device=device)


def _real_tokens(batch: dict, device) -> torch.Tensor:
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].bool()
    return torch.ones(batch["input_ids"].shape[:2], dtype=torch.bool, device=device)


def _reference_targets(
    ref: _Side, orig: int, h_ref: list, real: list, dims: torch.Tensor | None = None
) -> dict[str, list[torch.Tensor]]:
    """The reference's pre-LayerNorm block sums of layer ``orig`` over real tokens (``o``: attention,
    ``down``: FFN), per batch; ``h_ref`` advances to the layer's outputs. With ``dims`` (a narrower student's
    kept dimensions), at those dimensions, and with the residuals the sums were formed on (``o_res``,
    ``down_res``)."""
    targets: dict[str, list[torch.Tensor]] = {"o": [], "down": []}
    if dims is not None:
        targets.update(o_res=[], down_res=[])

    def keep(t: torch.Tensor, b: int) -> torch.Tensor:
        t = t[real[b]]
        return t if dims is None else t[:, dims]

    seen: dict[str, torch.Tensor] = {}
    lv = ref.by_orig[orig]
    handles = [
        lv.o.register_forward_hook(lambda m, a, out, s=seen: s.__setitem__("o", out)),
        lv.down.register_forward_hook(lambda m, a, out, s=seen: s.__setitem__("down", out)),
        lv.up.register_forward_pre_hook(lambda m, a, s=seen: s.__setitem__("up_in", a[0])),
    ]
    pre_norm = ref.view.spec.pre_norm
    try:
        for b in range(len(h_ref)):
            out = ref.run(orig, b, h_ref[b])
            ffn_res = _ffn_residual(pre_norm, h_ref[b], seen)
            targets["o"].append(keep(seen["o"] + h_ref[b], b))
            targets["down"].append(keep(seen["down"] + ffn_res, b))
            if dims is not None:
                targets["o_res"].append(keep(h_ref[b], b))
                targets["down_res"].append(keep(ffn_res, b))
            h_ref[b] = out
    finally:
        for h in handles:
            h.remove()
    return targets


def _student_stats(stu: _Side, slv: LayerView, orig: int, kind: str, cols, lin: nn.Linear, h_stu: list,
                   real: list, targets: list, device, ref_res=None) -> BlockStats:  # fmt: skip
    """Gram statistics of the student's projection ``kind`` inputs (kept columns) against what it must
    add to its own residual to reach the reference's block sum. ``ref_res`` (a narrower student): the
    reference's residuals; the target is then mapped per token by the affine map that best takes the
    reference's residual to the student's (:func:`_token_affine`)."""
    stats = BlockStats.zeros(lin.in_features if cols is None else len(cols), lin.out_features)
    for b in range(len(h_stu)):
        seen: dict[str, torch.Tensor] = {}

        def observer(k, layer, x, seen=seen):
            if k == kind:
                seen["x"] = x
                raise _Stop

        handles = [
            slv.up.register_forward_pre_hook(lambda m, a, seen=seen: seen.__setitem__("up_in", a[0])),
            slv.o.register_forward_hook(lambda m, a, out, seen=seen: seen.__setitem__("o", out)),
        ]
        try:
            stu.run(orig, b, h_stu[b], observer)
        finally:
            for handle in handles:
                handle.remove()
        resid = h_stu[b] if kind == "o" else _ffn_residual(stu.view.spec.pre_norm, h_stu[b], seen)
        x = seen["x"] if cols is None else seen["x"][..., cols.to(device)]
        target, r = targets[b], resid[real[b]]
        if ref_res is not None:
            a, c = _token_affine(ref_res[b], r)
            target = a * target + c
        stats.add(x[real[b]], target - r)
    return stats


def _token_affine(ref: torch.Tensor, stu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the ``a, c`` of the least-squares ``stu ~ a * ref + c`` over the hidden dimensions.

    A narrower student's LayerNorms normalize over its kept dimensions only, so its residual stream is the
    reference's at those dimensions up to a per-token shift and scale (the mean and spread of the kept
    dimensions differ from the whole stream's). A LayerNorm removes exactly such a map, so the block is
    fitted to the reference's sum in the student's own per-token scale. Without it the fit spends its
    freedom on that scale: on tiny random MPNet and BERT models the normalized outputs often ended further
    from the reference's than with no fit at all; with it they end closer (tests/test_reconstruct.py)."""
    rm, sm = ref.mean(-1, keepdim=True), stu.mean(-1, keepdim=True)
    rc = ref - rm
    a = (rc * (stu - sm)).sum(-1, keepdim=True) / rc.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
    return a, sm - a * rm


def _ffn_residual(pre_norm: bool, layer_input: torch.Tensor, seen: dict) -> torch.Tensor:
    """What the FFN block adds its output to: the attention block's output, which is the FFN's input in a
    post-norm layer (``norm(x + attn)``) and the un-normalized ``x + attn`` in a pre-norm one."""
    return layer_input + seen["o"] if pre_norm else seen["up_in"]


@dataclass
class _Few:
    """A block with fewer calibration rows than ``tokens_per_unknown`` per unknown (its ridge is raised)."""

    layer: int
    block: str
    tokens: int
    unknowns: int
    tokens_needed: int  # calibration tokens that would reach tokens_per_unknown with this fit
    tokens_needed_scales: int  # the same with fit="scales"


def _few_message(cfg: ReconstructConfig, few: list[_Few], blocks: int, examples: int, tokens: int) -> str:
    """One warning for a whole reconstruct call, with advice computed from the same thresholds."""
    worst = max(few, key=lambda f: f.tokens_needed)
    per_example = max(tokens / max(examples, 1), 1e-9)
    need_examples = math.ceil(worst.tokens_needed / per_example)
    text = (
        f"Reconstruction: {len(few)} of {blocks} blocks have too few calibration tokens for their unknowns "
        f"(fit={cfg.fit!r} wants {cfg.tokens_per_unknown:g} per unknown; e.g. layer {worst.layer} "
        f"{worst.block}: {worst.tokens} tokens are few for {worst.unknowns} unknowns per output), so their "
        f"ridge was raised. To avoid it, use at least {worst.tokens_needed} calibration tokens: about "
        f"{need_examples} examples of this length ({per_example:.3g} real tokens each; {examples} given)"
    )
    if cfg.fit == "weights":
        scales = max(f.tokens_needed_scales for f in few)
        text += f", or fit='scales', which needs {scales} token{'s' if scales != 1 else ''}"
    return text + "."


def _fit_block(
    cfg: ReconstructConfig,
    lin: nn.Linear,
    cols: torch.Tensor | None,
    stats: BlockStats,
    orig: int,
    block: str,
    group: int,
    few: list[_Few] | None = None,
) -> BlockFit:
    if cols is None:
        cols = torch.arange(lin.in_features)
    w0 = lin.weight.detach()[:, cols.to(lin.weight.device)].double().cpu()
    b0 = (
        lin.bias.detach().double().cpu()
        if lin.bias is not None
        else torch.zeros(lin.out_features, dtype=torch.float64)
    )
    fit_bias = cfg.fit_bias and lin.bias is not None
    unknowns = w0.shape[1] if cfg.fit == "weights" else w0.shape[1] // group
    rows = stats.count if cfg.fit == "weights" else stats.count * lin.out_features
    damp = cfg.damp
    need = cfg.tokens_per_unknown * unknowns
    if rows < need:
        damp = cfg.damp * need / max(rows, 1)
        if few is not None:
            per_token = 1 if cfg.fit == "weights" else lin.out_features  # rows one calibration token gives
            few.append(
                _Few(
                    orig,
                    block,
                    stats.count,
                    unknowns,
                    math.ceil(need / per_token),
                    math.ceil(cfg.tokens_per_unknown * (w0.shape[1] // group) / lin.out_features),
                )
            )
    before = block_error(stats, w0, b0)
    if cfg.fit == "weights":
        w, b, step = solve_weights(stats, w0, b0, damp, cfg.max_change, fit_bias)
    else:
        w, b, step = solve_scales(stats, w0, b0, group, damp, cfg.max_scale, fit_bias)
    after = block_error(stats, w, b) if step > 0 else before
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()) or after > before:
        warn(
            f"Layer {orig} {block}: the least-squares fit was not finite or did not lower the error; keeping "
            "the current weights."
        )
        w, b, step, after = w0, b0, 0.0, before
    with torch.no_grad():
        lin.weight[:, cols.to(lin.weight.device)] = w.to(lin.weight.dtype).to(lin.weight.device)
        if fit_bias:
            lin.bias.copy_(b.to(lin.bias.dtype))
    return BlockFit(orig, block, unknowns, stats.count, before, after, damp, step)
