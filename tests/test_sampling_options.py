"""Sampling options of the GPU path, run on CPU: dtype (autocast), torch.compile, OOM back-off."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import harness
from harness import runner
from harness.base import Conditions
from harness.samples import sample_with_backoff, sampling_mode
from plugins.models.synthetic import SyntheticModel
from plugins.models.unet import UNetFamily

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"
ONE_CELL = ["matrix.pruning_method=[\"none\"]", "matrix.cfg_scale=[1.0]", "matrix.seed=[0]", "sampling.num_samples=8"]


def tiny_unet():
    torch.manual_seed(0)
    ds = SimpleNamespace(name="digits", num_classes=10, image_size=16, channels=1)
    return UNetFamily(base_channels=8, channel_mults=(1, 2), num_heads=2, norm_groups=4).build(ds)


def draw(model, **kw):
    noise = torch.randn((4, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    cond = Conditions(labels=torch.arange(4))
    return model.sample(noise, cond, cfg_scale=2.0, sampler="ddim", steps=4, **kw).images


class OOMAbove:
    """Wraps a model: ``sample`` raises an out-of-memory error above ``limit`` images per batch."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.calls = model, limit, []

    def sample(self, noise, conditions, *, batch_size, **kw):
        self.calls.append(batch_size)
        if batch_size > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model.sample(noise, conditions, batch_size=batch_size, **kw)


def test_out_of_memory_halves_the_batch_and_draws_the_same_samples() -> None:
    model = tiny_unet()
    noise = torch.randn((6, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    cond = Conditions(labels=torch.arange(6))
    kw = dict(cfg_scale=2.0, sampler="ddim", steps=3)
    wrapped = OOMAbove(model, limit=2)
    out, used = sample_with_backoff(wrapped, noise, cond, 8, **kw)
    assert used == 2 and wrapped.calls == [8, 4, 2]
    assert torch.allclose(out.images, model.sample(noise, cond, batch_size=6, **kw).images, atol=1e-3)  # kernels differ per batch size
    with pytest.raises(torch.OutOfMemoryError):  # nothing left to halve
        sample_with_backoff(OOMAbove(model, limit=0), noise, cond, 4, **kw)


def test_other_errors_are_not_retried() -> None:
    class Broken:
        calls = 0

        def sample(self, *a, **kw):
            Broken.calls += 1
            raise ValueError("bad conditions")

    with pytest.raises(ValueError, match="bad conditions"):
        sample_with_backoff(Broken(), torch.zeros(2, 1, 4, 4), Conditions(labels=torch.zeros(2)), 8)
    assert Broken.calls == 1


def test_a_run_backs_off_and_records_the_batch_size_used(tmp_path: Path, monkeypatch) -> None:
    original = SyntheticModel.sample

    def limited(self, noise, conditions, *, batch_size=256, **kw):
        if batch_size > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return original(self, noise, conditions, batch_size=batch_size, **kw)

    monkeypatch.setattr(SyntheticModel, "sample", limited)
    summary = runner.run(SYNTHETIC, [*ONE_CELL, "sampling.batch_size=8"], results_dir=str(tmp_path), stream=io.StringIO(),
                         interactive=False)
    assert summary.error == 0, summary.errors
    metas = [p for p in tmp_path.rglob("*.json") if "samples" in p.parts]
    used = {__import__("json").loads(p.read_text()).get("batch_size_used") for p in metas}
    assert 2 in used
    df = harness.load_results(tmp_path)
    assert set(df["status"]) == {"ok"}


def test_bf16_autocast_changes_numerics_slightly_and_the_weights_not_at_all() -> None:
    model = tiny_unet()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    fp32 = draw(model)
    with sampling_mode(model, torch.device("cpu"), "bf16", "none"):
        bf16 = draw(model)
    assert not torch.equal(fp32, bf16)
    assert float((fp32 - bf16).abs().mean()) < 0.05
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in model.net.state_dict().items())


def test_dtype_is_part_of_the_cell_id_and_fp32_ids_are_unchanged(tmp_path: Path) -> None:
    from harness.config import load_matrix
    from harness.planner import plan_cells

    ids = {}
    for extra in ([], ["sampling.dtype=\"fp32\""], ["sampling.dtype=\"bf16\""], ["sampling.compile=\"default\""]):
        cfg = load_matrix(SYNTHETIC, [*ONE_CELL, *extra])
        cells = plan_cells(cfg)
        ids[tuple(extra)] = ({c.cell_id for c in cells}, {c.content_key for c in cells})
    default = ids[()]
    assert ids[("sampling.dtype=\"fp32\"",)] == default
    assert ids[("sampling.dtype=\"bf16\"",)][0].isdisjoint(default[0])  # other numerics: other cells
    compiled = ids[("sampling.compile=\"default\"",)]
    assert compiled[0] == default[0] and compiled[1] != default[1]  # same cells, re-timed


def test_bad_dtype_or_compile_mode_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from harness.cli import main

    for key, value in (("sampling.dtype", "fp8"), ("sampling.compile", "fast")):
        code = main(["plan", str(SYNTHETIC), "--results", str(tmp_path), "--set", f'{key}="{value}"'])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and key.split(".")[1] in err[0] and value in err[0]


def test_torch_compile_samples_match_eager_and_the_eager_net_comes_back() -> None:
    model = tiny_unet()
    eager_net = model.net
    eager = draw(model)
    with sampling_mode(model, torch.device("cpu"), "fp32", "default"):
        assert model.net is not eager_net
        compiled = draw(model)
    assert model.net is eager_net
    assert torch.allclose(compiled, eager, atol=1e-3)  # fused kernels round differently
