"""The recipe pipeline of a sentence-embedding model (``pipeline: sentence-transformers``):
prune -> reconstruct -> distill -> evaluate -> save, on unlabelled sentences, the unpruned model as teacher.

The same run folder discipline as a GLUE recipe (:class:`structprune.run.pipeline.RunRecord`): every stage
writes its result into ``output.dir`` and records it in ``run.json``; running the recipe again resumes after
the last finished stage (distillation from its last checkpoint); a folder holding another run, or files a
run did not write, is refused. ``structprune run all-minilm-l6-v2`` runs the bundled recipe.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import torch

from ..allocation.cost import cost
from ..allocation.latency import measure_latency
from ..atomic import atomic_write_json, atomic_write_text
from ..checkpoint import CardInfo
from ..checkpoint.card import budget_text
from ..run.pipeline import (
    RunRecord,
    distill_run_config,
    numeric_metrics,
    prune_config,
    resolve_data_dir,
    resolve_model,
    summary_markdown,
)
from ..run.recipe import SentenceRecipe
from .data import unlabelled_sentences

logger = logging.getLogger(__name__)


def _load(path) -> object:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").eval()


class SentencePipeline:
    """Runs a :class:`SentenceRecipe` stage by stage (see :func:`run`)."""

    def __init__(self, recipe: SentenceRecipe):
        from ..errors import MissingDependency

        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise MissingDependency(
                "A sentence-transformers recipe needs sentence-transformers: pip install 'structprune[sentence]'."
            ) from None
        self.recipe = recipe
        self.data_dir = resolve_data_dir(recipe.data.data_dir)
        self.state = RunRecord(recipe)
        self.out = self.state.dir
        self.timings: dict[str, float] = {}
        self._check_inputs()
        self.state.open()  # only now, with every input checked, is the output folder touched

    def _check_inputs(self) -> None:
        """Everything the run reads, before anything is written: the model, the sentences, the STS-B split."""
        self.source = resolve_model(self.recipe.model)
        looks_local = self.source.startswith(("/", ".", "~")) or os.path.exists(self.source)
        if looks_local and not os.path.isdir(os.path.expanduser(self.source)):
            raise ValueError(
                f"model={self.recipe.model!r}: {self.source} is not a SentenceTransformer folder."
            )
        d = self.recipe.data
        limit = None if d.distill_sentences is None else d.calibration_sentences + d.distill_sentences
        pool = unlabelled_sentences(d.sentences, self.data_dir, seed=d.seed, limit=limit)
        if len(pool) <= d.calibration_sentences and "distill" not in self.recipe.skip:
            raise ValueError(
                f"data.sentences hold {len(pool):,} distinct sentences: none is left for distillation after "
                f"{d.calibration_sentences:,} calibration sentences. Add sources or lower data.calibration_sentences."
            )
        self.calibration = pool[: d.calibration_sentences]
        self.train = pool[d.calibration_sentences : limit]
        if "evaluate" not in self.recipe.skip:
            from ..data import load_split

            load_split("stsb", self.recipe.evaluate.stsb_split, self.data_dir)

    # --- stages --------------------------------------------------------------------------------
    def prune(self, dense):
        from . import compress, save

        skip = set(self.recipe.skip)
        if "prune" in skip:
            return copy.deepcopy(dense)
        if done := self.state.done("prune"):
            return _load(done)
        t0 = time.perf_counter()
        student, report = compress(
            copy.deepcopy(dense), self.calibration, config=prune_config(self.recipe),
            batch_size=self.recipe.data.batch_size,
        )  # fmt: skip
        self.timings["prune_s"] = time.perf_counter() - t0
        path = save(student, self.out / "pruned", card=False)
        atomic_write_json(self.out / "prune_report.json", report.to_dict())
        self.state.finish("prune", str(path))
        return student

    def distill(self, student, dense):
        from . import distill, save

        if "distill" in self.recipe.skip:
            return student
        if done := self.state.done("distill"):
            return _load(done)
        cfg = distill_run_config(self.recipe, self.out / "distill")
        t0 = time.perf_counter()
        student, _ = distill(student, dense, self.train, config=cfg, batch_size=self.recipe.data.batch_size)
        self.timings["distill_s"] = time.perf_counter() - t0
        path = save(student, self.out / "distilled", card=False)
        self.state.finish("distill", str(path))
        return student

    def evaluate(self, models: dict) -> dict:
        from ..data import load_split
        from .evaluate import evaluate_stsb, throughput

        if "evaluate" in self.recipe.skip:
            return {}
        if done := self.state.done("evaluate"):
            return done
        e, o = self.recipe.evaluate, self.recipe.output
        split = f"stsb {e.stsb_split}"
        metrics = {}
        for name, st in models.items():
            r = evaluate_stsb(st, split=e.stsb_split, data_dir=self.data_dir, limit=e.stsb_pairs)
            metrics[name] = {split: {"spearman": r["spearman"], "pearson": r["pearson"]}}
        if o.latency:
            pairs = load_split("stsb", e.stsb_split, self.data_dir)
            if e.stsb_pairs is not None:
                pairs = pairs.select(range(min(e.stsb_pairs, len(pairs))))
            texts = [*pairs["sentence1"], *pairs["sentence2"]]
            speed = throughput(models, texts, batch_size=e.throughput_batch_size, repeat=o.latency_repeats)
            lat = measure_latency(
                {name: st[0].auto_model for name, st in models.items()},
                batch_size=o.latency_batch_size, seq_len=o.latency_seq_len, repeats=o.latency_repeats,
            )  # fmt: skip
            for name in models:
                metrics[name]["latency_ms"] = lat[name]["median_ms"]
                metrics[name]["sentences_per_s"] = speed[name]
        self.state.finish("evaluate", metrics)
        return metrics

    def save(self, student, metrics: dict) -> Path | None:
        from . import save

        if "save" in self.recipe.skip:
            return None
        if done := self.state.done("save"):
            return Path(done)
        r, pr = self.recipe, self.recipe.prune
        split = f"stsb {r.evaluate.stsb_split}"
        skip = set(r.skip)
        method = "" if "prune" in skip else (
            f"{pr.method} scores of the change of the normalised sentence embedding (no labels) on "
            f"{len(self.calibration):,} sentences, " + ("constrained search" if pr.search else "global allocation")
            + (", reconstruction" if pr.reconstruct and "reconstruct" not in skip else "")
        )  # fmt: skip
        if "distill" not in skip:
            from .run import distill_terms

            method += f"{', ' if method else ''}{distill_terms(r.distill)} on {len(self.train):,} sentences"
        card = CardInfo(
            teacher=r.model if "distill" not in skip else None,
            method=method or None,
            budget=None
            if "prune" in skip
            else budget_text(
                pr.flops, pr.params, pr.seq_len, layers=pr.layers, hidden=pr.hidden, latency=pr.latency
            ),  # fmt: skip
            task="sentence-similarity",
            eval_dataset=f"glue/{split} (Spearman of cosine similarities)" if metrics else None,
            metrics_before=numeric_metrics(metrics.get("teacher", {}).get(split, {})),
            metrics_after=numeric_metrics(metrics.get("student", {}).get(split, {})),
        )
        path = save(student, self.out / "student", card=card)
        if r.output.push_to_hub:
            from ..checkpoint import push_to_hub

            push_to_hub(student, r.output.push_to_hub, card=card)
        self.state.finish("save", str(path))
        return path

    def summary(self, models: dict, metrics: dict) -> dict:
        seq = self.recipe.prune.seq_len
        rows = {}
        for name, st in models.items():
            c = cost(st[0].auto_model, seq_len=seq)
            m = metrics.get(name, {})
            rows[name] = {
                "params": sum(p.numel() for p in st.parameters()),
                "encoder_params": c.encoder_params,
                "encoder_gflops": c.encoder_flops / 1e9,
                "metrics": {s: numeric_metrics(v) for s, v in m.items() if isinstance(v, dict)},
                "latency_ms": m.get("latency_ms"),
                "sentences_per_s": m.get("sentences_per_s"),
            }
        result = {"task": "sentence-transformers", "seq_len": seq, "models": rows, "timings_s": self.timings,
                  "output_dir": str(self.out)}  # fmt: skip
        atomic_write_json(self.out / "summary.json", result)
        atomic_write_text(self.out / "summary.md", summary_markdown(result) + "\n")
        return result


def run(recipe: SentenceRecipe) -> dict:
    """Run a sentence-transformers recipe end to end (resuming a previous run of it); return the summary.
    Called by :func:`structprune.run.pipeline.run` (and ``structprune run``) for such a recipe.

    Example::

        from structprune.run.recipe import load_recipe
        summary = run(load_recipe("all-minilm-l6-v2", ["output.dir=runs/minilm-st-50"]))
    """
    torch.manual_seed(recipe.data.seed)
    p = SentencePipeline(recipe)
    dense = _load(p.source)
    student = p.prune(dense)
    student = p.distill(student, dense)
    models = {"teacher": dense, "student": student}
    metrics = p.evaluate(models)
    p.save(student, metrics)
    return p.summary(models, metrics)
