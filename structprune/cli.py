"""The ``structprune`` command line: thin commands over the same functions the Python API uses.

    structprune run recipes/glue/sst2.yaml prune.flops=0.4 output.dir=runs/sst2-40
    structprune teacher recipes/glue/mrpc.yaml
    structprune prune MODEL --task sst2 --flops 0.5 --out pruned/
    structprune distill STUDENT --teacher TEACHER --task sst2 --out distilled/
    structprune evaluate MODEL --task sst2
    structprune export MODEL --out model.onnx
    structprune push MODEL user/repo
    structprune info MODEL

Options of ``prune`` and ``distill`` are derived from :class:`CompressConfig` and :class:`DistillConfig`.
Under ``accelerate launch`` the distillation loop runs distributed with no change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from pathlib import Path

logger = logging.getLogger("structprune")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


# --- options derived from config dataclasses --------------------------------------------------------
def _arg_type(hint):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _arg_type(args[0]) if len(args) == 1 else str
    if origin is list:
        return "list"
    return hint


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _nested_dataclass(hint):
    """The dataclass a field holds (``PruneSchedule | None`` -> ``PruneSchedule``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of ``cls`` (help from the field's metadata); defaults stay the dataclass's.
    A field holding a nested config (``prune: PruneSchedule``) gives ``--prune-<option>`` options."""
    _add_options(parser.add_argument_group(f"{cls.__name__} options"), cls, skip, f"{cls.__name__}.", "")


def _add_options(group, cls, skip: tuple[str, ...], dest: str, flag: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        nested = _nested_dataclass(hints[f.name])
        if nested is not None:
            if f.default_factory is not dataclasses.MISSING:  # on by default: a switch turns it off
                group.add_argument(
                    "--" + (flag + f.name).replace("_", "-"), dest=f"{dest}{f.name}.{_ON}", type=_bool,
                    metavar="BOOL", default=argparse.SUPPRESS, help=f"Turn {f.name} off with false (default true).",
                )  # fmt: skip
            _add_options(group, nested, ("progress",), f"{dest}{f.name}.", f"{flag}{f.name}-")
            continue
        t = _arg_type(hints[f.name])
        kwargs = {"dest": dest + f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if t is bool:
            kwargs.update(type=_bool, metavar="BOOL")
        elif t == "list":
            kwargs.update(type=int, nargs="+", metavar="N")
        elif t in (int, float, str):
            kwargs.update(type=t, metavar={int: "N", float: "X", str: "TEXT"}[t])
        group.add_argument("--" + (flag + f.name).replace("_", "-"), **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace, **fixed):
    """Build ``cls`` from the options :func:`add_dataclass_options` added (nested configs as dicts)."""
    prefix = cls.__name__ + "."
    values: dict = {}
    for key, value in vars(args).items():
        if not key.startswith(prefix):
            continue
        *parents, name = key[len(prefix) :].split(".")
        node = values
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    return cls(**{**_switched(values), **fixed})


_ON = "__on__"


def _switched(values: dict) -> dict:
    """Nested option groups whose switch is false become None (``--reconstruct false``)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            on = value.pop(_ON, True)
            value = _switched(value) if on else None
        out[key] = value
    return out


# --- commands ------------------------------------------------------------------------------------------
def _load_task_model(path: str):
    from .checkpoint import from_pretrained
    from .run.pipeline import resolve_model

    return from_pretrained(resolve_model(path)).eval()


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    from .run.pipeline import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(path))


def cmd_run(args) -> int:
    from .run.pipeline import run, summary_markdown
    from .run.recipe import load_recipe

    overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
    recipe = load_recipe(args.recipe, overrides)
    summary = run(recipe)
    _out(summary_markdown(summary))
    _out(f"\nwritten to {summary['output_dir']} (summary.json, summary.md, student/)")
    return 0


def cmd_teacher(args) -> int:
    from .data import get_task
    from .report import markdown_table
    from .run.pipeline import prepare_teacher
    from .run.recipe import load_recipe
    from .run.teachers import read_teacher_record

    recipe = load_recipe(args.recipe, list(args.overrides))
    path = prepare_teacher(recipe)
    record = read_teacher_record(path)
    if record and record.get("curve"):
        task = get_task(recipe.data.task)
        keys = [k for k in record["curve"][-1] if k.startswith("eval_") and k != "eval_loss"]
        rows = [[c.get("epoch"), c["step"], *(c.get(k) for k in keys)] for c in record["curve"]]
        _out(f"{task.name} teacher, validation curve:")
        _out(markdown_table(["epoch", "step", *(k[5:] for k in keys)], rows))
    _out(f"teacher: {path}")
    return 0


def _check_out(out: str, *reads: str) -> None:
    """Refuse, before any work, an output folder that is one of the models being read."""
    from .run.pipeline import resolve_model

    target = Path(out).expanduser().resolve()
    for model in reads:
        source = Path(resolve_model(model)).expanduser()
        if source.is_dir() and source.resolve() == target:
            raise ValueError(f"--out {out} is the model being read ({model}); saving there would replace it.")


def cmd_prune(args) -> int:
    _check_out(args.out, args.model)
    from .checkpoint import save_pretrained
    from .data import get_task, load_split, make_dataloader
    from .report import layer_table, summary_table
    from .run.compress import CompressConfig, compress
    from .run.pipeline import resolve_data_dir

    cfg = dataclass_from_args(CompressConfig, args)
    model, tok = _load_task_model(args.model), _tokenizer(args.model)
    task = get_task(args.task)
    train = load_split(task, "train", resolve_data_dir(args.data_dir))
    calib = make_dataloader(train, tok, task, batch_size=32, max_length=args.max_length,
                            limit=args.calibration_examples, limit_mode="random", seed=1)  # fmt: skip
    from .allocation.cost import cost

    before = cost(model, cfg.seq_len)
    model, report = compress(model, calib, config=cfg)
    after = cost(model, cfg.seq_len)
    save_pretrained(model, args.out, tokenizer=tok)
    _out(summary_table(before, after) + "\n\n" + layer_table(before, after))
    _out(f"\nsaved to {args.out} ({report.seconds.get('total', 0):.1f} s)")
    return 0


def cmd_distill(args) -> int:
    _check_out(args.out, args.student, args.teacher)
    from .checkpoint import save_pretrained
    from .data import get_task, load_split, make_dataloader
    from .recovery.distill import DistillConfig, distill
    from .run.pipeline import resolve_data_dir

    task = get_task(args.task)
    cfg = dataclass_from_args(DistillConfig, args, task=task.name)
    student, teacher = _load_task_model(args.student), _load_task_model(args.teacher)
    tok = _tokenizer(args.teacher)
    data_dir = resolve_data_dir(args.data_dir)
    train = make_dataloader(load_split(task, "train", data_dir), tok, task, batch_size=args.batch_size,
                            max_length=args.max_length, shuffle=True, limit=args.train_examples, limit_mode="random")  # fmt: skip
    val = make_dataloader(load_split(task, task.validation_splits[0], data_dir), tok, task, batch_size=64,
                          max_length=args.max_length)  # fmt: skip
    student, history = distill(student, teacher, train, val, cfg)
    save_pretrained(student, args.out, tokenizer=tok)
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    if evals:
        _out(json.dumps(evals[-1]))
    _out(f"saved to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import get_task, load_split, make_dataloader
    from .evaluation import evaluate
    from .report import markdown_table
    from .run.pipeline import resolve_data_dir

    task = get_task(args.task)
    model, tok = _load_task_model(args.model), _tokenizer(args.model)
    rows = []
    for split in [args.split] if args.split else task.validation_splits:
        ds = load_split(task, split, resolve_data_dir(args.data_dir))
        dl = make_dataloader(ds, tok, task, batch_size=64, max_length=args.max_length, limit=args.examples)
        for k, v in evaluate(model, dl, task).items():
            rows.append([split, k, v])
    _out(markdown_table(["split", "metric", "value"], rows))
    return 0


def cmd_export(args) -> int:
    from .export.onnx import export_onnx

    model = _load_task_model(args.model)
    path = export_onnx(model, args.out)
    _out(f"exported to {path}")
    return 0


def cmd_push(args) -> int:
    from .checkpoint import push_to_hub

    model, tok = _load_task_model(args.model), _tokenizer(args.model)
    info = push_to_hub(model, args.repo_id, tokenizer=tok, private=args.private)
    _out(f"pushed: {getattr(info, 'commit_url', info)}")
    return 0


def cmd_info(args) -> int:
    from .allocation.cost import cost, dense_cost
    from .arch import view
    from .report import layer_table, markdown_table

    model = _load_task_model(args.model)
    v = view(model)
    c, d = cost(model, args.seq_len), dense_cost(model, args.seq_len)
    _out(
        f"{type(model).__name__} ({v.spec.name} family), {'pruned' if v.structure.is_pruned else 'not pruned'}"
    )
    _out(
        markdown_table(
            ["", "this model", "unpruned", "ratio"],
            [
                ["parameters", c.total_params, d.total_params, c.total_params / d.total_params],
                [
                    f"encoder GFLOPs (seq {args.seq_len})",
                    c.encoder_flops / 1e9,
                    d.encoder_flops / 1e9,
                    c.encoder_flops / d.encoder_flops,
                ],  # fmt: skip
                ["layers", len(c.layers), len(d.layers), len(c.layers) / len(d.layers)],
            ],
        )
    )
    _out("\n" + layer_table(d, c))
    return 0


def cmd_demo(args) -> int:
    from . import demo

    return demo.main(args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    from .recovery.distill import DistillConfig
    from .run.compress import CompressConfig

    p = argparse.ArgumentParser(
        prog="structprune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Log at INFO level.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="Run a recipe end to end (resumes a previous run of the same recipe).")
    r.add_argument("recipe", help="Recipe YAML, e.g. recipes/glue/sst2.yaml.")
    r.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. prune.flops=0.4 output.dir=runs/x."
    )
    r.add_argument("--overwrite", action="store_true", help="Replace a different run in the output folder.")
    r.set_defaults(func=cmd_run)

    te = sub.add_parser(
        "teacher",
        help="Fine-tune a recipe's teacher (or find it in the cache) and print its validation curve.",
    )
    te.add_argument("recipe", help="Recipe YAML, e.g. recipes/glue/mrpc.yaml.")
    te.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. teacher.train.learning_rate=3e-5."
    )
    te.set_defaults(func=cmd_teacher)

    def data_options(q, train=True):
        q.add_argument("--task", required=True, help="GLUE task, e.g. sst2.")
        q.add_argument(
            "--data-dir", default="auto", help="Local GLUE folder; 'auto' finds one, '' uses the Hub."
        )
        q.add_argument("--max-length", type=int, default=128, help="Tokens per example.")

    pr = sub.add_parser("prune", help="Score, search, prune and reconstruct a task model (retraining-free).")
    pr.add_argument("model", help="Task model path or id.")
    pr.add_argument("--out", required=True, help="Folder for the pruned checkpoint.")
    pr.add_argument("--calibration-examples", type=int, default=1024, help="Train examples used.")
    data_options(pr)
    add_dataclass_options(pr, CompressConfig)
    pr.set_defaults(func=cmd_prune)

    di = sub.add_parser("distill", help="Distill a pruned student from its teacher on a task.")
    di.add_argument("student", help="Pruned student checkpoint.")
    di.add_argument("--teacher", required=True, help="Teacher checkpoint (the unpruned model).")
    di.add_argument("--out", required=True, help="Folder for the distilled checkpoint.")
    di.add_argument("--batch-size", type=int, default=32, help="Training batch size.")
    di.add_argument("--train-examples", type=int, default=None, help="Random subset of the train split.")
    data_options(di)
    add_dataclass_options(di, DistillConfig, skip=("task",))
    di.set_defaults(func=cmd_distill)

    ev = sub.add_parser("evaluate", help="Evaluate a checkpoint on a task's validation split(s).")
    ev.add_argument("model", help="Task model path or id.")
    ev.add_argument("--split", help="One split (default: every validation split of the task).")
    ev.add_argument("--examples", type=int, default=None, help="First n examples only.")
    data_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="Export a checkpoint to ONNX (dynamic batch and sequence axes).")
    ex.add_argument("model", help="Checkpoint path.")
    ex.add_argument("--out", required=True, help="The .onnx file to write.")
    ex.set_defaults(func=cmd_export)

    pu = sub.add_parser("push", help="Upload a checkpoint (weights, config, modeling file, tokenizer, card).")
    pu.add_argument("model", help="Checkpoint path.")
    pu.add_argument("repo_id", help="Hub repository, e.g. me/minilm-sst2-pruned.")
    pu.add_argument("--private", action="store_true", help="Create the repository private.")
    pu.set_defaults(func=cmd_push)

    info = sub.add_parser("info", help="What a checkpoint contains: per-layer sizes, params, FLOPs.")
    info.add_argument("model", help="Checkpoint path or id.")
    info.add_argument("--seq-len", type=int, default=128, help="Sequence length for FLOPs.")
    info.set_defaults(func=cmd_info)

    de = sub.add_parser("demo", help="Score and prune the real MiniLM to 50%% FLOPs and print the table.")
    de.add_argument("demo_args", nargs=argparse.REMAINDER, help="Options of python -m structprune.run.demo.")
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"] and not {"-h", "--help"} & set(argv[1:2]):
        from . import demo

        return demo.main(argv[1:])  # its own options (python -m structprune.run.demo --help)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"structprune {args.command}: error: {err}\n")


if __name__ == "__main__":
    raise SystemExit(main())
