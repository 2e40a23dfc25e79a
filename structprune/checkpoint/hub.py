"""Push a pruned model to the Hugging Face Hub: the folder save_pretrained writes, uploaded as one commit."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from torch import nn

from .io import save_pretrained

logger = logging.getLogger(__name__)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    tokenizer="auto",
    card=None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload pruned model (structprune)",
    create_pr: bool = False,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload weights, config, modeling file, tokenizer and model card of ``model`` to ``repo_id``.

    The uploaded files are exactly those :func:`structprune.save_pretrained` writes (staged in a temporary
    folder). The repository is created if needed. ``endpoint`` defaults to ``HF_ENDPOINT`` (the public Hub);
    ``token`` to the logged-in token. ``model.push_to_hub(repo_id)`` works too (without tokenizer and card).

    Example::

        info = sp.push_to_hub(model, "me/minilm-sst2-pruned50", tokenizer=tok,
                              card=sp.CardInfo(base_model="sentence-transformers/all-MiniLM-L6-v2"))
        info.commit_url
    """
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"repo_id={repo_id!r}: give 'name' or 'namespace/name'.")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="structprune-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", tokenizer=tokenizer, card=card)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        logger.info("uploading %s to %s", sorted(p.name for p in folder.iterdir()), repo.repo_id)
        return api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
