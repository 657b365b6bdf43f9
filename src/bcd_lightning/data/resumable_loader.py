"""A training DataLoader that resumes exactly, also in the middle of an epoch.

Lightning 2.x restarts a plain DataLoader from the beginning of its epoch when a run resumes from a
mid-epoch checkpoint (it only warns), and never restores the shuffling RNG. This loader shuffles with
its own ``torch.Generator`` and records, per epoch, the generator state at the epoch's start and the
batches handed out since. :meth:`resume_state` turns that into "the state the *next* epoch iterator
must start from"; :meth:`restore` sets it: the same permutation (and worker base seed) is drawn again
and the batches already trained on are skipped as index lists, without loading their samples.

It keeps ``DataLoader``'s constructor, so Lightning can re-create it (DDP sampler injection,
``overfit_batches``); a re-created loader starts fresh.

The skip wraps ``DataLoader._index_sampler`` (a private attribute of torch's DataLoader). torchdata's
``StatefulDataLoader`` (torchdata 0.11 installs beside torch 2.14 here) would replace it with a public
``state_dict``, but it is a separate copy of DataLoader's iteration code, Lightning restores it through
its own loop state, and exact mid-epoch resume (``tests/test_resume.py``: bit-identical weights) has not
been shown with it; until it is, this loader stays.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """``DataLoader`` whose iteration position survives a checkpoint (see the module docstring).

    Give it a sampler with its own ``generator`` (e.g. ``RandomSampler(ds, generator=g)``) and its
    own ``generator`` (worker base seeds): then iterating never touches the global torch RNG, which
    the run's RNG checkpointing restores separately.
    """

    _pending_skip: int = 0
    _consumed: int = 0
    _epoch_start_states: list[torch.Tensor] | None = None

    @property
    def _index_sampler(self) -> Any:
        # torch reads this once per iterator (twice with workers); the skip is taken lazily, at the
        # first index request, so an iterator that is created but discarded does not use it up.
        return _SkipFirst(super()._index_sampler, self)

    def _generators(self) -> list[torch.Generator]:
        """The shuffling generator (the sampler's) and the worker-seed generator (the loader's)."""
        found = [getattr(self.sampler, "generator", None), self.generator]
        return [g for g in found if isinstance(g, torch.Generator)]

    def __iter__(self) -> Iterator[Any]:  # pyright: ignore[reportIncompatibleMethodOverride]  (a wrapper)
        # Before super().__iter__(): the iterator draws the worker base seed from self.generator.
        self._epoch_start_states = [g.get_state() for g in self._generators()]
        self._consumed = self._pending_skip
        return _Counting(super().__iter__(), self)

    def resume_state(self, epoch_length: float | None = None) -> dict[str, Any]:
        """Where the next epoch iterator must start.

        Args:
            epoch_length: batches per epoch as the trainer runs it (``limit_train_batches``);
                defaults to ``len(self)``. When the current epoch is complete, the next one starts
                from the generators' current states; otherwise the current epoch is replayed from
                its start states, skipping the batches already consumed.
        """
        length = len(self) if epoch_length is None else epoch_length
        starts = self._epoch_start_states
        mid_epoch = starts is not None and 0 < self._consumed < length
        if starts is not None and mid_epoch:
            states = [s.clone() for s in starts]
        else:
            states = [g.get_state() for g in self._generators()]
        return {"generators": states, "skip": self._consumed if mid_epoch else 0}

    def restore(self, state: dict[str, Any]) -> None:
        """Set the state the next ``iter(self)`` starts from (from :meth:`resume_state`)."""
        generators, states = self._generators(), list(state.get("generators") or [])
        if len(states) == len(generators):  # a loader built differently keeps its fresh seeds
            for generator, saved in zip(generators, states, strict=True):
                generator.set_state(saved)
        self._pending_skip = int(state.get("skip", 0))

    def _take_skip(self) -> int:
        skip, self._pending_skip = self._pending_skip, 0
        return skip


class _SkipFirst:
    """The loader's batch sampler, minus the first ``skip`` batches of the next epoch."""

    def __init__(self, inner: Any, loader: ResumableDataLoader) -> None:
        self.inner, self.loader = inner, loader

    def __len__(self) -> int:
        return len(self.inner)  # the full epoch: Lightning counts resumed batches on top of it

    def __iter__(self) -> Iterator[Any]:
        skip = self.loader._take_skip()  # runs at the first next(), see ResumableDataLoader
        yield from itertools.islice(self.inner, skip, None)


class _Counting:
    """Counts the batches the training loop actually received (not those prefetched by workers)."""

    def __init__(self, inner: Iterator[Any], loader: ResumableDataLoader) -> None:
        self.inner, self.loader = inner, loader

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        self.loader._consumed += 1
        return batch

    def __len__(self) -> int:
        return len(cast(Sized, self.inner))  # a DataLoader iterator has a length
