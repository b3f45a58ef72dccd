"""The order in which training examples are drawn: reshuffled every epoch, batches may cross epochs."""

from __future__ import annotations

import torch


class BatchStream:
    """Batches of positions 0..n-1 from a seeded stream of permutations; checkpointable with state_dict()."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = generator
        self.order = torch.randperm(n, generator=generator)
        self.position = 0

    def next(self) -> torch.Tensor:
        """The next batch of positions (batch_size of them, or n when there are fewer examples)."""
        parts = []
        needed = self.batch_size
        while needed > 0:
            if self.position == self.n:
                self.order = torch.randperm(self.n, generator=self.generator)
                self.position = 0
            take = min(needed, self.n - self.position)
            parts.append(self.order[self.position : self.position + take])
            self.position += take
            needed -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        """The current permutation and position (the generator's state is checkpointed by its owner)."""
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, saved: dict) -> None:
        """Continue from a state_dict()."""
        self.order = saved["order"].clone()
        self.position = int(saved["position"])
