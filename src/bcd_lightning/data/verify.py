"""``data.verify``: read every sample of every split once before fitting and report *all* bad files.

A corrupt image, a mask of the wrong size or a label value outside the class set would otherwise
stop a run when the loader reaches it, possibly hours in, and only the first one. Verification loads
each sample without its transform (the dataset's own checks: readable, image and mask sizes agree, mask
values or colours in the label set; see :mod:`bcd_lightning.data.files`) with a progress bar, collects
every :class:`DatasetError`, and raises one error listing the count and the first few. Datasets that
are not file pairs (the embedded synthetic data) have nothing to verify.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from torch.utils.data import DataLoader, Dataset

from bcd_lightning.data.files import DatasetError, PairedSegmentation

#: How many bad files the error message lists (all are counted).
SHOWN = 5


def file_datasets(splits: Iterable[tuple[str, Dataset | None]]) -> list[tuple[str, PairedSegmentation]]:
    """The splits backed by image/mask files, each once (test defaults to val: the same object)."""
    seen: set[int] = set()
    out = []
    for name, dataset in splits:
        base = getattr(dataset, "dataset", dataset)  # unwrap WithIndex-like wrappers
        if isinstance(base, PairedSegmentation) and id(base) not in seen:
            seen.add(id(base))
            out.append((name, base))
    return out


class _Checked(Dataset):
    """Sample ``i`` -> ``None`` when it loads, else its error message (loaded in DataLoader workers)."""

    def __init__(self, name: str, dataset: PairedSegmentation) -> None:
        self.name, self.dataset = name, dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> str | None:
        try:
            self.dataset.load(index)
        except DatasetError as err:
            return f"[{self.name}] {' '.join(str(err).split())}"
        return None


def verify_datasets(
    splits: Sequence[tuple[str, Dataset | None]], progress: bool = True, num_workers: int = 0
) -> dict[str, float]:
    """Check every sample of every file-backed split (``num_workers`` processes, like the loaders);
    raise one :class:`DatasetError` listing all bad files. Returns ``{"samples": n, "seconds": t}``."""
    datasets = file_datasets(splits)
    total = sum(len(d) for _, d in datasets)
    if not total:
        return {"samples": 0, "seconds": 0.0}
    problems: list[str] = []
    start = time.perf_counter()
    with _progress(total, progress) as advance:
        for name, dataset in datasets:
            loader = DataLoader(
                _Checked(name, dataset), batch_size=None, num_workers=num_workers, collate_fn=lambda x: x
            )
            for problem in loader:
                if problem is not None:
                    problems.append(problem)
                advance()
    seconds = time.perf_counter() - start
    if problems:
        shown = "; ".join(problems[:SHOWN]) + (
            f"; ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        )
        raise DatasetError(
            f"data.verify: {len(problems)} of {total} samples are bad: {shown}. Fix or remove these files "
            "(data.verify=false skips this check)."
        )
    return {"samples": float(total), "seconds": seconds}


class _progress:
    """A Rich progress bar when asked (and stdout is a terminal or a log), else nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("data.verify"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        bar = self._bar
        bar.start()
        task = bar.add_task("verify", total=self.total)
        return lambda: bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
