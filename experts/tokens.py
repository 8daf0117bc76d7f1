"""`TokenBatch`: left-padded token ids, the one shape in which text reaches the generation loop and
the capture (`Expert.tokenize` makes it; nothing below `Expert` tokenizes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenBatch:
    """Left-padded token ids with their attention mask and the position ids of unpadded text."""

    input_ids: Tensor  # (batch, pos)
    attention_mask: Tensor  # (batch, pos), 0 on padding
    position_ids: Tensor  # (batch, pos)

    @classmethod
    def left_padded(cls, rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> TokenBatch:
        """Left-pad token id rows into one batch on `device`."""
        width = max(len(seq) for seq in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, seq in enumerate(rows):
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(ids.to(device), mask.to(device), positions.to(device))

    def rows(self, rows: slice) -> TokenBatch:
        """These rows, cut to their own longest prompt (left padding)."""
        mask = self.attention_mask[rows]
        width = int(mask.sum(-1).max())
        cut = slice(mask.shape[1] - width, None)
        return TokenBatch(self.input_ids[rows, cut], mask[:, cut], self.position_ids[rows, cut])

    def __len__(self) -> int:
        return self.input_ids.shape[0]
