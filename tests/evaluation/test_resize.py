"""The numpy resize equals torch's interpolate, which the example factory used before it."""

import numpy as np
import pytest

from eov_edge.evaluation.resize import resize

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape, size, mode", [
    ((1, 280, 280), 224, "area"),      # a thermal crop shrunk: area averaging, integer-free ratio
    ((12, 120, 120), 224, "area"),     # a BigEarthNet patch enlarged: bilinear
    ((2, 90, 90), 224, "area"),
    ((4, 168, 168), 14, "area"),       # land-cover fractions per patch
    ((3, 37, 53), (224, 100), "bilinear"),
    ((4, 120, 120), 14, "nearest"),
])
def test_resize_matches_torch_interpolate(shape, size, mode):
    import torch.nn.functional as F

    values = (np.random.default_rng(0).random(shape) * 3000).astype(np.float32)
    out_size = (size, size) if isinstance(size, int) else size
    tensor = torch.from_numpy(values)[None]
    if mode == "nearest":
        expected = F.interpolate(tensor, size=out_size, mode="nearest")
    elif mode == "area" and shape[-1] >= out_size[1]:
        expected = F.interpolate(tensor, size=out_size, mode="area")
    else:
        expected = F.interpolate(tensor, size=out_size, mode="bilinear", align_corners=False)
    got = resize(values, size, mode)
    assert got.shape == expected.shape[1:] and got.dtype == np.float32
    # torch interpolates in float32 (weights and sums): within 1e-5 of the values' range (3000), the
    # rounding of float32 itself; a wrong pixel centre or window would be off by tens to hundreds
    np.testing.assert_allclose(got, expected[0].numpy(), rtol=0, atol=3000 * 1e-5)


def test_resize_refuses_what_is_not_an_image_stack():
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        resize(np.zeros((4, 4)), 8)
