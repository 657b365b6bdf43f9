"""scripts/compare.py: methods from conf/distill, the paired design, the statistics page, the smoke run."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats

from support import load_script

compare = load_script("compare")

CLASSES = ("background", "blob")
# (method, seed) -> mIoU; the other metrics are derived from it so each has a known paired difference.
MIOU = {
    ("none", 0): 0.60,
    ("none", 1): 0.64,
    ("none", 2): 0.62,
    ("kd", 0): 0.61,
    ("kd", 1): 0.66,
    ("kd", 2): 0.62,
    ("bcd", 0): 0.70,
    ("bcd", 1): 0.73,
    ("bcd", 2): 0.71,
    ("bcd-kd", 0): 0.69,
    ("bcd-kd", 1): 0.70,
    ("bcd-kd", 2): 0.70,
}


def fabricate(root: Path) -> list[dict]:
    runs = []
    for (method, seed), miou in MIOU.items():
        metrics = {
            "test/mIoU": miou,
            "test/boundary_iou": miou / 2,
            "test/boundary_f": miou - 0.1,
            "test/connectivity_err": 10 * (1 - miou),
            "train/step_time_median_s": 0.1,
            "test/IoU/background": 0.9,
            "test/IoU/blob": 2 * miou - 0.9,
        }
        run_dir = root / method / f"seed{seed}"
        run_dir.mkdir(parents=True)
        record = {"method": method, "seed": seed, "metrics": metrics}
        (run_dir / "metrics.json").write_text(json.dumps(record))
        runs.append(record)
    return runs


def test_methods_are_the_presets_of_conf_distill(tmp_path: Path) -> None:
    for name in ("kd", "bcd", "none", "zeta", "alpha"):
        (tmp_path / f"{name}.yaml").write_text("name: x\nlosses: {}\n")
    assert compare.preset_methods(tmp_path) == ["none", "alpha", "kd", "zeta", "bcd"]
    shipped = compare.preset_methods()
    assert {"none", "kd", "cwd", "skd", "ifvd", "cirkd", "dist", "boundary", "context", "bcd"} <= set(shipped)
    assert not hasattr(compare, "METHODS")  # no hard-coded list: a new preset is a new method


def test_ablations_drop_one_bcd_term_each() -> None:
    terms = compare.focus_terms()
    assert set(terms) == {"kd", "boundary", "bkd", "context"}
    specs = compare.method_specs(["none"], ["bkd"])
    assert specs[0].overrides == ("distill=none",)
    assert specs[1].name == "bcd-bkd"
    assert specs[1].overrides == ("distill=bcd", "~distill.losses.bkd", "distill.name=bcd-bkd")


def test_plan_jobs_are_seed_major_and_skip_finished_runs(tmp_path: Path) -> None:
    specs = compare.method_specs(["none", "kd"], [])
    (tmp_path / "kd" / "seed0").mkdir(parents=True)
    (tmp_path / "kd" / "seed0" / "metrics.json").write_text("{}")
    jobs = compare.plan_jobs(specs, [0, 1], tmp_path, ["threads=1"])
    assert [(j.name, Path(j.run_dir).name) for j in jobs] == [
        ("none", "seed0"),
        ("none", "seed1"),
        ("kd", "seed1"),
    ]
    job = jobs[2]
    assert "distill=kd" in job.overrides and "seed=1" in job.overrides
    assert job.run_dir == str(tmp_path / "kd" / "seed1") and job.overrides[-1] == "threads=1"


def test_paired_statistics_and_page_from_fabricated_runs(tmp_path: Path) -> None:
    runs = fabricate(tmp_path / "bench")
    bench = compare.Benchmark("embedded", "fabricated", ("data.x=1",))
    teacher = {"method": "teacher", "seed": 0, "metrics": {"test/mIoU": 0.80}}
    report = compare.BenchmarkReport(bench, runs, teacher, ["none", "kd", "bcd"], ["bcd-kd"], [0, 1, 2], 60.0)
    compare.write_outputs([report], tmp_path / "docs", "CMD --x", "2030-01-02 03:04", 120.0)

    rows = list(csv.DictReader(io.StringIO((tmp_path / "docs" / "results.csv").read_text())))
    paired = {(r["method"], r["reference"], r["metric"]): r for r in rows if r["kind"] == "paired"}
    # Independent numbers: scipy's paired t-test and a hand-written Holm over the two methods.
    none = [MIOU["none", s] for s in range(3)]
    ps = {}
    for m in ("kd", "bcd"):
        vals = [MIOU[m, s] for s in range(3)]
        row = paired[(m, "none", "test/mIoU")]
        diffs = np.array(vals) - np.array(none)
        half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
        assert float(row["mean"]) == pytest.approx(diffs.mean())
        assert float(row["ci_low"]) == pytest.approx(diffs.mean() - half)
        assert float(row["p"]) == pytest.approx(stats.ttest_rel(vals, none).pvalue, rel=1e-7)
        ps[m] = stats.ttest_rel(vals, none).pvalue
    lo, hi = sorted(ps.values())
    holm = {m: max(2 * lo, hi) if p == hi else 2 * lo for m, p in ps.items()}
    for m in ("kd", "bcd"):
        assert float(paired[(m, "none", "test/mIoU")]["p_holm"]) == pytest.approx(min(1.0, holm[m]), rel=1e-7)
    # Per class: blob IoU = 2 mIoU - 0.9, so its difference is twice the mIoU difference.
    blob = paired[("bcd", "none", "test/IoU/blob")]
    assert float(blob["mean"]) == pytest.approx(2 * float(paired[("bcd", "none", "test/mIoU")]["mean"]))
    ablation = next(r for r in rows if r["kind"] == "ablation")
    assert ablation["reference"] == "bcd-kd"
    assert float(ablation["mean"]) == pytest.approx(np.mean([0.01, 0.03, 0.01]))

    doc = (tmp_path / "docs" / "results.md").read_text()
    assert "CMD --x" in doc and "Total wall time: **2.0 min**" in doc
    assert "**test** split" in doc
    sigma = 100 * np.std(none, ddof=1)
    assert f"σ over seeds: **{sigma:.2f} mIoU**" in doc and "missed by" in doc
    assert f"gap: **{100 * (0.80 - np.mean(none)):.2f} mIoU**" in doc
    assert "| bcd | none | 3 | +9.33 |" in doc  # bcd − none = 0.0933 (significant: p ~ 0.001)
    assert "**better**" in doc and "n.s." in doc
    assert "Ablation" in doc and "| bcd | bcd-kd |" in doc
    assert "No method is tuned" in doc.replace("no method", "No method")
    assert (tmp_path / "docs" / "results.png").stat().st_size > 0


def test_two_methods_with_one_seed_start_from_the_same_student_and_batches(
    make_cfg, teacher_state_file: Path
) -> None:
    """The paired design: what `train` does before fitting (seed, datamodule, module) gives, for a given
    seed, identical student weights and the same training batches whatever the method."""
    from bcd_lightning.builders import build_datamodule, build_module

    def start(distill: str, seed: int) -> tuple[dict, list[torch.Tensor]]:
        cfg = make_cfg(
            "experiment=embedded/baseline",
            f"distill={distill}",
            f"seed={seed}",
            f"teacher.ckpt={teacher_state_file}",
        )
        L.seed_everything(cfg.seed, workers=True)  # as bcd_lightning.train.train
        datamodule = build_datamodule(cfg)
        module = build_module(cfg, datamodule)
        datamodule.setup("fit")
        batches = [b["index"].clone() for b in datamodule.train_dataloader()]
        return {k: v.clone() for k, v in module.model.state_dict().items()}, batches

    weights_none, batches_none = start("none", 3)
    for method in ("cwd", "bcd"):
        weights, batches = start(method, 3)
        assert weights.keys() == weights_none.keys()
        assert all(torch.equal(weights[k], weights_none[k]) for k in weights)
        assert all(torch.equal(a, b) for a, b in zip(batches, batches_none, strict=True))
    other_weights, other_batches = start("none", 4)
    assert any(not torch.equal(other_weights[k], weights_none[k]) for k in other_weights)
    assert any(not torch.equal(a, b) for a, b in zip(other_batches, batches_none, strict=True))


@pytest.mark.slow
def test_quick_mode_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCD_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["compare.py"])
    out = tmp_path / "page"
    code = compare.main(
        [
            "--quick",
            "--benchmarks",
            "embedded",
            "--out-dir",
            str(out),
            "--root",
            str(tmp_path / "runs"),
            "threads=1",
        ]
    )
    assert code == 0
    doc = (out / "results.md").read_text()
    assert "| kd | none | 2 |" in doc
    assert len(list((tmp_path / "runs").rglob("metrics.json"))) == 4


def test_own_data_is_one_benchmark_whose_page_names_the_split(tmp_path: Path) -> None:
    assert compare._custom_data(["data=folder", "data.root=x"]) and not compare._custom_data(["seed=1"])
    root = tmp_path / "my_data"
    (root / "images" / "val").mkdir(parents=True)
    assert compare.test_split(["data=folder", f"data.root={root}"]).startswith("val")
    (root / "test.txt").write_text("a\n")
    assert compare.test_split(["data=folder", f"data.root={root}"]) == "test"
