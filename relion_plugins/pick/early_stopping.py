"""Early stopping on a validation score, shared by the trainers of the 2D pickers."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable


class BestEpoch:
    """Keeps the weights of the best validated epoch and says when ``patience`` epochs brought no gain.

    Without validation every epoch counts as the best (training runs to its last epoch).
    """

    def __init__(self, model, patience: int, validated: bool) -> None:
        self.patience = patience
        self.validated = validated
        self.state = copy.deepcopy(model.state_dict())
        self.epoch = 0
        self._score = -math.inf
        self._stale = 0

    @property
    def score(self) -> float:
        """Best validation score, NaN without validation."""
        return self._score if self.validated else float("nan")

    def end_epoch(self, model, epoch: int, score: float | None) -> bool:
        """Record an epoch's score (None without validation); True when training should stop."""
        if not self.validated:
            self.epoch, self.state = epoch, model.state_dict()
            return False
        if score > self._score + 1e-4:
            self._score, self.epoch, self._stale = score, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self._stale += 1
        return self._stale >= self.patience

    def restart_patience(self, model) -> None:
        """Go back to the best weights and count patience afresh (after lowering the learning rate)."""
        if self.validated:
            model.load_state_dict(self.state)
        self._stale = 0

    def close_epoch(
        self,
        model,
        epoch: int,
        sums: dict[str, float],
        steps: int,
        started: float,
        validate: Callable | None,
    ) -> tuple[dict, bool]:
        """The epoch's history record (``sums`` averaged over ``steps``, the epoch, seconds since ``started``
        and, with ``validate``, the validation score) and whether training should stop."""
        record = {k: v / steps for k, v in sums.items()}
        record["epoch"] = epoch
        record["seconds"] = time.monotonic() - started
        score = None
        if validate is not None:
            score = float(validate(model))
            record["validation"] = score
        return record, self.end_epoch(model, epoch, score)
