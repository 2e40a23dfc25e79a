"""The one-call retraining-free path: score, search, prune and reconstruct.

``compress(model, calibration_data, flops=0.5)`` (or ``params=``, or ``latency=``: a fraction of the model's
latency predicted by a :class:`~structprune.LatencyModel` measured on this machine) runs Fisher scoring on
the calibration batches (labels, or the model's own predictions), the constrained mask search and its
per-layer rearrangement (:mod:`structprune.allocation.search`), surgery (:func:`structprune.prune_`) and
layer-wise reconstruction of the pruned model against a copy of the unpruned one
(:mod:`structprune.recovery.reconstruct`), and returns the smaller model with a report.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..allocation.allocate import allocate
from ..allocation.budget import one_budget
from ..allocation.cost import cost, dense_cost
from ..allocation.latency_model import LatencyModel, resolve_latency_model
from ..allocation.search import rearrange, retained, search
from ..batches import check_task, labels_of
from ..checkpoint.card import budget_text, note_card
from ..mask import Mask, Scores
from ..progress import warn
from ..recovery.reconstruct import ReconstructConfig, ReconstructReport, reconstruct, take_examples
from ..scoring import available_scorers, score, scorer_options
from ..scoring.gradients import GateGradients, gate_gradients
from ..scoring.shape import score_shape
from ..surgery.prune import prune_
from .select import clearly_lower, heldout_losses, reference_logits, split_holdout, taylor_from

logger = logging.getLogger(__name__)

FEW_EXAMPLES = 64
SELECT_BY = ("task_loss", "divergence")  # CompressConfig.select_by (structprune.run.select)


@dataclass
class CompressConfig:
    """Options of :func:`compress` (one budget: ``flops`` or ``params``, a fraction of the unpruned encoder, or
    ``latency``, a fraction of the unpruned model's predicted latency)."""

    flops: float | None = field(default=None, metadata={"help": "Fraction of the unpruned encoder FLOPs to keep (default 0.5 when no budget is given)."})  # fmt: skip
    params: float | None = field(default=None, metadata={"help": "Fraction of the unpruned encoder parameters to keep."})  # fmt: skip
    latency: float | None = field(default=None, metadata={"help": "Fraction of the unpruned model's latency to keep, as predicted by a latency model measured on this machine (structprune.LatencyModel)."})  # fmt: skip
    latency_model: str | None = field(default=None, metadata={"help": "For latency=: a saved LatencyModel (JSON path, or the object); default: the one cached for latency_batch_size x seq_len on the model's device, measured the first time."})  # fmt: skip
    latency_batch_size: int = field(default=32, metadata={"help": "Batch size the latency model is measured at (latency=; the sequence length is seq_len)."})  # fmt: skip
    method: str = field(default="fisher", metadata={"help": "Importance scorer (see structprune.available_scorers())."})  # fmt: skip
    label_free: bool | None = field(default=None, metadata={"help": "Score against the model's own predictions; None: only when the batches have no labels."})  # fmt: skip
    search: bool = field(default=True, metadata={"help": "Constrained mask search (False: sp.allocate's global per-layer-normalized ranking)."})  # fmt: skip
    rearrange: bool = field(default=True, metadata={"help": "Refine the search's mask within layers with Fisher interactions (method='fisher'); with select, the search with no or one rearrangement is weighed beside it."})  # fmt: skip
    reconstruct: ReconstructConfig | None = field(default_factory=ReconstructConfig, metadata={"help": "Layer-wise least-squares reconstruction after surgery (a ReconstructConfig, a dict of its options, True for the defaults, or False/None for none)."})  # fmt: skip
    select: bool = field(default=True, metadata={"help": "Choose among candidates (search with or without rearrangement / global allocation of Fisher and Taylor scores, with and without reconstruction) by the loss on held-back calibration examples."})  # fmt: skip
    holdout: float = field(default=0.25, metadata={"help": "Share of the calibration examples held back to choose among candidates (select=True)."})  # fmt: skip
    select_by: str = field(default="divergence", metadata={"help": "What select=True weighs the candidates by on the held-back examples: 'divergence' (from the unpruned model's outputs: KL of the logits, or an embedding model's cosine distance; with or without labels) or 'task_loss' (with labels; without them, or label_free=True, the divergence)."})  # fmt: skip
    select_margin: float = field(default=0.0, metadata={"help": "select=True keeps the configured path (search + rearrangement + reconstruction) unless another candidate's held-back loss is lower by more than this many standard errors of the per-example difference (0: the lowest loss wins)."})  # fmt: skip
    num_examples: int | None = field(default=None, metadata={"help": "Use at most this many calibration examples (a few hundred to ~2000)."})  # fmt: skip
    seq_len: int = field(default=128, metadata={"help": "Sequence length at which FLOPs are counted (and latency measured)."})  # fmt: skip
    min_heads: int = field(default=1, metadata={"help": "Heads every kept layer keeps at least."})
    multiple_of: int = field(default=1, metadata={"help": "Round every layer's FFN width to a multiple of this."})  # fmt: skip
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    layers: int | None = field(default=None, metadata={"help": "Target depth: keep this many layers (sp.score_layers), before the head/FFN budget."})  # fmt: skip
    hidden: int | None = field(default=None, metadata={"help": "Target hidden size: keep this many residual-stream dimensions (sp.score_hidden), before the head/FFN budget."})  # fmt: skip

    def __post_init__(self):
        if self.flops is None and self.params is None and self.latency is None:
            self.flops = 0.5
        one_budget(self.flops, self.params, self.latency)
        if self.latency is not None and self.hidden is not None:
            raise ValueError(
                "A latency model is measured at the full hidden size, so latency= does not combine with hidden=; "
                "use flops= or params= with hidden=, or layers= with latency=."
            )
        if self.latency_model is not None and self.latency is None:
            raise ValueError(
                "latency_model is the model of a latency budget; give latency=<fraction> with it."
            )
        if self.latency_model is not None and not isinstance(
            self.latency_model, str | os.PathLike | LatencyModel
        ):
            raise ValueError(
                f"latency_model must be the path of a saved LatencyModel or a LatencyModel, got "
                f"{type(self.latency_model).__name__}."
            )
        if (
            isinstance(self.latency_batch_size, bool)
            or not isinstance(self.latency_batch_size, int)
            or self.latency_batch_size < 1
        ):
            raise ValueError(
                f"latency_batch_size must be a positive integer, got {self.latency_batch_size!r}."
            )
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout!r}.")
        if self.select_by not in SELECT_BY:
            raise ValueError(
                f"select_by must be one of {', '.join(map(repr, SELECT_BY))}, got {self.select_by!r}."
            )
        if (
            isinstance(self.select_margin, bool)
            or not isinstance(self.select_margin, int | float)
            or not 0 <= self.select_margin < float("inf")
        ):
            raise ValueError(f"select_margin must be a finite number >= 0, got {self.select_margin!r}.")
        if self.method not in available_scorers():
            raise ValueError(
                f"Unknown method {self.method!r}; choose one of {', '.join(available_scorers())}."
            )
        if self.reconstruct is True:
            self.reconstruct = ReconstructConfig()
        elif self.reconstruct is False:
            self.reconstruct = None
        elif isinstance(self.reconstruct, dict):
            self.reconstruct = ReconstructConfig.from_dict(self.reconstruct)
        if self.reconstruct is not None and not isinstance(self.reconstruct, ReconstructConfig):
            raise ValueError(
                "reconstruct must be a ReconstructConfig, a dict of its options, True or False, got "
                f"{type(self.reconstruct).__name__}."
            )
        if self.num_examples is not None and (
            isinstance(self.num_examples, bool)
            or not isinstance(self.num_examples, int)
            or self.num_examples < 1
        ):
            raise ValueError(f"num_examples must be a positive integer or None, got {self.num_examples!r}.")


@dataclass
class CompressReport:
    """What :func:`compress` did and what it cost."""

    mask: Mask
    method: str
    label_free: bool
    examples: int
    flops_kept: float
    """Encoder FLOPs of the result / of the unpruned model (at ``seq_len``)."""
    params_before: int
    params_after: int
    retained_importance: float
    """Share of the total importance score the mask keeps."""
    seconds: dict[str, float]
    reconstruction: ReconstructReport | None = None
    choice: str = "configured"
    """The candidate kept (``select=True``), e.g. ``"search+rearrange, reconstructed"``."""
    candidates: dict[str, float] = field(default_factory=dict)
    """Held-out calibration loss of every candidate tried (empty when nothing was held back)."""
    selected_by: str | None = None
    """What the candidates were weighed by: ``"task_loss"`` or ``"divergence"`` (None: nothing held back)."""
    latency_kept: float | None = None
    """With a latency budget: the result's predicted latency / the unpruned model's (its latency model)."""

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("mask", "reconstruction")}
        out["mask"] = self.mask.summary()
        out["reconstruction"] = self.reconstruction.to_dict() if self.reconstruction else None
        return out


def _has_labels(batches: list[dict]) -> bool:
    return all(labels_of(b) is not None for b in batches)


def compress(
    model: nn.Module,
    calibration_data: Iterable[Mapping],
    flops: float | None = None,
    *,
    config: CompressConfig | None = None,
    gradients: GateGradients | None = None,
    **options,
) -> tuple[nn.Module, CompressReport]:
    """Prune ``model`` in place to a FLOPs (or ``params=`` / ``latency=``) budget without retraining; return
    it and a report.

    ``calibration_data``: batches (dicts of model inputs, with ``labels`` or not), e.g. a few hundred to
    ~2000 training examples from ``structprune.data.make_dataloader``. Steps: Fisher scores (labels, or
    the model's own predictions when there are none or ``label_free=True``), constrained mask search,
    per-layer rearrangement, layer-wise least-squares reconstruction against the unpruned model's layer
    outputs, then surgery. Options are the fields of :class:`CompressConfig`. ``copy.deepcopy`` the
    model first to keep the original. A sentence-transformers ``SentenceTransformer`` is taken too, with a list of
    (unlabelled) sentences as ``calibration_data`` (and ``batch_size=``): its transformer is pruned so that
    the sentence embeddings stay close to the unpruned model's, and ``(st, report)`` comes back
    (:mod:`structprune.sentence`). ``gradients`` (from :func:`structprune.gate_gradients` on this
    model) skips the scoring pass, e.g. to compress one model to several budgets. ``latency=0.5`` keeps half
    of the model's latency on this machine as predicted by ``latency_model`` (a :class:`structprune.LatencyModel`
    or its saved JSON; default: measured here once at ``latency_batch_size`` x ``seq_len`` and cached).

    Example::

        loader = make_dataloader(load_split("sst2", "train"), tok, "sst2", limit=1000, limit_mode="random")
        model, report = sp.compress(model, loader, flops=0.5)
        report.flops_kept, report.seconds["total"]
        model, report = sp.compress(model, loader, latency=0.5)   # report.latency_kept <= 0.5
    """
    from ..sentence.encoder import is_sentence_transformer

    if is_sentence_transformer(model):  # calibration_data: sentences (structprune.sentence)
        from ..sentence.run import compress as compress_sentence_transformer

        if gradients is not None:
            raise TypeError("gradients= is not taken for a SentenceTransformer.")
        return compress_sentence_transformer(model, calibration_data, flops, config=config, **options)
    if config is not None and (options or flops is not None):
        raise TypeError("Pass either config=CompressConfig(...) or flops=/keyword options, not both.")
    cfg = config if config is not None else CompressConfig(flops=flops, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects a transformers model, got {type(model).__name__}.")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    batches = take_examples(calibration_data, cfg.num_examples)
    n_examples = sum(len(b["input_ids"]) for b in batches)
    check_task(model, batches)
    if n_examples < FEW_EXAMPLES:
        warn(
            f"Only {n_examples} calibration examples: scores and reconstruction will be noisy (the ridge is "
            "raised where the fit is under-determined). A few hundred to ~2000 is typical.",
        )
    label_free = cfg.label_free if cfg.label_free is not None else not _has_labels(batches)
    if not label_free and not _has_labels(batches):
        raise ValueError(
            "label_free=False but some calibration batches have no 'labels'; add them or drop the flag."
        )
    params_before = sum(p.numel() for p in model.parameters())
    lm = None
    if cfg.latency is not None:  # resolved on the unpruned model, before any shape cut
        lm = resolve_latency_model(
            model, cfg.latency_model, seq_len=cfg.seq_len, batch_size=cfg.latency_batch_size
        )
        budget = {"latency": cfg.latency, "latency_model": lm}
    else:
        budget = {"flops": cfg.flops} if cfg.flops is not None else {"params": cfg.params}
    # A target shape (depth / width) is cut first; the FLOPs/params budget then goes to heads and neurons.
    # After a width cut, reconstruction (and the label-free held-back loss) compare with the model at the
    # target depth but its full width (``wide``): the narrow student is fitted to its kept dimensions.
    wide = None
    if cfg.layers is not None or cfg.hidden is not None:
        shape = score_shape(model, batches, label_free=label_free, progress=cfg.progress)
        cut = allocate(shape, model, layers=cfg.layers, hidden=cfg.hidden)
        if cfg.hidden is not None and (cfg.reconstruct is not None or cfg.select):
            prune_(model, Mask(cut.head.clone(), cut.ffn.clone()))  # the depth cut alone
            wide = copy.deepcopy(model)
        prune_(model, cut)
        if cfg.hidden is not None and cfg.search:
            # the search prices at the full hidden size: after a width cut, heads and neurons are allocated
            # globally (reconstruction still fits them, to the wide model's kept dimensions)
            logger.info("hidden size cut to %d: global allocation", cfg.hidden)
            cfg = dataclasses.replace(cfg, search=False)

    fit, held = split_holdout(batches, cfg.holdout) if cfg.select else (batches, [])
    t = time.perf_counter()
    grads = gradients
    if grads is not None:
        if cfg.method != "fisher":
            raise ValueError("gradients= gives Fisher scores; it goes with method='fisher'.")
        if tuple(grads.head.shape[1:]) != tuple(Mask.full(model).head.shape):
            raise ValueError("gradients= were collected on another model; call gate_gradients on this one.")
        n_fit = sum(len(b["input_ids"]) for b in fit)
        if held and grads.num_examples == n_examples:  # collected on these batches: keep the fit part's
            grads = GateGradients(grads.head[:n_fit], grads.ffn[:n_fit], label_free=grads.label_free)
        elif held:
            fit, held = batches, []  # gradients of other examples: nothing can be held back from them
        scores: Scores = grads.fisher()
        label_free = grads.label_free
    elif cfg.method == "fisher" and (cfg.rearrange or held):
        grads = gate_gradients(model, fit, label_free=label_free, progress=cfg.progress)
        scores = grads.fisher()
    else:
        opts = scorer_options(cfg.method, fit, label_free=label_free)
        scores = score(model, method=cfg.method, progress=cfg.progress, **opts)
    seconds["score"] = time.perf_counter() - t

    t = time.perf_counter()
    shape = dict(seq_len=cfg.seq_len, min_heads=cfg.min_heads, multiple_of=cfg.multiple_of, **budget)
    masks: dict[str, Mask] = {}
    if cfg.search:
        mask, name = search(scores, model, **shape), "search"
        if grads is not None and cfg.rearrange:
            # Kwon et al.'s rearrangement rests on a second-order expansion of the loss, which can fail where a layer
            # loses most of its heads or neurons (all-mpnet-base-v2 on SST-2 at 50%: the search keeps 1 head of 12
            # in its last three layers, and rearranging its heads, its neurons or both dropped it to chance;
            # benchmarks/results/rearrange_mpnet_sst2.md). With held-back examples the search with each
            # rearrangement (heads, neurons, both: they are independent) is a candidate; without them both are
            # rearranged, as the paper does.
            heads_r = rearrange(mask, grads, neurons=False)
            ffn_r = rearrange(mask, grads, heads=False)
            if held:
                masks.update(
                    {name: mask, "search+rearrange (heads)": heads_r, "search+rearrange (neurons)": ffn_r}
                )
            mask, name = Mask(heads_r.head, ffn_r.ffn), "search+rearrange"
    else:
        mask = allocate(scores, model, **shape)
        name = f"allocate ({cfg.method})"
    masks[name] = mask
    if held:  # the simpler paths, from the same scores and gradients
        extra = {f"allocate ({cfg.method})": scores}
        if grads is not None:
            extra["allocate (taylor)"] = taylor_from(grads, [len(b["input_ids"]) for b in fit])
        for cname, cscores in extra.items():
            if cname in masks:
                continue
            try:
                masks[cname] = allocate(cscores, model, **shape)
            except ValueError as err:  # a latency budget only the search meets (min_heads=0 drops layers)
                logger.info("candidate %s skipped: %s", cname, err)
    seconds["search"] = time.perf_counter() - t

    dense_flops = dense_cost(model, cfg.seq_len).encoder_flops
    recon_cfg = dataclasses.replace(cfg.reconstruct, progress=cfg.progress) if cfg.reconstruct else None
    # Reconstruct the pruned model against a copy of the unpruned one: the student's passes then run at
    # the pruned size, about half the work of fitting on the gated full-size model. ``base``: the model the
    # candidates are pruned from; ``reference``: what they are fitted to (``wide`` after a width cut).
    base = copy.deepcopy(model) if (recon_cfg is not None or held) else None
    reference = wide if wide is not None else base
    # a mask that removes nothing needs no reconstruction (fitting would only add rounding), unless a width
    # cut already changed the model
    full, narrowed = Mask.full(model), wide is not None

    def fits(m: Mask) -> bool:
        return recon_cfg is not None and (m != full or narrowed)

    candidates: dict[str, float] = {}
    choice, recon = (name, fits(mask)), None
    if held:
        t = time.perf_counter()
        # the divergence from the unpruned model's outputs without labels, or when asked for (select_by)
        by_divergence = label_free or cfg.select_by == "divergence"
        ref_logits = reference_logits(reference, held) if by_divergence else None

        # held-back losses of a candidate not reconstructed, measured once
        plain: dict[str, torch.Tensor] = {}

        def losses_of(
            mname: str, m: Mask, fitted: bool, base: nn.Module = base, reference: nn.Module = reference
        ):
            cand = copy.deepcopy(base)
            prune_(cand, m)
            report_c = reconstruct(cand, reference, fit, recon_cfg) if fitted else None
            if fitted:
                return (
                    heldout_losses(cand, held, label_free=by_divergence, reference=ref_logits),
                    cand,
                    report_c,
                )
            if mname not in plain:
                plain[mname] = heldout_losses(cand, held, label_free=by_divergence, reference=ref_logits)
            return plain[mname], cand, None

        # The configured path (the search with both rearrangements, as the paper does; else the global allocation)
        # is the default. Of the search's other variants only the one with the lowest held-back loss as it stands
        # is reconstructed beside it (they refine one another; reconstructing each would multiply the cost).
        family = {k: m for k, m in masks.items() if k.startswith("search") and k != name}
        skip_fit = set()
        if family:
            plain_loss = {k: float(losses_of(k, m, False)[0].mean()) for k, m in family.items()}
            skip_fit = set(plain_loss) - {min(plain_loss, key=plain_loss.get)}
        default = (name, fits(mask))
        seen: list[tuple[Mask, str]] = []
        best = kept_default = None
        for mname, m in masks.items():
            same = next((other for mm, other in seen if m == mm), None)
            if same is not None:  # the same mask under another name: measured there
                if mname == name:
                    default = (same, default[1])
                continue
            seen.append((m, mname))
            for fitted in (True, False) if fits(m) and mname not in skip_fit else (False,):
                label = f"{mname}, {'reconstructed' if fitted else 'not reconstructed'}"
                losses, cand, report_c = losses_of(mname, m, fitted)
                candidates[label] = float(losses.mean())
                entry = (losses, (mname, fitted), m, cand.state_dict(), report_c)
                if best is None or candidates[label] < float(best[0].mean()):
                    best = entry
                if (mname, fitted) == default:
                    kept_default = entry
                del cand
        # within noise of the configured path, keep it: a few hundred held-back examples do not rank candidates
        # that close (structprune.run.select)
        if (
            kept_default is not None
            and best is not kept_default
            and not clearly_lower(best[0], kept_default[0], cfg.select_margin)
        ):
            logger.info("compress: %s not clearly below the configured %s on the held-back examples "
                        "(margin %g standard errors): kept the configured path", best[1][0], name,
                        cfg.select_margin)  # fmt: skip
            best = kept_default
        _, choice, mask, state, recon = best
        logger.info("compress: held-back loss of the candidates: %s",
                    "; ".join(f"{k} {v:.4g}" for k, v in sorted(candidates.items(), key=lambda kv: kv[1])))  # fmt: skip
        prune_(model, mask)
        model.load_state_dict(state)
        seconds["select"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        prune_(model, mask)
        seconds["prune"] = time.perf_counter() - t
        if fits(mask):
            t = time.perf_counter()
            recon = reconstruct(model, reference, batches, recon_cfg)
            seconds["reconstruct"] = time.perf_counter() - t
    del reference, base, wide
    seconds["total"] = time.perf_counter() - start
    total_importance = float(scores.head.double().sum() + scores.ffn.double().sum())
    report = CompressReport(
        mask=mask,
        method=cfg.method,
        label_free=label_free,
        examples=n_examples,
        flops_kept=cost(model, cfg.seq_len).encoder_flops / dense_flops,
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        retained_importance=retained(scores, mask) / total_importance if total_importance > 0 else 1.0,
        seconds=seconds,
        reconstruction=recon,
        choice=f"{choice[0]}, {'reconstructed' if choice[1] else 'not reconstructed'}",
        candidates=candidates,
        selected_by=("divergence" if by_divergence else "task_loss") if held else None,
        latency_kept=lm.fraction(model) if lm is not None else None,
    )
    chosen = ""
    if report.selected_by is not None:
        weighed = "task loss" if report.selected_by == "task_loss" else "divergence from the unpruned model"
        chosen = f" (chosen among {len(candidates)} candidates by held-back {weighed})"
    note_card(
        model,
        method=f"{cfg.method} scores ({'label-free' if label_free else 'with labels'}) on {n_examples} "
        f"calibration examples, {report.choice}{chosen}",
        budget=budget_text(
            cfg.flops,
            cfg.params,
            cfg.seq_len,
            layers=cfg.layers,
            hidden=cfg.hidden,
            latency=cfg.latency,
            latency_setting=lm.setting.describe() if lm is not None else None,
        ),
        latency=lm.to_dict() if lm is not None else None,
    )
    logger.info(
        "compress: %s; %.1f%% of encoder FLOPs kept, %d -> %d parameters, %.1fs",
        report.choice,
        100 * report.flops_kept,
        params_before,
        report.params_after,
        seconds["total"],
    )
    return model, report
