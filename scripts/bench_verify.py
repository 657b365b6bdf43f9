"""Cost of ``data.verify``: seconds per 1,000 image/mask pairs of a given size (numbers in the README).

    python scripts/bench_verify.py --size 512 512 --samples 200 --workers 0
    python scripts/bench_verify.py --size 1024 2048 --samples 40 --workers 2   # Cityscapes-sized

Writes a folder dataset of smooth JPEG images and PNG index masks (19 classes) under ``--dir`` (a
temporary folder by default), verifies it once to warm the page cache, then times a second pass.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bcd_lightning.data import FolderSegmentation
from bcd_lightning.data.verify import verify_datasets


def make_tree(root: Path, h: int, w: int, n: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "masks" / "train").mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": [f"c{i}" for i in range(19)]}))
    for i in range(n):  # smooth content: file sizes like photos, not like noise
        base = rng.integers(0, 256, (max(h // 16, 1), max(w // 16, 1), 3)).astype(np.uint8)
        Image.fromarray(base).resize((w, h), Image.BILINEAR).save(
            root / f"images/train/{i:04d}.jpg", quality=90
        )
        mask = rng.integers(0, 19, (max(h // 32, 1), max(w // 32, 1))).astype(np.uint8)
        Image.fromarray(mask).resize((w, h), Image.NEAREST).save(root / f"masks/train/{i:04d}.png")


def main(argv: Sequence[str] | None = None) -> float:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        make_tree(root, *args.size, args.samples)
        dataset = FolderSegmentation(str(root))
        verify_datasets([("train", dataset)], progress=False, num_workers=args.workers)  # warm the cache
        start = time.perf_counter()
        verify_datasets([("train", dataset)], progress=False, num_workers=args.workers)
        per_1000 = 1000 * (time.perf_counter() - start) / args.samples
    h, w = args.size
    print(f"{h}x{w}: {per_1000:.1f} s per 1,000 samples ({args.samples} timed, {args.workers} workers)")
    return per_1000


if __name__ == "__main__":
    main()
