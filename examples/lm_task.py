"""A causal language-modelling TASK for ``gdp-graph prune``: token windows of a text file,
next-token cross-entropy, perplexity = exp(the evaluation loss).

    gdp-graph prune examples/smollm2.py:model --task examples/smollm2.py:task \\
        --policy llm --method activation --steps 30 --distill --out runs/smollm2-0.7

:func:`lm_task` builds the Task from any tokenizer (or token-id tensors); ``examples/smollm2.py``
uses it with SmolLM2-135M and Shakespeare.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from gdp_graph.recipes.task import Task


def windows(ids: torch.Tensor, length: int, count: Optional[int] = None) -> torch.Tensor:
    """Non-overlapping windows of ``length`` tokens from the start of ``ids`` (at most ``count``)."""
    n = ids.numel() // length
    n = n if count is None else min(n, count)
    return ids[: n * length].reshape(n, length)


def next_token_loss(output: Any, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every position's prediction of the next token of ``batch``."""
    logits = output.logits if hasattr(output, "logits") else output
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def lm_inputs(batch: torch.Tensor) -> dict:
    """The model's keyword inputs: the ids, no KV cache (training and scoring need none)."""
    return {"input_ids": batch, "use_cache": False}


def lm_task(train_ids: torch.Tensor, valid_ids: torch.Tensor, *, length: int = 256, batch_size: int = 2,
            eval_windows: int = 24, seed: int = 0, name: str = "lm", tokenizer: Any = None) -> Task:
    """Training batches: shuffled windows of ``train_ids``; evaluation: the first
    ``eval_windows`` windows of ``valid_ids`` (the mean loss; perplexity is its exp). Both in
    batches of ``batch_size``. ``tokenizer`` (the one that made the ids) goes into the pruned
    model's ``DIR/hf`` folder."""
    train = TensorDataset(windows(train_ids, length))
    valid = TensorDataset(windows(valid_ids, length, eval_windows))
    g = torch.Generator().manual_seed(seed)
    first = lambda items: torch.stack([x for (x,) in items])  # noqa: E731 - a batch is the id tensor itself
    return Task(train_loader=DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=g,
                                        collate_fn=first),
                eval_loader=DataLoader(valid, batch_size=batch_size, drop_last=True, collate_fn=first),
                loss=next_token_loss, inputs=lm_inputs, name=name, tokenizer=tokenizer)


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, *, length: int = 256, count: int = 24,
               batch_size: int = 2) -> float:
    """exp(mean next-token loss) over the first ``count`` windows of ``length`` tokens of ``ids``."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for chunk in windows(ids, length, count).split(batch_size):
            total += float(next_token_loss(model(**lm_inputs(chunk)), chunk)) * len(chunk)
            n += len(chunk)
    finally:
        model.train(was)
    return float(torch.exp(torch.tensor(total / max(n, 1))))
