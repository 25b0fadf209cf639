"""The hot path on a CUDA device (``python -m pytest -m gpu tests/test_gpu_hot_path.py``).

On a GPU the sync counter also sees blocking copies between host and device, which a CPU run cannot:
the steady-state steps of a mixed-factor baseline must still have none. The host path (pinned buffers,
non-blocking copies, views resized on the GPU a chunk at a time) must give the device path's batches.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, tiny
from test_syncs import CASES, stage_counts

from lrfer.data.degrade import degrade_uint8, parse_degradations
from lrfer.engine.run import build_parts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", ["baseline", "mstrain"])
def test_no_sync_per_step_on_the_gpu(tmp_path, name):
    counts = stage_counts(tmp_path, *CASES[name], "trainer.device=cuda", "dataset.on_device='true'", steps=4)
    print(f"\n{name} (cuda): {counts}")
    for stage, per_step in counts.items():
        if not stage.endswith("(epoch end)"):
            assert all(not step for step in per_step[1:]), f"{stage}: {per_step}"


def test_host_path_batches_equal_device_path_batches(tmp_path):
    degs = parse_degradations(["x1", "x2", "x4"])
    batches = {}
    for on_device in ("true", "false"):
        cfg = compose_cfg(
            *tiny(
                tmp_path,
                "trainer.device=cuda",
                f"dataset.on_device='{on_device}'",
                "degrade.train=[x1,x2,x4]",
            )
        )
        dm = build_parts(cfg).datamodule
        assert dm.prefetch == (on_device == "false") and dm.pin == (on_device == "false")
        batches[on_device] = list(dm.train_batches(degs, seed=3, need_hr=True))
    for a, b in zip(batches["true"], batches["false"]):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_views_of_host_images_are_made_on_the_gpu_and_kept_on_the_host():
    images = torch.randint(0, 256, (50, 3, 40, 40), dtype=torch.uint8)
    deg = parse_degradations(["x3"])[0]
    view = degrade_uint8(images, deg, chunk=16, device=torch.device("cuda"))
    assert view.device.type == "cpu" and torch.equal(view, degrade_uint8(images, deg))
