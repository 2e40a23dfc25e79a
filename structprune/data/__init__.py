"""GLUE data: the task table, loading (local folder, Hub, or your own files), batching and metrics.

Example::

    from structprune.data import get_task, load_split, make_dataloader, compute_metrics

    task = get_task("sst2")
    loader = make_dataloader(load_split(task, "validation"), tokenizer, task, batch_size=32, max_length=64)
"""

from .batching import BucketBatchSampler, TokenizedDataset, make_dataloader, subset, tokenize
from .loading import HUB_DATASET, DataNotFoundError, default_data_dir, load_files, load_split
from .metrics import compute_metrics, predictions_from_logits
from .tasks import GLUE_TASKS, TaskInfo, get_task, glue_task_names

__all__ = [
    "GLUE_TASKS",
    "HUB_DATASET",
    "BucketBatchSampler",
    "DataNotFoundError",
    "TaskInfo",
    "TokenizedDataset",
    "compute_metrics",
    "default_data_dir",
    "get_task",
    "glue_task_names",
    "load_files",
    "load_split",
    "make_dataloader",
    "predictions_from_logits",
    "subset",
    "tokenize",
]
