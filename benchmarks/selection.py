"""How should ``sp.compress`` choose among its candidates? Each candidate's held-back losses beside its validation metric.

``sp.compress(select=True)`` holds back a quarter of the calibration examples and keeps the configured path
(search + rearrangement + reconstruction) unless another candidate's held-back loss is clearly lower
(``structprune/run/select.py``). With labels that loss is the task loss; without, the KL divergence from the
unpruned model's outputs. On RTE at 25% one calibration sample (seed 1) made it choose a global Fisher
allocation without reconstruction at 44.40% validation accuracy, below the majority class, where seed 0's
choice scored 57.76 (``results/distill_variants_rte_62*.md``). This benchmark asks which criterion picks well.

Per task (the best cached MiniLM teacher, ``_common.best_cached_teacher``), budget and seed: ``--calibration-examples``
random train examples (at the recipe's ``data.max_length``), split as ``sp.compress`` splits them (``split_holdout``, a quarter held back); each
candidate is ``sp.compress(select=False)`` on the fit part alone with one path forced (the search with both
rearrangements, the search alone, a global allocation of Fisher or of Taylor scores; each with and without
reconstruction; the Fisher paths share one gradient pass). ``sp.compress`` itself reconstructs only the best
of the search's variants besides the configured one; here every candidate is built, so the rules below are
applied to a superset of its candidates. Per candidate, on the held-back examples: the task loss, the KL
divergence from the teacher's outputs (the label-free loss), and the main metric; and the validation metric
(the teacher's own row beside them: how well it fits the training examples the candidates are weighed on).

Rules (each picks one candidate per seed; ``margin``: keep the configured path unless the other candidate's
loss is lower by more than that many standard errors of the paired per-example difference, as ``sp.compress``
does): the task loss at margin 2 (``sp.compress``'s rule with labels) and 0, the KL at margin 2 and 0, the
held-back metric (highest), the configured path always, and the oracle (the best validation metric; not
available to a user). Reported: each rule's pick per seed and the mean of its picks' validation metric.

Run (from the repository root)::

    .venv/bin/python benchmarks/selection.py --tasks rte --flops 0.25 --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/selection.py --smoke --out /tmp/bench     # tiny random BERT, seconds
"""

from __future__ import annotations

import copy
import logging
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.data import get_task, load_split, make_dataloader, subset  # noqa: E402
from structprune.run.recipe import load_recipe  # noqa: E402
from structprune.run.select import clearly_lower, heldout_losses, reference_logits, split_holdout  # noqa: E402

logger = logging.getLogger("selection")

CONFIGURED = "search+rearrange, reconstructed"
# candidate name -> sp.compress options forcing that path (select=False; reconstruction added separately)
PATHS = {
    "search+rearrange": {},
    "search": {"rearrange": False},
    "allocate (fisher)": {"search": False},
    "allocate (taylor)": {"search": False, "method": "taylor"},
}
DEFAULT_RULE = " (sp.compress)"  # marks the rule of CompressConfig's defaults (select_by, select_margin)


def _loss_rule(by: str, margin: float) -> str:
    default = sp.CompressConfig()
    mark = DEFAULT_RULE if (by, margin) == (default.select_by, default.select_margin) else ""
    return f"{'task loss' if by == 'task_loss' else 'KL'}, margin {margin:g}{mark}"


LOSS_RULES = {_loss_rule(by, m): (by, m) for by in ("task_loss", "divergence") for m in (2.0, 0.0)}
"""rule -> (what the held-back examples weigh the candidates by, margin in standard errors)"""
RULES = (*LOSS_RULES, "held-back metric", "configured path", "oracle")


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["rte"])
    p.add_argument("--flops", type=float, nargs="+", default=[0.25])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calibration-examples", type=int, default=1024)
    p.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        metavar="MD",
        help="measure nothing: read these results files of this script and write selection_summary.md "
        "(each rule's picks over every task, budget and seed they hold, against sp.compress's rule)",
    )
    args = p.parse_args(argv)
    args.eval_limit = None
    if args.smoke:
        args.calibration_examples, args.eval_limit, args.seeds = 96, 32, args.seeds[:2]
    return args


def candidates(teacher, fit, flops: float):
    """``{name: pruned model}``: every path of ``PATHS``, reconstructed and not, each compressed on ``fit``."""
    grads = sp.gate_gradients(teacher, fit, label_free=False, progress=False)
    out = {}
    for path, opts in PATHS.items():
        for rec in (True, False):
            model = copy.deepcopy(teacher)
            extra = {} if opts.get("method") == "taylor" else {"gradients": grads}
            sp.compress(model, fit, flops, select=False, reconstruct=rec, progress=False, **extra, **opts)
            out[f"{path}, {'reconstructed' if rec else 'not reconstructed'}"] = model.eval()
    return out


def pick(losses: dict[str, torch.Tensor], margin: float) -> str:
    """``sp.compress``'s rule: the lowest mean loss, unless not clearly below the configured path's."""
    best = min(losses, key=lambda k: float(losses[k].mean()))
    if best != CONFIGURED and not clearly_lower(losses[best], losses[CONFIGURED], margin):
        return CONFIGURED
    return best


def run_seed(
    teacher, tok, task, flops: float, seed: int, val, args, max_length: int, teacher_val: float
) -> dict:
    batches = list(make_dataloader(load_split(task.name, "train", args.data_dir), tok, task.name, batch_size=32,
                                   max_length=max_length, limit=args.calibration_examples, limit_mode="random",
                                   seed=seed, bucket=False))  # fmt: skip
    fit, held = split_holdout(batches, 0.25)
    torch.manual_seed(seed)
    models = candidates(teacher, fit, flops)
    ref = reference_logits(teacher, held)
    rows, task_loss, kl = {}, {}, {}
    for name, model in models.items():
        task_loss[name] = heldout_losses(model, held, label_free=False, reference=None)
        kl[name] = heldout_losses(model, held, label_free=True, reference=ref)
        rows[name] = {
            "task loss": float(task_loss[name].mean()),
            "KL": float(kl[name].mean()),
            "held metric": C.metrics(model, held, task.name)[task.main_metric],
            "validation": C.metrics(model, val, task.name)[task.main_metric],
        }
        logger.info("%s %s seed %d %s: %s", task.name, flops, seed, name, rows[name])
    teacher_row = {
        "task loss": float(heldout_losses(teacher, held, label_free=False, reference=None).mean()),
        "KL": 0.0,
        "held metric": C.metrics(teacher, held, task.name)[task.main_metric],
        "validation": teacher_val,
    }
    picks = {
        **{rule: pick(task_loss if by == "task_loss" else kl, m) for rule, (by, m) in LOSS_RULES.items()},
        "held-back metric": max(rows, key=lambda k: rows[k]["held metric"]),
        "configured path": CONFIGURED,
        "oracle": max(rows, key=lambda k: rows[k]["validation"]),
    }
    n_fit, n_held = (sum(len(b["input_ids"]) for b in part) for part in (fit, held))
    return {"rows": rows, "picks": picks, "fit": n_fit, "held": n_held, "teacher": teacher_row}


def render(results: dict, args, sources: dict) -> str:
    text = C.header(
        "How sp.compress chooses among its candidates: held-back losses vs validation", note=args.note
    )
    text += (
        "\nSetup: the docstring of `benchmarks/selection.py`. Metrics in % (validation: the task's first "
        "validation split); task loss: cross-entropy (squared error for a regression head); KL: from the "
        "teacher's outputs (the label-free loss). Picks marked per rule; *oracle* uses the validation set "
        "(not available to a user).\n"
    )
    for (tname, flops), seeds in results.items():
        task = get_task(tname)
        text += f"\n## {task.dir_name} at {flops:.0%} of the encoder FLOPs\n\n- Teacher: {sources[tname]}\n"
        summary = []
        for rule in RULES:
            vals = [s["rows"][s["picks"][rule]]["validation"] for s in seeds.values()]
            summary.append({
                "rule": rule,
                **{f"seed {k}": f"{s['rows'][s['picks'][rule]]['validation']:.2f}" for k, s in seeds.items()},
                f"mean {task.main_metric}": f"{statistics.mean(vals):.2f}",
                "worst": f"{min(vals):.2f}",
            })  # fmt: skip
        text += "\nValidation metric of each rule's pick:\n\n" + C.md_table(summary) + "\n"
        for seed, s in seeds.items():
            text += f"\n### seed {seed} ({s['fit']} examples fitted, {s['held']} held back)\n\n"
            rows = []
            for name, r in [("teacher (unpruned)", s["teacher"]), *s["rows"].items()]:
                chosen = [rule for rule, p in s["picks"].items() if p == name]
                rows.append({
                    "candidate": name,
                    "held task loss": f"{r['task loss']:.4f}",
                    "held KL": f"{r['KL']:.4f}",
                    f"held {task.main_metric}": f"{r['held metric']:.2f}",
                    f"validation {task.main_metric}": f"{r['validation']:.2f}",
                    "picked by": "; ".join(chosen),
                })  # fmt: skip
            text += C.md_table(rows) + "\n"
    return text


def read_picks(path: Path) -> dict[str, dict[str, list[float]]]:
    """``{"<task> at <budget>": {rule: [validation metric of its pick per seed]}}`` from a results file of this
    script (the rule of the defaults when it was written carries a mark, dropped here: it is the rule's name that
    identifies it)."""
    out: dict[str, dict[str, list[float]]] = {}
    for section in path.read_text().split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        table = body.split("Validation metric of each rule's pick:", 1)[-1].strip().split("\n\n")[0]
        lines = [line for line in table.splitlines() if line.startswith("|")][2:]
        if not lines:
            raise ValueError(f"{path}: section {title!r} has no table of the rules' picks")
        picks = {}
        for line in lines:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            picks[cells[0].replace(DEFAULT_RULE, "")] = [float(c) for c in cells[1:-2]]
        out[title.replace(" of the encoder FLOPs", "")] = picks
    return out


def summarize(paths: list[Path]) -> str:
    """Each rule over every (task, budget, seed) case of ``paths``: mean difference from the rule of
    ``sp.compress``'s defaults, cases better / worse, and the gap to the oracle."""
    cases = {}
    for path in sorted(paths):
        for title, picks in read_picks(path).items():
            if title in cases:
                raise ValueError(f"{title} is in two of the files given")
            cases[title] = (path.name, picks)
    default = next(rule for rule in LOSS_RULES if rule.endswith(DEFAULT_RULE)).replace(DEFAULT_RULE, "")
    rules = list(next(iter(cases.values()))[1]) if cases else []
    per_file = [
        {"file": name, "case": title, "seeds": len(picks[default]),
         **{rule: f"{statistics.mean(vals):.2f}" for rule, vals in picks.items()}}
        for title, (name, picks) in cases.items()
    ]  # fmt: skip
    overall = []
    for rule in rules:
        diff = [a - b for _, p in cases.values() for a, b in zip(p[rule], p[default], strict=True)]
        gap = [a - b for _, p in cases.values() for a, b in zip(p[rule], p["oracle"], strict=True)]
        overall.append({
            "rule": rule + (DEFAULT_RULE if rule == default else ""),
            "cases": len(diff),
            "mean vs sp.compress's rule": f"{statistics.mean(diff):+.2f}",
            "better": sum(d > 1e-9 for d in diff),
            "worse": sum(d < -1e-9 for d in diff),
            "worst": f"{min(diff):+.2f}",
            "best": f"{max(diff):+.2f}",
            "mean vs oracle": f"{statistics.mean(gap):+.2f}",
        })  # fmt: skip
    return (
        "\nEach case is one task, budget and calibration seed of the files read; a rule's value in a case is the "
        "validation metric of the candidate it picks, in points (accuracy, F1, Pearson or MCC x 100, as each file "
        f"says). Compared with the rule of `sp.compress`'s defaults (`{default}`).\n\n"
        "## Over every case\n\n"
        + C.md_table(overall)
        + "\n\n## Mean of each rule's picks, per file\n\n"
        + C.md_table(per_file)
        + "\n"
    )


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    if args.summarize:
        text = C.header("How sp.compress chooses: every selection result together", note=args.note)
        out = C.write_atomic(Path(args.out) / "selection_summary.md", text + summarize(args.summarize))
        logger.info("wrote %s", out)
        return out
    results, sources = {}, {}
    for tname in args.tasks:
        task = get_task(tname)
        teacher, tok, sources[task.name] = C.teacher_of(task.name, args.smoke)
        max_length = load_recipe(task.name).data.max_length
        val_rows = subset(load_split(task.name, task.validation_splits[0], args.data_dir), args.eval_limit)
        val = list(make_dataloader(val_rows, tok, task.name, batch_size=64, max_length=max_length))
        teacher_val = C.metrics(teacher, val, task.name)[task.main_metric]
        for flops in args.flops:
            results[(task.name, flops)] = {
                seed: run_seed(teacher, tok, task, flops, seed, val, args, max_length, teacher_val)
                for seed in args.seeds
            }
    budgets = "_".join(f"{round(100 * f)}" for f in args.flops)
    name = "selection_smoke.md" if args.smoke else f"selection_{'_'.join(args.tasks)}_{budgets}.md"
    out = C.write_atomic(Path(args.out) / name, render(results, args, sources))
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    print(main())
