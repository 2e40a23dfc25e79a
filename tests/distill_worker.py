"""Worker of the two-process test: one distillation run (with gradual pruning) on a tiny model.

Run by ``tests/test_distill_distributed.py`` either directly (one process, global batch B) or under
``torchrun --nproc_per_node 2`` (two processes, B / 2 each); writes the final student's weights and the
eval metrics (main process).

    python tests/distill_worker.py OUT_DIR PER_PROCESS_BATCH
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402

from structprune.arch import view  # noqa: E402
from structprune.recovery.distill import DistillConfig, distill  # noqa: E402

GLOBAL_EXAMPLES = 64


def data(batch_size: int, shuffle: bool) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, tiny.VOCAB, (GLOBAL_EXAMPLES, 12), generator=g)
    rows = [{"input_ids": ids[i], "labels": ids[i, 1] % 3} for i in range(GLOBAL_EXAMPLES)]
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle)


def main(out: str, batch_size: int) -> None:
    torch.set_num_threads(1)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = tiny.model("bert", seed=0, initializer_range=0.2, **no_dropout)
    student = tiny.model("bert", seed=0, initializer_range=0.2, **no_dropout)
    cfg = DistillConfig(
        task="mnli", num_epochs=3, learning_rate=1e-3, warmup_ratio=0.1, hidden_weight=1.0,
        prune=dict(to=0.5, steps=2, end=0.5, method="fisher", batches=2),
        progress=False, log_every=1, load_best_at_end=False,
    )  # fmt: skip
    student, history = distill(student, teacher, data(batch_size, True), data(batch_size, False), cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, f"{out}/student.safetensors")
        Path(out, "history.json").write_text(json.dumps(history))
        Path(out, "structure.json").write_text(json.dumps(student.config.structprune))
        k_bias = {id(lv.k.bias) for lv in view(student).layers}
        names = [n for n, p in student.named_parameters() if id(p) in k_bias]
        Path(out, "key_biases.json").write_text(json.dumps(names))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
