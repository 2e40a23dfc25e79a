"""Run folder, checkpoints, metrics log and best-model keeping of the training loop."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...arch import view
from ...atomic import atomic_write_json, atomic_write_text
from ...errors import MissingDependency
from .config import DistillConfig, report_targets

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
BEST = "best"


@dataclass
class LoopState:
    """Progress of a run: what a checkpoint records besides the Accelerate state."""

    total: int
    steps_per_epoch: int
    step: int = 0
    best: dict | None = None
    history: list[dict] = field(default_factory=list)
    pruned_at: int = -1
    schedule_start: float | None = None
    schedule_shape: list[int] | None = None  # [layers, hidden width] when the run started
    best_state: dict | None = None

    def restore(self, saved: dict) -> None:
        self.step = saved["step"]
        self.best = saved["best"]
        self.history = saved["history"]
        self.pruned_at = saved["pruned_at"]
        self.schedule_start = saved["schedule_start"]
        self.schedule_shape = saved.get("schedule_shape")


_TRACKER_PIP = {"aim": "'aim<4'"}  # the pip install of a tracker, where it is not the tracker's name


def trackers(cfg: DistillConfig) -> list[str] | None:
    """Accelerate's ``log_with`` for ``cfg.report_to`` (None: no tracker), checked before the run starts.

    ``'auto'``: tensorboard when installed and the run has an output_dir; ``'all'``: every installed
    tracker, less those that write under output_dir (tensorboard, aim) when there is none. A named tracker
    that is not installed is a :class:`MissingDependency` naming its ``pip install``; one that writes
    under output_dir, without one, a ValueError.
    """
    words = report_targets(cfg.report_to)
    installed = [t.value for t in get_available_trackers()]
    needs_dir = [name for name, tracker in LOGGER_TYPE_TO_CLASS.items() if tracker.requires_logging_directory]
    if words == ["auto"]:
        words = ["tensorboard"] if "tensorboard" in installed and cfg.output_dir is not None else []
    elif words == ["all"]:
        words = [t for t in installed if cfg.output_dir is not None or t not in needs_dir]
    else:
        absent = [t for t in words if t not in installed]
        if absent:
            pip = " ".join(_TRACKER_PIP.get(t, t.replace("_", "-")) for t in absent)
            verb = "is" if len(absent) == 1 else "are"
            raise MissingDependency(
                f"report_to names {', '.join(absent)}, which {verb} not installed: pip install {pip}"
            )
        local = [t for t in words if t in needs_dir]
        if local and cfg.output_dir is None:
            raise ValueError(
                f"report_to={local[0]!r} writes its logs under output_dir, and this run has none: set "
                "output_dir, or report_to='none'."
            )
    return words or None


def out_path(cfg: DistillConfig) -> Path | None:
    return Path(cfg.output_dir) if cfg.output_dir is not None else None


def prepare_output_dir(cfg: DistillConfig, accelerator) -> Path | None:
    """Create the run folder; refuse one holding another run unless ``overwrite`` or ``resume_from``."""
    out = out_path(cfg)
    if out is None:
        return None
    if cfg.resume_from is None and out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ValueError(
                f"{out} already holds files (another run?). Set overwrite=True to replace it, "
                "resume_from='latest' to continue it, or pick an empty output_dir."
            )
        if not (out / RUN_FILE).exists():
            raise ValueError(
                f"{out} holds files that are not a structprune run ({RUN_FILE} is missing); overwrite only "
                "replaces runs. Pick an empty output_dir."
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if cfg.resume_from is None and out.exists() and cfg.overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            out / RUN_FILE, {"config": cfg.to_dict(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        )
    accelerator.wait_for_everyone()
    return out


def flat_config(cfg: DistillConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if isinstance(v, int | float | str | bool)}


def log(record: dict, rs: LoopState, accelerator, out_dir: Path | None) -> None:
    """Append ``record`` to the history, the JSONL file (always, when there is a run folder) and trackers."""
    rs.history.append(record)
    logger.info("%s", record)
    if not accelerator.is_main_process:
        return
    if out_dir is not None:
        with open(out_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
    if accelerator.trackers:
        accelerator.log(
            {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)},
            step=record["step"],
        )


def truncate_metrics(out_dir: Path | None, step: int, accelerator) -> None:
    """Drop JSONL lines logged after ``step`` by the run being resumed (they will be logged again)."""
    if out_dir is None or not accelerator.is_main_process or not (out_dir / METRICS_FILE).exists():
        return
    lines = (out_dir / METRICS_FILE).read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(out_dir / METRICS_FILE, "".join(ln + "\n" for ln in kept))


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out_dir: Path | None) -> Path | None:
    found = _checkpoints(out_dir) if out_dir else []
    return found[-1] if found else None


def save_checkpoint(accelerator, out_dir: Path, rs: LoopState, student, cfg: DistillConfig) -> Path:
    """``accelerator.save_state`` plus the run state, written to a temporary folder then renamed."""
    final = out_dir / CHECKPOINTS / f"step-{rs.step}"
    tmp = out_dir / CHECKPOINTS / f"step-{rs.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {
            "step": rs.step,
            "best": rs.best,
            "history": rs.history,
            "pruned_at": rs.pruned_at,
            "schedule_start": rs.schedule_start,
            "schedule_shape": rs.schedule_shape,
            "structure": view(student).structure.to_dict(),
        }
        atomic_write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(out_dir)[: -cfg.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


_STATE_KEYS = ("step", "best", "history", "pruned_at", "schedule_start", "structure")


def _read_state(path: Path) -> dict:
    """The run state of checkpoint ``path``, after checking the checkpoint is whole: the state parses
    with every key, each safetensors file opens, each torch file is a complete archive."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path / STATE_FILE} is unreadable ({err})") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path / STATE_FILE} lacks {missing[0]!r}")
    for f in sorted(path.iterdir()):
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as st:
                    st.keys()
            except Exception as err:  # noqa: BLE001 - any failure to open means a damaged file
                raise ValueError(f"{f} is damaged ({err})") from None
        elif f.suffix in (".bin", ".pt", ".pth") and not zipfile.is_zipfile(f):
            raise ValueError(f"{f} is truncated or not a torch archive")
    return state


def load_trainer_state(cfg: DistillConfig) -> dict:
    """Find the checkpoint ``cfg.resume_from`` names and read its run state.

    With ``'latest'``, a damaged newest checkpoint (a kill while writing, a full disk) is skipped with a
    warning and the newest intact one is used."""
    out = out_path(cfg)
    if cfg.resume_from == "latest":
        found = _checkpoints(out) if out else []
        if not found:
            raise ValueError(f"resume_from='latest' but {out / CHECKPOINTS} holds no checkpoint.")
        problems = []
        for path in reversed(found):
            try:
                state = _read_state(path)
            except ValueError as err:
                problems.append(str(err))
                logger.warning("skipping the damaged checkpoint %s: %s", path, err)
                continue
            if problems:
                logger.warning("resuming from %s, the newest intact checkpoint", path)
            state["path"] = str(path)
            return state
        raise ValueError(f"No intact checkpoint in {out / CHECKPOINTS}: {'; '.join(problems)}.")
    path = Path(cfg.resume_from)
    if not (path / STATE_FILE).is_file():
        raise ValueError(
            f"{path} is not a checkpoint of this loop ({STATE_FILE} missing); pass a folder under "
            f"{out / CHECKPOINTS} or 'latest'."
        )
    state = _read_state(path)
    state["path"] = str(path)
    return state


def save_best(student, rs: LoopState, out_dir: Path | None, accelerator) -> None:
    """Keep the best weights in memory and, with a run folder, as ``best/`` (save_pretrained, atomic)."""
    rs.best_state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
    if out_dir is None or not accelerator.is_main_process:
        return
    tmp, final = out_dir / (BEST + ".tmp"), out_dir / BEST
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    save_file({k: v.contiguous() for k, v in rs.best_state.items()}, str(tmp / "weights.safetensors"))
    atomic_write_json(tmp / "best.json", rs.best)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def load_best(student, rs: LoopState, out_dir: Path | None, accelerator) -> None:
    """Put the best weights back into ``student`` (from memory, or from ``best/`` after a resume)."""
    state = rs.best_state
    if state is None and out_dir is not None and (out_dir / BEST / "weights.safetensors").exists():
        state = load_file(str(out_dir / BEST / "weights.safetensors"))
    if state is None:
        return
    student.load_state_dict({k: v.to(student.device) for k, v in state.items()})
    logger.info(
        "loaded the best weights (%s = %.4f at step %d)", rs.best["metric"], rs.best["value"], rs.best["step"]
    )


def seed_step(cfg: DistillConfig, accelerator, micro_step: int, salt: int = 0) -> None:
    """Seed the global RNG from (seed, step, process): dropout masks replay exactly after a resume.
    ``accelerator=None`` gives every process the same seed (the data order of a pruning event)."""
    rank = accelerator.process_index if accelerator is not None else 0
    torch.manual_seed((cfg.seed * 1_000_003 + micro_step * 7919 + rank * 104_729 + salt) % 2**63)
