"""The folder dataset's optional test split: images/test + masks/test or test.txt; without it, val."""

from __future__ import annotations

from pathlib import Path

import fixture_trees as ft
import numpy as np
from test_folder_dataset import folder_dm, index_tree, palette_tree


def test_test_subfolder_is_the_test_split(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    index_tree(root)
    mask = ft.mask_with_values([0, 2], seed=42)
    ft.save_rgb(root / "images" / "test" / "t.png", ft.random_image(9))
    ft.save_index(root / "masks" / "test" / "t.png", mask)
    dm = folder_dm(root)
    assert dm.test_split == "test"
    assert len(dm.test_set) == 1 and dm.test_set is not dm.val_set
    np.testing.assert_array_equal(dm.test_set[0]["mask"].numpy(), mask)


def test_test_list_file_is_the_test_split(tmp_path: Path) -> None:
    root = tmp_path / "pal"
    palette_tree(root)
    (root / "test.txt").write_text("x2\n")
    dm = folder_dm(root)
    assert dm.test_split == "test" and len(dm.test_set) == 1


def test_without_a_test_split_testing_uses_val(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    index_tree(root)
    dm = folder_dm(root)
    assert dm.test_split == "val" and dm.test_set is dm.val_set
