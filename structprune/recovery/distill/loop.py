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

import logging
import math
import os

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ...batches import model_inputs
from ...mask import Mask
from . import checks, runstate
from .config import DistillConfig
from .gradual import flops_fraction, prune_event, prune_schedule
from .maps import build_map
from .module import DistillModule

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data: DataLoader,
    eval_data: DataLoader | None = None,
    config: DistillConfig | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``student`` to match ``teacher`` (and the labels) on ``train_data``; returns ``(student, history)``.

    ``train_data``/``eval_data`` are DataLoaders of dicts (``input_ids``, ``attention_mask``, ``labels``,
    ...), e.g. from :func:`structprune.data.make_dataloader`. The teacher runs in eval mode under
    ``no_grad`` and is never updated. ``history`` is the list of logged records (training losses and
    ``eval_*`` metrics, each with its ``step``). With ``config.prune_to`` set, the student is pruned
    gradually while it learns and comes back as a smaller dense model.

    Example::

        cfg = sp.DistillConfig(output_dir="runs/sst2-50", task="sst2", num_epochs=2, hidden_weight=1.0)
        student, history = sp.distill(pruned, teacher, train_dl, eval_dl, config=cfg)
    """
    if teacher is None:
        raise ValueError("distill needs a teacher; to train without one use structprune.finetune.")
    return _run(student, teacher, train_data, eval_data, config or DistillConfig())


def finetune(
    model: nn.Module,
    train_data: DataLoader,
    eval_data: DataLoader | None = None,
    config: DistillConfig | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune ``model`` on the task loss alone: the same loop as :func:`distill`, with no teacher.

    Example::

        teacher, history = sp.finetune(model, train_dl, eval_dl, sp.DistillConfig(task="mrpc", num_epochs=3))
    """
    return _run(model, None, train_data, eval_data, config or DistillConfig())


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


def _optimizer(module: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _scheduler(opt, total: int, warmup: int, offset: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then linear decay to 0 at ``total``; ``offset`` = steps done before this optimizer."""

    def factor(step: int) -> float:
        s = step + offset
        if s < warmup:
            return (s + 1) / (warmup + 1)
        return max(0.0, (total - s) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _seed_step(cfg: DistillConfig, accelerator: Accelerator | None, micro_step: int, salt: int = 0) -> None:
    """Seed the global RNG from (seed, step, process): dropout masks replay exactly after a resume.
    ``accelerator=None`` gives every process the same seed (the data order of a pruning event)."""
    rank = accelerator.process_index if accelerator is not None else 0
    torch.manual_seed((cfg.seed * 1_000_003 + micro_step * 7919 + rank * 104_729 + salt) % 2**63)


def _run(student, teacher, train_data, eval_data, cfg: DistillConfig) -> tuple[nn.Module, list[dict]]:
    if not isinstance(cfg, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(cfg).__name__}.")
    checks.check_inputs(student, teacher, train_data, eval_data, cfg)
    accelerator = _accelerator(cfg)
    out_dir = runstate.prepare_output_dir(cfg, accelerator)
    torch.manual_seed(cfg.seed)
    task_info = checks.task_info(cfg, eval_data)

    resume = runstate.load_trainer_state(cfg) if cfg.resume_from else None
    if resume is not None and resume["structure"] is not None:
        target = Mask.from_structure(resume["structure"])
        if target != Mask.full(student):
            from ...surgery.prune import prune_

            prune_(student, target & Mask.full(student))  # same shapes as the checkpoint before load_state

    restore_attn = checks.use_eager_attention([student, teacher], cfg.uses_attention and teacher is not None)
    teacher_state = None
    if teacher is not None:
        teacher_state = (teacher.training, [(p, p.requires_grad) for p in teacher.parameters()])
    try:
        return _train(student, teacher, train_data, eval_data, cfg, accelerator, out_dir, task_info, resume)
    finally:
        checks.restore_attention(restore_attn)
        if teacher_state is not None:  # leave the teacher as we found it (mode and requires_grad)
            teacher.train(teacher_state[0])
            for p, flag in teacher_state[1]:
                p.requires_grad_(flag)
        accelerator.end_training()


def _train(student, teacher, train_data, eval_data, cfg, accelerator, out_dir, task_info, resume):
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

    train_dl = accelerator.prepare(train_data)
    eval_dl = accelerator.prepare(eval_data) if eval_data is not None else None
    steps_per_epoch = max(1, math.ceil(len(train_dl) / cfg.gradient_accumulation_steps))
    total = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    warmup = int(cfg.warmup_ratio * total)
    rs = runstate.LoopState(total=total, steps_per_epoch=steps_per_epoch)
    if resume is not None:
        rs.restore(resume)
    else:
        rs.schedule_start = flops_fraction(student, cfg.prune_seq_len)
    events = []
    if cfg.prune_to is not None:
        # The schedule depends only on the step and the size the run started from (kept across resumes).
        events = prune_schedule(
            total, cfg.prune_start, cfg.prune_end, cfg.prune_steps, rs.schedule_start, cfg.prune_to
        )
        logger.info("gradual pruning schedule (step, FLOPs fraction): %s", events)
    offset = max([s for s, _ in events if s < rs.step], default=0)
    opt = _optimizer(module, cfg)
    sched = _scheduler(opt, total, warmup, offset)
    model, opt, sched = accelerator.prepare(module, opt, sched)
    if resume is not None:
        accelerator.load_state(resume["path"])
        runstate.truncate_metrics(out_dir, rs.step, accelerator)
        logger.info("resumed from %s at step %d", resume["path"], rs.step)
    if accelerator.is_main_process:
        accelerator.init_trackers("structprune", config=runstate.flat_config(cfg))

    bar = tqdm(total=total, initial=rs.step, desc="distill" if distil else "finetune",
               disable=not (cfg.progress and accelerator.is_main_process))  # fmt: skip
    sums: dict[str, float] = {}
    count = 0
    pruning_done = lambda: not [s for s, _ in events if s >= rs.step]  # noqa: E731
    while rs.step < total:
        epoch = rs.step // steps_per_epoch
        in_epoch = rs.step - epoch * steps_per_epoch
        _set_epoch(train_dl, train_data, epoch)
        loader = train_dl
        if in_epoch:
            loader = accelerator.skip_first_batches(train_dl, in_epoch * cfg.gradient_accumulation_steps)
        micro = in_epoch * cfg.gradient_accumulation_steps
        for batch in loader:
            # --- gradual pruning event(s) due before this optimizer step -----------------------------
            due = [f for s, f in events if s == rs.step]
            if due and micro % cfg.gradient_accumulation_steps == 0 and rs.pruned_at != rs.step:
                model, opt, sched = _prune(
                    accelerator,
                    module,
                    model,
                    opt,
                    sched,
                    train_data,
                    cfg,
                    due[-1],
                    rs,
                    total,
                    warmup,
                    teacher,
                )
            # --- one batch -------------------------------------------------------------------------
            _seed_step(cfg, accelerator, epoch * len(train_dl) + micro)
            micro += 1
            with accelerator.accumulate(model):
                teacher_out = None
                if distil:
                    with torch.no_grad(), accelerator.autocast():
                        teacher_out = teacher(
                            **model_inputs(batch),
                            output_hidden_states=cfg.uses_hidden,
                            output_attentions=cfg.uses_attention,
                        )
                loss, parts = model(batch, teacher_out)
                _check_finite(loss, accelerator, rs, out_dir)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                if accelerator.sync_gradients:
                    sched.step()
                opt.zero_grad()
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
                    step=rs.step, epoch=round(rs.step / steps_per_epoch, 4), lr=sched.get_last_lr()[0]
                )
                runstate.log(record, rs, accelerator, out_dir)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                sums, count = {}, 0
            end_of_epoch = rs.step % steps_per_epoch == 0
            if eval_dl is not None and (
                (cfg.eval_every and rs.step % cfg.eval_every == 0)
                or (cfg.eval_every is None and end_of_epoch)
                or rs.step == total
            ):
                _evaluate(module, eval_dl, task_info, accelerator, rs, out_dir, pruning_done())
            if cfg.save_every and (rs.step % cfg.save_every == 0 or rs.step == total):
                runstate.save_checkpoint(accelerator, out_dir, rs, module.student, cfg)
            if rs.step >= total:
                break
    bar.close()
    # A pruning event scheduled at the very end still runs, so the result meets the budget.
    leftover = [f for s, f in events if s >= rs.step and rs.pruned_at != s]
    if leftover:
        model, opt, sched = _prune(
            accelerator, module, model, opt, sched, train_data, cfg, leftover[-1], rs, total, warmup, teacher
        )
        if eval_dl is not None:
            _evaluate(module, eval_dl, task_info, accelerator, rs, out_dir, True)
    accelerator.wait_for_everyone()
    if cfg.load_best_at_end and rs.best is not None:
        runstate.load_best(module.student, rs, out_dir, accelerator)
    module.student.eval()
    return module.student, rs.history


def _prune(accelerator, module, model, opt, sched, train_data, cfg, fraction, rs, total, warmup, teacher):
    """Run one gradual-pruning event, then rebuild and re-prepare optimizer, scheduler and DDP wrapper."""
    _seed_step(cfg, None, rs.step, salt=17)
    accelerator.wait_for_everyone()
    student = module.student
    student.eval()
    prune_event(
        student,
        train_data,
        fraction,
        method=cfg.prune_method,
        max_batches=cfg.prune_batches,
        seq_len=cfg.prune_seq_len,
        multiple_of=cfg.prune_multiple_of,
        min_heads=cfg.prune_min_heads,
        accelerator=accelerator,
    )
    student.train()
    rs.pruned_at = rs.step
    if module.dmap is not None:
        module.dmap = build_map(student, teacher, cfg.layer_map)
    # Surgery replaced parameters: drop the old prepared objects and prepare new ones.
    accelerator.free_memory(model, opt, sched)
    opt = _optimizer(module, cfg)
    sched = _scheduler(opt, total, warmup, rs.step)
    model, opt, sched = accelerator.prepare(module, opt, sched)
    record = {"step": rs.step, "pruned_flops": flops_fraction(student, cfg.prune_seq_len), "target": fraction}
    record["params"] = sum(p.numel() for p in student.parameters())
    runstate.log(record, rs, accelerator, runstate.out_path(cfg))
    return model, opt, sched


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
    if may_keep and main is not None and (rs.best is None or main > rs.best["value"]):
        rs.best = {"step": rs.step, "metric": task_info.main_metric, "value": float(main)}
        runstate.save_best(module.student, rs, out_dir, accelerator)
        record["best"] = True
    runstate.log(record, rs, accelerator, out_dir)
