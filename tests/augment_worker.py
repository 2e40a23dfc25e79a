"""Worker of the two-process augmentation test: ``augment_dataset`` under an Accelerator.

Run by ``tests/test_augment.py`` directly (one process) or under ``torchrun --nproc_per_node 2``; each
process writes the example indices it generated variants for (``rank<k>.json``), the main process the
merged rows (``rows.json``).

    python tests/augment_worker.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402

from structprune.recovery.distill import augment  # noqa: E402

SENTENCES = ["the movie was good", "a very boring plot", "it is not fun", "great actors and film",
             "the film was awful", "a bad movie", "it was very fun", "the plot is great", "boring actors"]  # fmt: skip


def main(out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=True)
    seen: list[int] = []
    generate = augment.generate

    def recording(texts, cfg, **kw):  # the indices this process generates variants for
        seen.extend(kw.get("indices") or range(len(texts)))
        return generate(texts, cfg, **kw)

    augment.generate = recording
    torch.manual_seed(0)
    teacher, tok = tiny.model("bert", num_labels=2), tiny.tokenizer()
    data = datasets.Dataset.from_list([{"sentence": s, "label": i % 2} for i, s in enumerate(SENTENCES)])
    cfg = augment.AugmentConfig(multiplier=3, seed=0, batch_size=4)
    rows = augment.augment_dataset(data, "sst2", tok, teacher, cfg, cache_dir=out_dir / "cache",
                                   accelerator=accelerator)  # fmt: skip
    (out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps(sorted(seen)))
    if accelerator.is_main_process:
        (out_dir / "rows.json").write_text(json.dumps(rows.to_list()))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
