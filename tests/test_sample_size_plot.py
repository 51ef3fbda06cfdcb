"""The ``sample_size_bias`` plot: FID and KID against 1/n from ``fid_inf`` rows' curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import decode_blob, encode_blob, load_results
from harness.store import ResultStore
from harness.testing import PlotContract
from plugins.plots import sample_size
from plugins.plots.sample_size import FILE, SampleSizeBias, mean_curve

PNG = b"\x89PNG\r\n\x1a\n"
#: variant -> (role, size factor, method, rate, non-zero parameters, FID-infinity, FID's 1/n slope)
VARIANTS = {
    "teacher": ("reference", None, "none", 0.0, 1000, 8.0, 900.0),
    "magnitude 0.5": ("pruned", None, "magnitude", 0.5, 500, 12.0, 1100.0),
    "magnitude 0.9": ("pruned", None, "magnitude", 0.9, 100, 30.0, 1500.0),
    "student 0.5": ("student", 0.5, "none", 0.0, 260, 15.0, 1000.0),
}


def curve(fid_inf: float, slope: float, num_samples: int, seed: int) -> tuple[np.ndarray, float, float]:
    """A (4, K) fid_inf blob with FID = fid_inf + slope / n + noise, KID ~ 0.002 ± 0.001, and
    the stored value and standard error computed as the metric does (OLS in 1/n)."""
    rng = np.random.default_rng(seed)
    n = np.linspace(num_samples // 2, num_samples, 8).astype(np.int64).astype(float)
    fid = fid_inf + slope / n + rng.normal(0, 0.3, len(n))
    kid = 0.002 + rng.normal(0, 0.0005, len(n))
    x = 1 / n
    (b, a), cov = np.polyfit(x, fid, 1, cov="unscaled")
    resid = fid - a - b * x
    se = math.sqrt(cov[1, 1] * (resid ** 2).sum() / (len(n) - 2))
    return np.stack([n, fid, kid, np.full(len(n), 0.001)]), float(a), se


def fid_inf_results(root: Path, cfgs: tuple[float, ...] = (1.0, 7.5), seeds: tuple[int, ...] = (0, 1),
                    num_samples: int = 256) -> pd.DataFrame:
    """Stored results of four variants with fid_inf rows holding real curves, plus a plain
    metric and a sample grid (another blob), loaded back."""
    run = ResultStore(root, "bias").new_run({})
    for name, (role, size, method, rate, nonzero, fid_inf, slope) in VARIANTS.items():
        for cfg in cfgs:
            for seed in seeds:
                blob, value, se = curve(fid_inf + cfg, slope, num_samples, seed + 10 * int(nonzero))
                base = {"role": role, "size_factor": size, "pruning_method": method, "pruning_rate": rate,
                        "cfg_scale": cfg, "seed": seed, "sampler": "ddim", "steps": 10, "num_samples": num_samples,
                        "num_params": 1000 if size is None else 260, "nonzero_params": nonzero, "status": "ok"}
                run.write_cell(f"{name.replace(' ', '-')}-{cfg}-{seed}", [
                    {**base, "metric": "fid_inf", "value": value, "value_sd": se, "blob": encode_blob(blob),
                     "higher_is_better": False},
                    {**base, "metric": "fid", "value": blob[1, -1], "higher_is_better": False},
                    {**base, "metric": "sample_grid", "value": 4.0, "blob": encode_blob(np.zeros((4, 1, 2, 2)))},
                ])
    return load_results(root)


class TestSampleSizeBiasContract(PlotContract):
    plot_cls = SampleSizeBias


def test_the_figure_is_written_with_the_teacher_and_the_most_compressed_variant(tmp_path, monkeypatch):
    df = fid_inf_results(tmp_path / "r")
    seen = {}
    save = sample_size.save_figure

    def spy(fig, path):  # what the figure says, before it is saved
        seen["title"] = fig.get_suptitle()
        seen["footnote"] = fig.get_supxlabel()
        seen["axes"] = [(ax.get_title(), ax.get_ylabel(), list(ax.lines), [t.get_text() for t in ax.texts])
                        for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(sample_size, "save_figure", spy)
    paths = SampleSizeBias().draw(df, tmp_path / "out")
    assert paths == [tmp_path / "out" / FILE]
    assert paths[0].read_bytes()[:8] == PNG and paths[0].stat().st_size > 20_000
    assert seen["title"].endswith("teacher vs magnitude rate 0.9")  # 100 non-zero parameters: the fewest
    assert "Compressed variant: magnitude rate 0.9" in seen["footnote"]
    assert "teacher: mean over seeds 0, 1" in " ".join(seen["footnote"].split())
    # a row of two panels per CFG scale: FID then KID
    assert [(t, y) for t, y, _l, _x in seen["axes"]] == [
        ("CFG 1: FID, linear in 1/n, extrapolated to 0", "FID"), ("CFG 1: KID ± 1 s.d. over subsets", "KID"),
        ("CFG 7.5: FID, linear in 1/n, extrapolated to 0", "FID"), ("CFG 7.5: KID ± 1 s.d. over subsets", "KID")]
    # the fitted line of the seeds' mean curve meets 1/n = 0 at the mean stored FID-infinity
    stored = df[(df.metric == "fid_inf") & (df.role == "reference") & (df.cfg_scale == 1.0)]
    _t, _y, lines, texts = seen["axes"][0]
    fits = [line for line in lines if len(line.get_xdata()) == 2 and line.get_xdata()[0] == 0.0]
    assert len(fits) == 2  # teacher and magnitude 0.9
    assert fits[0].get_ydata()[0] == pytest.approx(stored["value"].mean(), abs=1e-9)
    rms = math.sqrt((stored["value_sd"] ** 2).mean())
    assert f"{stored['value'].mean():.3g} ± {rms:.2g}" in texts
    # the run's own n is marked
    assert any(line.get_xdata()[0] == pytest.approx(1 / 256) and line.get_linestyle() == "--" for line in lines)
    assert "this run: n = 256 " in texts


def test_a_single_cfg_scale_and_seed_draws_one_row(tmp_path):
    df = fid_inf_results(tmp_path / "r", cfgs=(3.0,), seeds=(0,))
    (path,) = SampleSizeBias().draw(df, tmp_path / "out")
    assert path.read_bytes()[:8] == PNG


def test_seeds_are_averaged_only_when_their_subset_sizes_agree(tmp_path):
    df = fid_inf_results(tmp_path / "r", cfgs=(1.0,))
    rows = df[(df.metric == "fid_inf") & (df.role == "reference")].reset_index(drop=True)
    c = mean_curve(rows)
    arrays = [decode_blob(b) for b in rows.sort_values("seed")["blob"]]
    assert c.averaged and c.seeds == [0, 1] and c.num_samples == 256
    np.testing.assert_allclose(c.fid, (arrays[0][1] + arrays[1][1]) / 2)
    assert c.fid_inf == pytest.approx(rows["value"].mean())
    assert c.fid_inf_se == pytest.approx(math.sqrt((rows["value_sd"] ** 2).mean()))
    # seed 1 at another n: the first seed alone
    other, _v, _se = curve(10.0, 900.0, 128, 1)
    rows.loc[rows.seed == 1, "blob"] = encode_blob(other)
    c = mean_curve(rows)
    assert not c.averaged and c.seeds == [0]
    np.testing.assert_allclose(c.fid, arrays[0][1])


def test_unreadable_blobs_are_skipped_and_no_fid_inf_draws_nothing(tmp_path):
    df = fid_inf_results(tmp_path / "r", cfgs=(1.0,), seeds=(0,))
    assert SampleSizeBias().draw(df[df.metric != "fid_inf"], tmp_path / "a") == []
    bad = df.copy()
    fid_inf = bad.metric == "fid_inf"
    bad.loc[fid_inf, "blob"] = [b"not npy", encode_blob(np.ones((3, 5))), encode_blob(np.ones(4)),
                                encode_blob(np.zeros((4, 6)))]  # the last has n = 0
    assert SampleSizeBias().draw(bad, tmp_path / "b") == []


def test_the_contract_frame_draws_the_figure(tmp_path):
    """The contract's realistic frame holds fid_inf rows (reference, magnitude): the check draws, not skips."""
    from harness.testing.checks import realistic_frame

    (path,) = SampleSizeBias().draw(realistic_frame(), tmp_path)
    assert path == tmp_path / FILE and path.read_bytes()[:8] == PNG
