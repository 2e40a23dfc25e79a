"""The one training loop: fine-tuning (no teacher) and distillation (with one), in the Accelerate style.

``Accelerator`` + ``prepare`` + ``backward`` + ``gather_for_metrics`` (through
:func:`structprune.evaluation.evaluate`), gradient accumulation, mixed precision, clipping, linear
warmup/decay, ``save_state``/``load_state`` checkpoints and resume, JSONL metrics, best-checkpoint keeping,
and optional gradual pruning (:mod:`structprune.distill.gradual`). Runs unchanged under
``accelerate launch`` / ``torchrun`` (DDP) and on one CPU.

Determinism: the data order comes from a seeded sampler (``seed + epoch``) and the dropout RNG is
re-seeded from ``(seed, step, process)`` before every batch, so a resumed run replays exactly what an
uninterrupted one computes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import DataLoader

from ...arch import view
from ...batches import eager_attention, model_inputs
from ...checkpoint.card import budget_text, dataset_of, note_card
from ...mask import Mask
from ...progress import bar as progress_bar
from . import checks, runstate
from .callbacks import LoopCallback
from .config import DistillConfig
from .gradual import GradualPruning, flops_fraction
from .maps import build_map
from .module import DistillModule
from .stages import StagedDistillation

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data: DataLoader,
    eval_data: DataLoader | None = None,
    config: DistillConfig | None = None,
    callbacks: list[LoopCallback] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``student`` to match ``teacher`` (and the labels) on ``train_data``; returns ``(student, history)``.

    ``train_data``/``eval_data`` are DataLoaders of dicts (``input_ids``, ``attention_mask``, ``labels``,
    ...), e.g. from :func:`structprune.data.make_dataloader`. The teacher runs in eval mode under
    ``no_grad`` and is never updated. ``history`` is the list of logged records (training losses and
    ``eval_*`` metrics, each with its ``step``). ``callbacks``: :class:`LoopCallback` objects (log, early
    stop, ...). With ``config.prune`` set, the student is pruned
    gradually while it learns and comes back as a smaller dense model. Sentence-transformers models are
    taken too: ``distill(student_st, teacher_st, sentences, config=...)`` matches the teacher's sentence
    embeddings on a list of sentences (:func:`structprune.sentence.distill`).

    Example::

        cfg = sp.DistillConfig(output_dir="runs/sst2-50", task="sst2", num_epochs=2, hidden_weight=1.0)
        student, history = sp.distill(pruned, teacher, train_dl, eval_dl, config=cfg)
    """
    if teacher is None:
        raise ValueError("distill needs a teacher; to train without one use structprune.finetune.")
    from ...sentence.encoder import is_sentence_transformer

    if is_sentence_transformer(student):  # train_data: sentences (structprune.sentence)
        from ...sentence.run import distill as distill_sentence_transformer

        return distill_sentence_transformer(student, teacher, train_data, eval_data, config, callbacks)
    return _run(student, teacher, train_data, eval_data, config or DistillConfig(), callbacks)


def finetune(
    model: nn.Module,
    train_data: DataLoader,
    eval_data: DataLoader | None = None,
    config: DistillConfig | None = None,
    callbacks: list[LoopCallback] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune ``model`` on the task loss alone: the same loop as :func:`distill`, with no teacher.

    Example::

        teacher, history = sp.finetune(model, train_dl, eval_dl, sp.DistillConfig(task="mrpc", num_epochs=3))
    """
    return _run(model, None, train_data, eval_data, config or DistillConfig(), callbacks)


def _accelerator(cfg: DistillConfig) -> Accelerator:
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, cfg.mixed_precision):
        if state.get("num_processes", 1) > 1:
            raise ValueError(
                f"This process already runs Accelerate with mixed_precision={state.get('_mixed_precision')!r}; "
                "a distributed run cannot change it. Launch with the same mixed_precision."
            )
        AcceleratorState._reset_state()  # one process: a new run may pick another precision
    log_with = runstate.trackers(cfg)
    # Launched on several processes (torchrun / accelerate launch) without a GPU: Accelerate only goes
    # multi-CPU (gloo) when told cpu=True, which `accelerate launch --cpu` does and torchrun does not.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=multi_cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=cfg.output_dir if log_with else None,
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )


def _optimizer(module: nn.Module, cfg: DistillConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def _scheduler(opt, span: tuple[int, int], warmup: int, offset: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then linear decay to 0 over the optimizer steps ``span = (start, end)`` (the whole run,
    or one stage); ``offset`` = the global step at which this optimizer was built."""
    start, end = span

    def factor(step: int) -> float:
        s = step + offset - start
        if s < warmup:
            return (s + 1) / (warmup + 1)
        return max(0.0, (end - start - s) / max(1, end - start - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _callbacks(cfg: DistillConfig, callbacks) -> list:
    extra = list(callbacks or [])
    bad = [type(c).__name__ for c in extra if not isinstance(c, LoopCallback)]
    if bad:
        raise TypeError(f"callbacks must be structprune LoopCallback instances, got {bad}.")
    own = [GradualPruning(cfg.prune)] if cfg.prune is not None else []
    if cfg.stages:
        own.append(StagedDistillation(cfg.stages))
    return own + extra


def _run(
    student, teacher, train_data, eval_data, cfg: DistillConfig, callbacks=None
) -> tuple[nn.Module, list[dict]]:
    if not isinstance(cfg, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(cfg).__name__}.")
    checks.check_inputs(student, teacher, train_data, eval_data, cfg)
    accelerator = _accelerator(cfg)
    if cfg.prune is not None and accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        raise ValueError(
            f"Gradual pruning (prune=...) changes the student's shapes while it trains, which a student sharded "
            f"by {accelerator.distributed_type.name} cannot do. Run it under DDP or on one process, then distil "
            "the pruned student under FSDP/DeepSpeed without prune."
        )
    out_dir = runstate.prepare_output_dir(cfg, accelerator)
    torch.manual_seed(cfg.seed)
    task_info = checks.task_info(cfg, eval_data)

    resume = runstate.load_trainer_state(cfg) if cfg.resume_from else None
    if resume is not None and resume["structure"] is not None:
        target = Mask.from_structure(resume["structure"])
        if target != Mask.full(student):
            from ...surgery.prune import prune_

            prune_(student, target & Mask.full(student))  # same shapes as the checkpoint before load_state

    attention = (
        eager_attention(student, teacher, why="attention distillation")
        if cfg.uses_attention and teacher is not None
        else contextlib.nullcontext()
    )
    teacher_state = None
    if teacher is not None:
        teacher_state = (teacher.training, [(p, p.requires_grad) for p in teacher.parameters()])
    try:
        with attention:
            student, history = _train(student, teacher, train_data, eval_data, cfg, accelerator, out_dir,
                                      task_info, resume, _callbacks(cfg, callbacks))  # fmt: skip
        _note_card(student, teacher, cfg, history)
        return student, history
    finally:
        if teacher_state is not None:  # leave the teacher as we found it (mode and requires_grad)
            teacher.train(teacher_state[0])
            for p, flag in teacher_state[1]:
                p.requires_grad_(flag)
        accelerator.end_training()


def _note_card(student, teacher, cfg: DistillConfig, history: list[dict]) -> None:
    """What this run did, for the card :func:`structprune.save_pretrained` writes (teacher, terms, data,
    the returned weights' metrics)."""
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    kept = [h for h in evals if h.get("best")] if cfg.load_best_at_end else []
    final = (kept or evals or [{}])[-1]
    metrics = {k[len("eval_") :]: v for k, v in final.items() if k.startswith("eval_") and k != "eval_loss"}
    if teacher is None:
        method = "fine-tuned on the task loss"
    elif cfg.stages:
        method = "staged distillation: " + " then ".join(f"{st.name} ({_terms(st)})" for st in cfg.stages)
    else:
        method = f"distillation ({_terms(cfg)})"
    if cfg.prune is not None:
        method += f", pruned gradually in {cfg.prune.steps} steps ({cfg.prune.method} scores)"
    note_card(
        student,
        teacher=getattr(getattr(teacher, "config", None), "_name_or_path", None) or None,
        method=method,
        budget=budget_text(
            cfg.prune.to, None, cfg.prune.seq_len, layers=cfg.prune.layers, hidden=cfg.prune.hidden
        )
        if cfg.prune is not None
        else None,
        datasets=dataset_of(cfg.task),
        eval_dataset=f"{cfg.task} evaluation data" if cfg.task and metrics else None,
        metrics_after=metrics or None,
    )


def _terms(w) -> str:
    """The loss terms of a config or stage, e.g. ``"logits + task loss"``."""
    names = [("logit_weight", "logits"), ("hidden_weight", "hidden states"),
             ("attention_weight", "attention"), ("task_weight", "task loss")]  # fmt: skip
    return " + ".join(label for attr, label in names if getattr(w, attr, 0) > 0) or "no terms"


@dataclass
class Loop:
    """What the training loop holds while it runs; callbacks read it and may ask it to stop (``stop``).

    ``model``/``opt``/``sched`` are the Accelerate-prepared objects; :meth:`rebuild_optimizer` makes new
    ones after surgery replaced parameters.
    """

    cfg: DistillConfig
    accelerator: Accelerator
    module: DistillModule
    teacher: nn.Module | None
    train_data: DataLoader
    train_dl: DataLoader
    eval_dl: DataLoader | None
    task_info: object
    out_dir: object
    rs: runstate.LoopState
    span: tuple[int, int] = (0, 0)
    """Optimizer steps of the current learning-rate schedule (the whole run, or the current stage)."""
    learning_rate: float = 0.0
    model: nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    sched: object = None
    lr_offset: int = 0
    stop: bool = False

    @property
    def total(self) -> int:
        return self.rs.total

    def build_optimizer(self, offset: int) -> None:
        opt = _optimizer(self.module, self.cfg, self.learning_rate)
        warmup = math.ceil(self.cfg.warmup_ratio * (self.span[1] - self.span[0]))  # as TrainingArguments
        sched = _scheduler(opt, self.span, warmup, offset)
        self.model, self.opt, self.sched = self.accelerator.prepare(self.module, opt, sched)

    def rebuild_optimizer(self) -> None:
        """Surgery replaced parameters: drop the prepared objects and prepare new ones (fresh AdamW moments,
        the schedule continuing at the current step, DDP re-wrapping the smaller model)."""
        self.accelerator.free_memory(self.model, self.opt, self.sched)
        self.build_optimizer(offset=self.rs.step)

    def evaluate(self, may_keep: bool | None = None) -> None:
        if self.eval_dl is None:
            return
        keep = all(cb.allows_best(self) for cb in self.callbacks) if may_keep is None else may_keep
        record = _evaluate(
            self.module, self.eval_dl, self.task_info, self.accelerator, self.rs, self.out_dir, keep
        )
        for cb in self.callbacks:
            cb.on_evaluate(self, record)

    def log(self, record: dict) -> None:
        runstate.log(record, self.rs, self.accelerator, self.out_dir)
        for cb in self.callbacks:
            cb.on_log(self, record)

    callbacks: list = field(default_factory=list)


def _prepare_module(student, teacher, cfg: DistillConfig, accelerator) -> DistillModule:
    """The student (plus a learned projection when widths differ) with the losses of ``cfg``."""
    distil = teacher is not None
    dmap = (
        build_map(student, teacher, cfg.layer_map)
        if distil and (cfg.uses_hidden or cfg.uses_attention)
        else None
    )
    if dmap is not None and cfg.uses_attention and dmap.heads is None:
        raise ValueError(
            "Attention distillation needs each student head matched to a teacher head, but the student's "
            "heads are not a subset of the teacher's. Set attention_weight=0."
        )
    projection = None
    if distil and cfg.uses_hidden:
        s_width, t_width = checks.hidden_width(student), checks.hidden_width(teacher)
        if s_width != t_width:
            projection = nn.Linear(s_width, t_width)  # learned, trained with the student, not saved with it
    module = DistillModule(student, cfg, dmap, projection)
    module.train()
    if distil:
        teacher.eval()
        teacher.requires_grad_(False)
        teacher.to(accelerator.device)  # not prepared: no DDP wrapper, no optimizer, no gradients
    return module


def _train(student, teacher, train_data, eval_data, cfg, accelerator, out_dir, task_info, resume, callbacks):
    module = _prepare_module(student, teacher, cfg, accelerator)
    train_dl = accelerator.prepare(train_data)
    eval_dl = accelerator.prepare(eval_data) if eval_data is not None else None
    steps_per_epoch = max(1, math.ceil(len(train_dl) / cfg.gradient_accumulation_steps))
    if cfg.stages:
        total = sum(stage.steps(steps_per_epoch) for stage in cfg.stages)
    else:
        total = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    rs = runstate.LoopState(total=total, steps_per_epoch=steps_per_epoch)
    if resume is not None:
        rs.restore(resume)
    else:
        rs.schedule_start = flops_fraction(student, cfg.prune.seq_len if cfg.prune else 128)
        st = view(student).structure
        rs.schedule_shape = [len(st.layers), st.hidden_width]
    loop = Loop(cfg, accelerator, module, teacher, train_data, train_dl, eval_dl, task_info, out_dir, rs,
                span=(0, total), learning_rate=cfg.learning_rate, callbacks=list(callbacks))  # fmt: skip
    for cb in loop.callbacks:
        cb.on_train_begin(loop)
    loop.build_optimizer(offset=loop.lr_offset)
    if resume is not None:
        accelerator.load_state(resume["path"])
        runstate.truncate_metrics(out_dir, rs.step, accelerator)
        logger.info("resumed from %s at step %d", resume["path"], rs.step)
    if accelerator.is_main_process:
        accelerator.init_trackers("structprune", config=runstate.flat_config(cfg))

    bar = progress_bar(total=total, initial=rs.step, desc="distill" if teacher is not None else "finetune",
                       enabled=cfg.progress and accelerator.is_main_process)  # fmt: skip
    sums: dict[str, float] = {}
    count = 0
    while rs.step < total and not loop.stop:
        epoch = rs.step // steps_per_epoch
        in_epoch = rs.step - epoch * steps_per_epoch
        _set_epoch(train_dl, train_data, epoch)
        loader = train_dl
        if in_epoch:
            loader = accelerator.skip_first_batches(train_dl, in_epoch * cfg.gradient_accumulation_steps)
        micro = in_epoch * cfg.gradient_accumulation_steps
        for batch in loader:
            if micro % cfg.gradient_accumulation_steps == 0:
                for cb in loop.callbacks:
                    cb.on_step_begin(loop)
            runstate.seed_step(cfg, accelerator, epoch * len(train_dl) + micro)
            micro += 1
            loss, parts = _step(loop, batch)
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            if not accelerator.sync_gradients:
                continue
            # --- after an optimizer step ----------------------------------------------------------------
            rs.step += 1
            bar.update(1)
            if rs.step % cfg.log_every == 0 or rs.step == total:
                record = _reduce_means(sums, count, accelerator)
                record.update(
                    step=rs.step, epoch=round(rs.step / steps_per_epoch, 4), lr=loop.sched.get_last_lr()[0]
                )
                loop.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                sums, count = {}, 0
            if (cfg.eval_every and rs.step % cfg.eval_every == 0) or (
                cfg.eval_every is None and rs.step % steps_per_epoch == 0) or rs.step == total:  # fmt: skip
                loop.evaluate()
            if cfg.save_every and (rs.step % cfg.save_every == 0 or rs.step == total):
                runstate.save_checkpoint(accelerator, out_dir, rs, module.student, cfg)
            if rs.step >= total or loop.stop:
                break
    bar.close()
    for cb in loop.callbacks:
        cb.on_train_end(loop)
    accelerator.wait_for_everyone()
    if cfg.load_best_at_end and rs.best is not None:
        runstate.load_best(module.student, rs, out_dir, accelerator)
    module.student.eval()
    bad = [n for n, p in module.student.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(
            f"Training ended with non-finite weights ({bad[0]}, ...); the model object now holds them. Last good "
            f"checkpoint: {runstate.latest_checkpoint(out_dir) if out_dir else 'none (set save_every)'}. Lower "
            "learning_rate or use mixed_precision='bf16' rather than 'fp16'."
        )
    return module.student, rs.history


def _step(loop: Loop, batch) -> tuple[torch.Tensor, dict]:
    """One micro-batch: the frozen teacher's outputs, the student's loss, backward, and (at the end of
    an accumulation) clipping, the optimizer and the scheduler."""
    cfg, accelerator = loop.cfg, loop.accelerator
    with accelerator.accumulate(loop.model):
        teacher_out = None
        if loop.teacher is not None:
            with torch.no_grad(), accelerator.autocast():
                teacher_out = loop.teacher(
                    **model_inputs(batch),
                    output_hidden_states=cfg.uses_hidden,
                    output_attentions=cfg.uses_attention,
                )
        loss, parts = loop.model(batch, teacher_out)
        _check_finite(loss, accelerator, loop.rs, loop.out_dir)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(loop.model.parameters(), cfg.max_grad_norm)
        loop.opt.step()
        if accelerator.sync_gradients:
            loop.sched.step()
        loop.opt.zero_grad()
    return loss, parts


def _set_epoch(prepared: DataLoader, raw: DataLoader, epoch: int) -> None:
    """Fix the data order of ``epoch`` (seed + epoch) on the prepared loader and any sampler it wraps."""
    prepared.set_epoch(epoch)
    for sampler in (getattr(raw, "batch_sampler", None), getattr(raw, "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _reduce_means(sums: dict[str, float], count: int, accelerator: Accelerator) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.tensor([sums[k] / max(count, 1) for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def _check_finite(loss: torch.Tensor, accelerator: Accelerator, rs, out_dir) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=accelerator.device)
    if float(accelerator.reduce(bad, reduction="sum")) > 0:
        last = runstate.latest_checkpoint(out_dir) if out_dir else None
        raise NonFiniteLossError(
            f"The training loss became {float(loss.detach())} at optimizer step {rs.step + 1}; training "
            f"stopped without saving the broken weights. Last good checkpoint: {last or 'none (set save_every)'}. "
            "Lower learning_rate, use mixed_precision='bf16' rather than 'fp16', or check the labels."
        )


def _evaluate(module, eval_dl, task_info, accelerator, rs, out_dir, may_keep: bool) -> None:
    from ...evaluation import evaluate

    metrics = evaluate(module.student, eval_dl, task_info, accelerator=accelerator, progress=False)
    module.train()
    record = {"step": rs.step, "epoch": round(rs.step / rs.steps_per_epoch, 4)}
    record.update({f"eval_{k}": float(v) for k, v in metrics.items()})
    main = metrics.get(task_info.main_metric)
    # a diverged model (NaN/inf loss or metric) never becomes the kept best
    finite = all(math.isfinite(float(v)) for v in metrics.values() if isinstance(v, int | float))
    if may_keep and main is not None and finite and (rs.best is None or main > rs.best["value"]):
        rs.best = {"step": rs.step, "metric": task_info.main_metric, "value": float(main)}
        runstate.save_best(module.student, rs, out_dir, accelerator)
        record["best"] = True
    runstate.log(record, rs, accelerator, out_dir)
    return record
