"""The training loop on tiny random models: fine-tuning, distillation, gradual pruning, resume,
gradient accumulation, run-folder rules and bad input."""

import copy
import json

import pytest
import tiny
import torch
from torch.utils.data import DataLoader

import structprune as sp
from structprune.recovery.distill import DistillConfig, NonFiniteLossError, distill, finetune, flops_fraction
from structprune.recovery.distill.losses import logit_kd


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def loader(n=48, batch_size=8, shuffle=True, seed=0, labels=True, num_labels=3, seq_len=10):
    """A learnable toy task: the label is the second token id modulo ``num_labels``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, tiny.VOCAB, (n, seq_len), generator=g)
    mask = torch.ones(n, seq_len, dtype=torch.long)
    mask[::3, seq_len - 2 :] = 0
    rows = []
    for i in range(n):
        row = {"input_ids": ids[i], "attention_mask": mask[i]}
        if labels:
            row["labels"] = ids[i, 1] % num_labels
        rows.append(row)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle)


def quiet(**kw):
    base = dict(task="mnli", progress=False, log_every=1, learning_rate=2e-3, warmup_ratio=0.0)
    return DistillConfig(**{**base, **kw})


def weights(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # a GPU run moves models


def same(a, b, atol=0.0):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_checkpoints_need_a_run_folder():
    # a recipe's teacher.train may name save_every before the run folder is known; the loop checks it
    model = tiny.model("bert")
    before = weights(model)
    with pytest.raises(ValueError, match="save_every needs an output_dir"):
        finetune(model, loader(), None, quiet(save_every=10))
    assert same(weights(model), before)


def test_finetune_learns_and_writes_the_run_folder(tmp_path):
    model = tiny.model("bert", hidden_dropout_prob=0.0)
    before = sp.evaluation.evaluate(model, loader(shuffle=False), "mnli", progress=False)["loss"]
    cfg = quiet(output_dir=str(tmp_path / "run"), num_epochs=6, save_every=6)
    model, history = finetune(model, loader(), loader(shuffle=False), cfg)
    evals = [r for r in history if "eval_accuracy" in r]
    assert len(evals) == 6  # end of every epoch
    assert min(r["eval_loss"] for r in evals) < before - 0.05
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == history
    assert all("task" in r and "logit" not in r for r in history if "loss" in r)
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["value"] == max(r["eval_accuracy"] for r in evals)
    assert (tmp_path / "run" / "checkpoints" / "step-36" / "trainer_state.json").exists()
    assert not model.training


def test_distill_never_updates_the_teacher_and_moves_the_student(tmp_path):
    teacher = tiny.model("bert")
    teacher.train()
    t_before = weights(teacher)
    student = copy.deepcopy(teacher)
    sp.prune_(student, sp.allocate(sp.score(student, method="magnitude"), student, flops=0.5))
    s_before = weights(student)
    cfg = quiet(num_epochs=1, hidden_weight=1.0, attention_weight=1.0)
    student, history = distill(student, teacher, loader(), config=cfg)
    assert same(weights(teacher), t_before)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # left as found
    assert teacher.config._attn_implementation != "eager"  # attention KD switched it, then restored it
    assert not same(weights(student), s_before)
    assert {"task", "logit", "hidden", "attention"} <= set(history[0])


def test_distillation_pulls_the_student_to_the_teacher():
    """With logits KD only and no labels, the student's outputs approach the teacher's."""
    teacher = tiny.model("bert", initializer_range=0.2, hidden_dropout_prob=0.0)
    student = tiny.model("bert", seed=1, hidden_dropout_prob=0.0)
    batch = {k: v for k, v in next(iter(loader(shuffle=False))).items() if k != "labels"}

    def gap():
        with torch.no_grad():
            return logit_kd(student(**batch).logits, teacher(**batch).logits)  # KL of the predictions

    start = gap()
    cfg = quiet(num_epochs=8, task_weight=0.0, temperature=1.0)
    student, history = distill(student, teacher, loader(labels=False), config=cfg)
    assert gap() < 0.5 * start
    assert history[-1]["logit"] < history[0]["logit"]


def test_gradual_pruning_reaches_the_budget_with_a_dense_model():
    teacher = tiny.model("bert", hidden_dropout_prob=0.0)
    student = copy.deepcopy(teacher)
    cfg = quiet(num_epochs=3, hidden_weight=1.0, prune=dict(to=0.4, steps=3, end=0.6, batches=2))
    student, history = distill(student, teacher, loader(), loader(shuffle=False), cfg)
    events = [r for r in history if "pruned_flops" in r]
    assert len(events) == 3
    fractions = [r["pruned_flops"] for r in events]
    assert fractions == sorted(fractions, reverse=True)
    assert flops_fraction(student) <= 0.4 + 0.02
    assert student.config.structprune is not None
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    out = student(**{k: v for k, v in tiny.batch().items() if k != "labels"})
    assert out.logits.shape == (4, 3)
    # the best checkpoint is only taken once pruning is over
    best = [r for r in history if r.get("best")]
    assert best and all(r["step"] > events[-1]["step"] for r in best)


class Interrupt(Exception):
    pass


def interrupted(dl, checkpoint):
    """The same data, but the process "dies" at the next batch once ``checkpoint`` was written."""
    collate = dl.collate_fn

    def dying(rows):
        if checkpoint.exists():
            raise Interrupt
        return collate(rows)

    return DataLoader(dl.dataset, batch_size=dl.batch_size, shuffle=True, collate_fn=dying)


@pytest.mark.parametrize(
    "gradual", [False, True, "shape"], ids=["plain", "gradual-pruning", "gradual-depth-width"]
)
def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path, gradual):
    teacher = tiny.model("bert")  # dropout on: the RNG must replay too
    extra = dict(prune=dict(to=0.5, steps=3, end=0.7, batches=2)) if gradual else {}
    if gradual == "shape":
        extra["prune"].update(layers=2, hidden=24)
    cfg = dict(num_epochs=3, hidden_weight=1.0, save_every=4, load_best_at_end=False, **extra)

    full, _ = distill(
        copy.deepcopy(teacher), teacher, loader(), config=quiet(output_dir=str(tmp_path / "a"), **cfg)
    )

    run_b = quiet(output_dir=str(tmp_path / "b"), **cfg)
    with pytest.raises(Interrupt):  # killed in step 9 of 18, after the checkpoint of step 8
        distill(
            copy.deepcopy(teacher),
            teacher,
            interrupted(loader(), tmp_path / "b/checkpoints/step-8"),
            config=run_b,
        )
    assert not (tmp_path / "b" / "checkpoints" / "step-12").exists()
    resumed, history = distill(
        copy.deepcopy(teacher),
        teacher,
        loader(),
        config=quiet(output_dir=str(tmp_path / "b"), resume_from="latest", **cfg),
    )
    assert same(weights(resumed), weights(full), atol=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 18
    if gradual:
        assert resumed.config.structprune == full.config.structprune


def test_gradient_accumulation_matches_a_larger_batch():
    base = tiny.model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = dict(num_epochs=2, learning_rate=1e-3, max_grad_norm=None)
    a, _ = finetune(copy.deepcopy(base), loader(batch_size=8, shuffle=False), config=quiet(**cfg))
    b, _ = finetune(
        copy.deepcopy(base),
        loader(batch_size=4, shuffle=False),
        config=quiet(gradient_accumulation_steps=2, **cfg),
    )
    assert same(weights(a), weights(b), atol=1e-5)


def test_output_folder_holding_a_run_is_refused_unless_overwrite(tmp_path):
    cfg = quiet(output_dir=str(tmp_path / "run"), max_steps=2)
    finetune(tiny.model("bert"), loader(), config=cfg)
    with pytest.raises(ValueError, match="overwrite=True"):
        finetune(tiny.model("bert"), loader(), config=cfg)
    finetune(
        tiny.model("bert"),
        loader(),
        config=quiet(output_dir=str(tmp_path / "run"), max_steps=2, overwrite=True),
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a structprune run"):
        finetune(
            tiny.model("bert"), loader(), config=quiet(output_dir=str(tmp_path / "other"), overwrite=True)
        )
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    model = tiny.model("bert", num_labels=1)
    rows = [{"input_ids": torch.arange(3, 9), "labels": torch.tensor(0.5)} for _ in range(32)]
    rows[20]["labels"] = torch.tensor(float("nan"))  # batch 5 (step 6)
    dl = DataLoader(rows, batch_size=4)
    cfg = quiet(task="stsb", output_dir=str(tmp_path / "run"), save_every=2, learning_rate=1e-4)
    with pytest.raises(NonFiniteLossError, match="step 6.*step-4"):
        finetune(model, dl, config=cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "step-4"
    assert (ckpt / "trainer_state.json").exists()
    assert not (tmp_path / "run" / "checkpoints" / "step-6").exists()


def test_bad_inputs_are_refused_with_clear_errors():
    teacher = tiny.model("bert")
    with pytest.raises(ValueError, match="vocabulary"):
        distill(tiny.model("bert", vocab_size=120), teacher, loader(), config=quiet())
    with pytest.raises(ValueError, match="labels"):
        distill(tiny.model("bert", num_labels=2), teacher, loader(), config=quiet())
    with pytest.raises(ValueError, match="layer_map"):
        distill(tiny.model("bert", num_hidden_layers=2), teacher, loader(), config=quiet(hidden_weight=1.0))
    shallow, _ = distill(
        tiny.model("bert", num_hidden_layers=2),
        teacher,
        loader(),
        config=quiet(hidden_weight=1.0, layer_map=[0, 2], max_steps=1),
    )
    with pytest.raises(ValueError, match="no 'labels'"):
        finetune(tiny.model("bert"), loader(labels=False), config=quiet())
    with pytest.raises(ValueError, match="no 'labels'"):
        distill(tiny.model("bert"), teacher, loader(labels=False), config=quiet())
    with pytest.raises(TypeError, match="DataLoader"):
        finetune(tiny.model("bert"), [tiny.batch()], config=quiet())
    with pytest.raises(ValueError, match="same object"):
        distill(teacher, teacher, loader(), config=quiet())
    with pytest.raises(ValueError, match="task="):
        finetune(tiny.model("bert"), loader(), loader(), config=DistillConfig(progress=False))


def test_hidden_distillation_across_widths_uses_a_projection():
    teacher = tiny.model("bert")
    narrow = tiny.model("bert", hidden_size=16, num_attention_heads=4, num_hidden_layers=3)
    cfg = quiet(max_steps=2, hidden_weight=1.0, layer_map=[0, 1, 2])
    student, history = distill(narrow, teacher, loader(), config=cfg)
    assert "hidden" in history[0]
    assert student.config.hidden_size == 16  # the projection is not part of the student


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_on_gpu():
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    teacher = tiny.model("bert").cuda()
    student = copy.deepcopy(teacher)
    sp.prune_(student, sp.allocate(sp.score(student, method="magnitude"), student, flops=0.5))
    cfg = quiet(num_epochs=2, mixed_precision=precision, hidden_weight=1.0, prune=dict(to=0.3, steps=2))
    student, history = distill(student, teacher, loader(), loader(shuffle=False), config=cfg)
    assert next(student.parameters()).is_cuda
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert any("eval_accuracy" in r for r in history)


def test_callbacks_see_the_loop_and_can_stop_it():
    from structprune.recovery.distill import LoopCallback

    class StopAfterThree(LoopCallback):
        def __init__(self):
            self.logged, self.evals, self.began, self.ended = [], 0, 0, 0

        def on_train_begin(self, loop):
            self.began += 1

        def on_log(self, loop, record):
            self.logged.append(record["step"])
            if loop.rs.step >= 3:
                loop.stop = True

        def on_evaluate(self, loop, record):
            self.evals += 1
            assert "eval_accuracy" in record

        def on_train_end(self, loop):
            self.ended += 1

    cb = StopAfterThree()
    model = tiny.model("bert")
    _, history = finetune(model, loader(), loader(shuffle=False), quiet(num_epochs=4), callbacks=[cb])
    assert cb.began == cb.ended == 1 and cb.logged[:3] == [1, 2, 3]
    assert max(r["step"] for r in history) == 3  # stopped after the third optimizer step (of 24)
    with pytest.raises(TypeError, match="LoopCallback"):
        finetune(tiny.model("bert"), loader(), None, quiet(), callbacks=[object()])


TWO_STAGES = [
    {"name": "intermediate", "num_epochs": 1, "hidden_weight": 1.0, "attention_weight": 1.0},
    {"name": "prediction", "num_epochs": 1, "logit_weight": 1.0, "task_weight": 0.5, "learning_rate": 1e-3},
]


def test_stages_switch_terms_and_restart_the_schedule():
    teacher = tiny.model("bert")
    pruned = copy.deepcopy(teacher)
    sp.prune_(pruned, sp.allocate(sp.score(pruned, method="magnitude"), pruned, flops=0.5))
    cfg = quiet(stages=TWO_STAGES, warmup_ratio=0.5)
    _, history = distill(pruned, teacher, loader(), loader(shuffle=False), cfg)
    losses = [r for r in history if "loss" in r]
    first, second = [r for r in losses if r["step"] <= 6], [r for r in losses if r["step"] > 6]
    assert len(first) == len(second) == 6  # 48 examples / batch 8: 6 steps per one-epoch stage
    assert all("hidden" in r and "attention" in r and "logit" not in r for r in first)
    assert all("logit" in r and "task" in r and "hidden" not in r for r in second)
    assert [r["stage"] for r in history if "stage" in r] == ["prediction"]
    # each stage warms up from a small rate to its own peak (2e-3, then 1e-3) and decays
    assert first[0]["lr"] < first[2]["lr"] and abs(max(r["lr"] for r in second) - 1e-3) < 2e-4
    assert second[0]["lr"] < second[2]["lr"]
    # only the prediction stage may give the kept best
    assert all(r["step"] > 6 for r in history if r.get("best"))


def test_stages_sized_in_steps_override_epochs():
    teacher = tiny.model("bert")
    stages = [dict(TWO_STAGES[0], max_steps=2), dict(TWO_STAGES[1], num_epochs=5, max_steps=3)]
    _, history = distill(copy.deepcopy(teacher), teacher, loader(), config=quiet(stages=stages))
    losses = [r for r in history if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5]  # 2 + 3 steps, not 1 + 5 epochs of 6
    assert [("hidden" in r, "logit" in r) for r in losses] == [(True, False)] * 2 + [(False, True)] * 3
    with pytest.raises(ValueError, match="drop max_steps"):
        DistillConfig(stages=stages, max_steps=5)


@pytest.mark.parametrize("kill_at", [6, 8], ids=["at-the-boundary", "after-it"])
def test_resume_across_the_stage_boundary_is_exact(tmp_path, kill_at):
    teacher = tiny.model("bert")
    cfg = dict(stages=TWO_STAGES, save_every=2, load_best_at_end=False)
    full, _ = distill(
        copy.deepcopy(teacher), teacher, loader(), config=quiet(output_dir=str(tmp_path / "a"), **cfg)
    )
    with pytest.raises(Interrupt):
        distill(copy.deepcopy(teacher), teacher, interrupted(loader(), tmp_path / f"b/checkpoints/step-{kill_at}"),
                config=quiet(output_dir=str(tmp_path / "b"), **cfg))  # fmt: skip
    resumed, _ = distill(copy.deepcopy(teacher), teacher, loader(),
                         config=quiet(output_dir=str(tmp_path / "b"), resume_from="latest", **cfg))  # fmt: skip
    assert same(weights(resumed), weights(full), atol=1e-6)


@pytest.mark.parametrize(
    "stages, match",
    [
        ([], "non-empty list"),
        ([{"name": "x", "num_epochs": 1}], "every loss weight at 0"),
        ([{"name": "x", "num_epochs": 0, "logit_weight": 1}], "num_epochs must be > 0"),
        ([{"name": "x", "epochs": 1}], "Unknown stage option"),
        ([{"name": "x", "num_epochs": 1, "hidden_weight": -1}], "hidden_weight must be"),
        ([{"name": "x", "max_steps": 0, "logit_weight": 1}], "max_steps must be an integer >= 1"),
        ([{"name": "x", "max_steps": 2.5, "logit_weight": 1}], "max_steps must be an integer >= 1"),
    ],
)
def test_stage_options_are_validated(stages, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(stages=stages)


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0], ids=["logits-only", "with-hidden-states"])
def test_gradual_depth_and_width_end_exactly_at_the_target_and_reload(tmp_path, hidden_weight):
    teacher = tiny.model("bert")
    cfg = quiet(num_epochs=3, hidden_weight=hidden_weight,
                prune=dict(to=0.3, steps=3, end=0.6, batches=2, layers=2, hidden=24))  # fmt: skip
    student, history = distill(copy.deepcopy(teacher), teacher, loader(), loader(shuffle=False), cfg)
    st = sp.arch.view(student).structure
    assert len(st.layers) == 2 and st.hidden_width == 24
    assert flops_fraction(student) <= 0.3 + 0.02
    events = [r for r in history if "pruned_flops" in r]
    widths = [r["params"] for r in events]
    assert len(events) == 3 and widths == sorted(widths, reverse=True)
    sp.save_pretrained(student, tmp_path / "s", tokenizer=None, card=False)
    again = sp.from_pretrained(tmp_path / "s")
    batch = {k: v for k, v in tiny.batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, student(**batch).logits, atol=1e-6)


def test_prune_schedule_shape_options_are_validated():
    with pytest.raises(ValueError, match="prune.layers must be a positive integer"):
        DistillConfig(prune={"to": 0.3, "layers": 0})
    with pytest.raises(ValueError, match="prune.hidden must be a positive integer"):
        DistillConfig(prune={"to": 0.3, "hidden": 1.5})
