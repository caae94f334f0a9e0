"""FID Inception-v3 (`experiments.metrics.inception`): shapes, the resize, the weight files and the converter without
torch; with torch and pytorch-fid installed, equality with pytorch-fid's own FID network (random weights, no
download)."""

import math
import os

import jax
import numpy as np
import pytest

from fastsamplers.experiments.metrics import inception
from script_loader import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_bilinear_reference(x, height, width):
    """PyTorch's upsample_bilinear2d (align_corners=False, no antialias) pixel by pixel, float64: (h, w) -> (H, W)."""
    h, w = x.shape
    out = np.zeros((height, width))
    for i in range(height):
        sy = max((i + 0.5) * h / height - 0.5, 0.0)
        y0 = int(math.floor(sy))
        y1 = y0 + (1 if y0 < h - 1 else 0)
        ly = sy - y0
        for j in range(width):
            sx = max((j + 0.5) * w / width - 0.5, 0.0)
            x0 = int(math.floor(sx))
            x1 = x0 + (1 if x0 < w - 1 else 0)
            lx = sx - x0
            out[i, j] = ((1 - ly) * ((1 - lx) * x[y0, x0] + lx * x[y0, x1])
                         + ly * ((1 - lx) * x[y1, x0] + lx * x[y1, x1]))
    return out


@pytest.mark.parametrize("size_in, size_out", [((5, 7), (9, 4)), ((13, 6), (5, 11)), ((6, 6), (6, 6)),
                                               ((3, 2), (16, 7))])
def test_resize_is_pytorch_bilinear(size_in, size_out):
    x = np.random.default_rng(0).uniform(-1, 1, (2, *size_in, 3))
    got = np.asarray(inception.resize_bilinear(x, *size_out))
    assert got.shape == (2, *size_out, 3) and got.dtype == np.float32
    want = np.stack([np.stack([torch_bilinear_reference(x[n, :, :, c], *size_out) for c in range(3)], axis=-1)
                     for n in range(2)])
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


@pytest.fixture(scope="module")
def random_params():
    return inception.init_random_params(0)


def test_features_shape_grayscale_rgb_and_batching(random_params):
    gray = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
    f_gray = inception.features(random_params, gray, batch_size=2)  # batches of 2 and 1 (padded)
    assert f_gray.shape == (3, inception.FEATURE_DIM) and f_gray.dtype == np.float32
    assert np.all(np.isfinite(f_gray)) and np.all(f_gray >= 0)  # a mean of ReLUs
    assert np.std(f_gray, axis=0).max() > 1e-3 * np.abs(f_gray).max()  # the images give different features
    f_rgb = inception.features(random_params, np.repeat(gray, 3, axis=-1), batch_size=3)  # one batch, other channels
    assert f_rgb.shape == (3, inception.FEATURE_DIM)
    np.testing.assert_allclose(f_rgb, f_gray, rtol=1e-5, atol=1e-5 * np.abs(f_gray).max())
    with pytest.raises(ValueError, match="1 or 3"):
        inception.features(random_params, np.zeros((1, 8, 8, 2), np.float32))


def test_param_count_and_names(random_params):
    flat = inception.flatten_params(random_params)
    kernels = sum(v.size for k, v in flat.items() if k.endswith("kernel"))
    channels = sum(v.size for k, v in flat.items() if k.endswith("bn/var"))
    # torch counts 2 parameters a BN channel (its statistics are buffers) and the 1008-way fc: 23,850,960 in all
    assert (kernels, channels) == (21_751_136, 17_216) and len(flat) == 94 * 5
    assert kernels + 2 * channels + 2048 * 1008 + 1008 == 23_850_960
    assert flat["Conv2d_1a_3x3/conv/kernel"].shape == (3, 3, 3, 32)
    assert flat["Mixed_6b/branch7x7_2/conv/kernel"].shape == (1, 7, 128, 128)
    assert flat["Mixed_7c/branch_pool/bn/var"].shape == (192,)
    assert set(random_params) == {"params", "batch_stats"}


def test_load_params_round_trip(random_params, tmp_path):
    path = tmp_path / "inception.npz"
    inception.save_params(random_params, path)
    loaded = inception.load_params(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(random_params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(random_params)):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_load_params_errors(random_params, tmp_path):
    missing_file = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz.*convert_inception_weights"):
        inception.load_params(missing_file)
    flat = inception.flatten_params(random_params)

    def load(name, **changes):
        arrays = {k: v for k, v in {**flat, **changes}.items() if v is not None}
        np.savez(tmp_path / name, **arrays)
        return inception.load_params(tmp_path / name)

    with pytest.raises(ValueError, match=r"no_key\.npz.*missing keys: Mixed_6c/branch1x1/bn/mean"):
        load("no_key.npz", **{"Mixed_6c/branch1x1/bn/mean": None})
    with pytest.raises(ValueError, match=r"bad_shape\.npz.*shape mismatches: Conv2d_1a_3x3/conv/kernel "
                                         r"\(32, 3, 3, 3\) \(expected \(3, 3, 3, 32\)\)"):
        load("bad_shape.npz", **{"Conv2d_1a_3x3/conv/kernel": flat["Conv2d_1a_3x3/conv/kernel"].transpose(3, 2, 0, 1)})
    with pytest.raises(ValueError, match=r"extra\.npz.*unexpected keys: fc/kernel"):
        load("extra.npz", **{"fc/kernel": np.zeros((2048, 1008), np.float32)})
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.npz.*not a readable \.npz"):
        inception.load_params(tmp_path / "junk.npz")


def torch_style_state_dict(params):
    """Our variables in pytorch-fid's naming and layout (HWIO -> OIHW), with the classifier and BN counters."""
    leaves = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state = {}
    for key, v in inception.flatten_params(params).items():
        *path, leaf = key.split("/")
        state[".".join([*path, leaves[leaf]])] = v.transpose(3, 2, 0, 1) if leaf == "kernel" else v
        if leaf == "var":
            state[".".join([*path, "num_batches_tracked"])] = np.array(0)
    state["fc.weight"], state["fc.bias"] = np.zeros((1008, 2048), np.float32), np.zeros(1008, np.float32)
    return state


def test_convert_torch_state_dict(random_params):
    state = torch_style_state_dict(random_params)
    converted = inception.convert_torch_state_dict(state)
    for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(random_params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unexpected keys: AuxLogits.fc.weight"):
        inception.convert_torch_state_dict({**state, "AuxLogits.fc.weight": np.zeros((1008, 768))})
    del state["Mixed_5b.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="missing keys: Mixed_5b.branch_pool.bn.running_var"):
        inception.convert_torch_state_dict(state)


# ---- against pytorch-fid itself (skipped without torch and pytorch-fid) ----


@pytest.fixture(scope="module")
def torch_fid():
    """pytorch-fid's InceptionV3([3]) built by its own code, with random weights and BN statistics in place of the
    released ones (its weight loader is replaced, so nothing is downloaded); and that state dict as numpy."""
    torch = pytest.importorskip("torch")
    fid_inception = pytest.importorskip("pytorch_fid.inception")
    torch.manual_seed(0)
    skeleton = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # same names and shapes
    state = {}
    for name, v in skeleton.state_dict().items():
        if name.endswith("conv.weight"):
            v = torch.randn(v.shape) * math.sqrt(2.0 / (v[0].numel()))
        elif name.endswith(("bn.weight", "running_var")):
            v = torch.empty(v.shape).uniform_(0.5, 1.5)
        elif name.endswith(("bn.bias", "running_mean")) or name.startswith("fc."):
            v = 0.1 * torch.randn(v.shape)
        state[name] = v
    urls = []
    mp = pytest.MonkeyPatch()
    mp.setattr(fid_inception, "load_state_dict_from_url", lambda url, **kw: urls.append(url) or state)
    try:
        model = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    finally:
        mp.undo()
    assert urls == [fid_inception.FID_WEIGHTS_URL]
    return torch, model, {k: v.numpy() for k, v in state.items()}


def test_resize_matches_torch_interpolate(torch_fid):
    torch = torch_fid[0]
    rng = np.random.default_rng(2)
    for size_in in [(32, 32), (28, 40), (347, 310), (600, 299)]:
        x = rng.uniform(0, 1, (2, *size_in, 3)).astype(np.float32)
        want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                               mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        # torch computes the sample positions in float32: off by up to ~eps * size from the exact ones we use
        atol = 2 * np.finfo(np.float32).eps * max(size_in)
        np.testing.assert_allclose(np.asarray(inception.resize_bilinear(x, 299, 299)), want, atol=atol, rtol=0)


def test_features_match_pytorch_fid(torch_fid):
    torch, model, state = torch_fid
    images = np.random.default_rng(3).uniform(0, 1, (3, 40, 56, 3)).astype(np.float32)  # [0, 1], non-square
    with torch.no_grad():
        (want,) = model(torch.from_numpy(images).permute(0, 3, 1, 2))
    want = want.numpy()[:, :, 0, 0]
    got = inception.features(inception.convert_torch_state_dict(state), 2 * images - 1, batch_size=3)
    scale = np.abs(want).max()
    assert want.shape == got.shape == (3, 2048) and scale > 0.1
    assert np.abs(want - want[:1]).max() > 1e-2 * scale  # the features depend on the image
    err = np.abs(got - want).max() / scale
    print(f"max |ours - pytorch-fid| / max |pytorch-fid| = {err:.2e} (max |features| {scale:.3g})")
    assert err < 1e-5


def test_convert_script(torch_fid, tmp_path):
    torch, _, state = torch_fid
    pth = tmp_path / "weights.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
    script = load_script("convert_inception_weights")
    assert script.main(["--pth", str(pth), "--out", str(tmp_path / "out.npz")]) == 0
    loaded = inception.load_params(tmp_path / "out.npz")
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(inception.convert_torch_state_dict(state))):
        np.testing.assert_array_equal(a, b)
