"""pvd.metrics against scikit-image (the oracle for PSNR/SSIM) and a literal NumPy port of the MATLAB protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvd import metrics

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the test oracle")
skimage_data = pytest.importorskip("skimage.data")

BORDER = 16


def to_tensor(images_hwc: list[np.ndarray]) -> torch.Tensor:
    """List of HxWxC (or HxW) float arrays -> (B, C, H, W) float64 tensor."""
    stacked = np.stack([image if image.ndim == 3 else image[..., None] for image in images_hwc])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def natural_rgb(name: str = "astronaut", top: int = 100, left: int = 120, height: int = 128, width: int = 160):
    image = getattr(skimage_data, name)().astype(np.float64) / 255.0
    return image[top:top + height, left:left + width]


def degraded(image: np.ndarray, seed: int, noise: float = 0.05) -> np.ndarray:
    """A blurred, noisy copy in [0, 1] (a 3x3 box blur by shifted sums, plus Gaussian noise)."""
    rng = np.random.default_rng(seed)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[dy:dy + image.shape[0], dx:dx + image.shape[1]] for dy in range(3) for dx in range(3)) / 9
    return np.clip(blurred + noise * rng.standard_normal(image.shape), 0.0, 1.0)


def image_pairs():
    rng = np.random.default_rng(1)
    random_a = rng.random((40, 52, 3))
    random_b = np.clip(random_a + 0.1 * rng.standard_normal(random_a.shape), 0, 1)
    astronaut = natural_rgb("astronaut")
    coffee = natural_rgb("coffee", top=50, left=200)
    return {
        "random": (random_a, random_b),
        "astronaut": (astronaut, degraded(astronaut, seed=2)),
        "coffee": (coffee, degraded(coffee, seed=3, noise=0.02)),
    }


PAIRS = image_pairs()


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_psnr_matches_skimage(name):
    a, b = PAIRS[name]
    expected = skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1.0)
    got = metrics.psnr(to_tensor([a]), to_tensor([b]))
    assert got.shape == (1,) and got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_gaussian_ssim_matches_skimage_rgb(name):
    a, b = PAIRS[name]
    expected = skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    got = metrics.ssim(to_tensor([a]), to_tensor([b]), data_range=1.0)
    assert got.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_uniform_ssim_matches_skimage_defaults(name):
    a, b = PAIRS[name]
    expected = skimage_metrics.structural_similarity(a, b, data_range=1.0, channel_axis=-1)
    got = metrics.ssim(to_tensor([a]), to_tensor([b]), data_range=1.0, window="uniform")
    assert got.item() == pytest.approx(expected, abs=1e-10)


def test_gaussian_ssim_matches_skimage_gray_and_batches():
    camera = skimage_data.camera().astype(np.float64)[200:296, 180:300]  # 0..255
    rng = np.random.default_rng(4)
    noisy = [np.clip(camera + sigma * rng.standard_normal(camera.shape), 0, 255) for sigma in (5.0, 20.0)]
    expected = [skimage_metrics.structural_similarity(camera, image, gaussian_weights=True, sigma=1.5,
                                                      use_sample_covariance=False, data_range=255.0)
                for image in noisy]
    got = metrics.ssim(to_tensor([camera, camera]), to_tensor(noisy), data_range=255.0)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    assert expected[0] > expected[1] + 0.05  # the two batch items really differ


def test_scores_are_invariant_to_data_range():
    a, b = PAIRS["astronaut"]
    unit = metrics.ssim(to_tensor([a]), to_tensor([b])), metrics.psnr(to_tensor([a]), to_tensor([b]))
    bytes_ = (metrics.ssim(to_tensor([a * 255]), to_tensor([b * 255]), data_range=255.0),
              metrics.psnr(to_tensor([a * 255]), to_tensor([b * 255]), data_range=255.0))
    torch.testing.assert_close(unit, bytes_)


def test_identical_images():
    a, _ = PAIRS["coffee"]
    images = to_tensor([a])
    assert metrics.ssim(images, images).item() == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr(images, images).item() == float("inf")


def shifted_crops(image: np.ndarray, shifts, top=150, left=150, height=160, width=192):
    """Ground truth = one window of `image`; moving = the window displaced by (dy, dx): moving[r] = gt[r + d]."""
    reference = image[top:top + height, left:left + width]
    moving = [image[top + dy:top + dy + height, left + dx:left + dx + width] for dy, dx in shifts]
    return reference, moving


SHIFTS = [(0, 0), (3, -5), (-4, 2), (-2, -7), (6, 1)]


def test_register_translation_recovers_known_shifts_in_one_batch():
    image = skimage_data.astronaut().astype(np.float64) / 255.0
    reference, moving = shifted_crops(image, SHIFTS)
    shift = metrics.register_translation(to_tensor([reference] * len(SHIFTS)), to_tensor(moving))
    assert shift.dtype == torch.int64
    assert shift.tolist() == [list(s) for s in SHIFTS]


@pytest.mark.parametrize("dy, dx", [(3, -5), (-4, 2), (0, 0)])
def test_alignment_recovers_shift_and_scale(dy, dx):
    image = skimage_data.coffee().astype(np.float64) / 255.0
    reference, (moving,) = shifted_crops(image, [(dy, dx)])
    intensity = 0.8
    aligned = metrics.align_to_reference(to_tensor([intensity * moving]), to_tensor([reference]))
    assert aligned["shift"].tolist() == [[dy, dx]]
    height, width = reference.shape[:2]
    mask = aligned["mask"][0, 0].numpy()
    assert mask.sum() == (height - abs(dy)) * (width - abs(dx))
    # Inside the mask the aligned result is the ground truth times (fitted scale * intensity); outside both are 0.
    gain = aligned["scale"].item() * intensity
    np.testing.assert_allclose(aligned["result"][0].numpy(), gain * aligned["reference"][0].numpy(), atol=1e-12)
    assert np.all(aligned["reference"][0].numpy()[:, mask == 0] == 0)
    if (dy, dx) == (0, 0):
        assert aligned["scale"].item() == pytest.approx(1 / intensity, rel=1e-12)


def test_aligned_scores_beat_plain_scores_on_a_shifted_scaled_copy():
    image = skimage_data.astronaut().astype(np.float64) / 255.0
    reference, moving = shifted_crops(image, [(3, -5), (-4, 2)])
    result = to_tensor([0.85 * frame for frame in moving])
    scores = metrics.frame_scores(result, to_tensor([reference, reference]))
    assert torch.all(scores["psnr_aligned"] > scores["psnr"] + 10.0)
    assert torch.all(scores["ssim_aligned"] > 0.97)
    assert torch.all(scores["ssim"] < 0.8)


def matlab_protocol_numpy(result: np.ndarray, gt: np.ndarray, border: int = BORDER) -> tuple[float, float]:
    """Literal NumPy port of the steps of evaluation.m (HxWx3 images in [0, 1]), scored with scikit-image."""
    z = result[border:-border, border:-border]
    x = gt[border:-border, border:-border]
    xf = np.fft.fft2(x.mean(axis=2))
    zs = (np.sum(x * z) / np.sum(z * z)) * z
    zf = np.fft.fft2(zs.mean(axis=2))
    cc = np.real(np.fft.ifft2(xf * np.conj(zf)))
    m, n = cc.shape
    column_maxima = cc.max(axis=0)
    cloc = int(np.argmax(column_maxima)) + 1  # 1-based, first column holding the maximum
    rloc = int(np.argmax(cc[:, cloc - 1])) + 1
    row_shift = rloc - m - 1 if rloc > m // 2 else rloc - 1
    col_shift = cloc - n - 1 if cloc > n // 2 else cloc - 1

    def imshift_same(image, t1, t2):
        out = np.zeros_like(image)
        out[max(t1, 0):m + min(t1, 0), max(t2, 0):n + min(t2, 0)] = \
            image[max(-t1, 0):m - max(t1, 0), max(-t2, 0):n - max(t2, 0)]
        return out

    cr = imshift_same(np.ones_like(z), row_shift, col_shift)
    zr = imshift_same(zs, row_shift, col_shift)
    xr = x * cr
    luma = np.array([0.299, 0.587, 0.114])
    xr_gray, zr_gray = xr @ luma, zr @ luma
    psnr = skimage_metrics.peak_signal_noise_ratio(xr_gray, zr_gray, data_range=1.0)
    ssim = skimage_metrics.structural_similarity(xr_gray, zr_gray, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=1.0)
    return psnr, ssim


def test_aligned_scores_match_a_literal_port_of_the_matlab_protocol():
    image = skimage_data.chelsea().astype(np.float64) / 255.0
    reference, moving = shifted_crops(image, [(2, -3), (-5, 4), (0, 0)], top=60, left=100, height=144, width=176)
    # 8-bit valued results, so the 8-bit storage step of the protocol changes nothing.
    results = [np.round(np.clip(0.9 * degraded(frame, seed=i, noise=0.02) + 0.02, 0, 1) * 255) / 255
               for i, frame in enumerate(moving)]
    expected = np.array([matlab_protocol_numpy(result, reference) for result in results])
    scores = metrics.frame_scores(to_tensor(results), to_tensor([reference] * len(results)))
    np.testing.assert_allclose(scores["psnr_aligned"].numpy(), expected[:, 0], atol=1e-8)
    np.testing.assert_allclose(scores["ssim_aligned"].numpy(), expected[:, 1], atol=1e-10)
    assert len(set(np.round(expected[:, 0], 6))) == len(results)


def test_plain_scores_follow_the_original_python_evaluation():
    a, b = PAIRS["astronaut"]
    scores = metrics.frame_scores(to_tensor([b]), to_tensor([a]))
    assert scores["psnr"].item() == pytest.approx(10 * np.log10(1.0 / np.mean((a - b) ** 2)), abs=1e-9)
    assert scores["ssim"].item() == pytest.approx(
        skimage_metrics.structural_similarity(b, a, data_range=1.0, channel_axis=-1), abs=1e-10)
    gaussian = metrics.frame_scores(to_tensor([b]), to_tensor([a]), plain_ssim_window="gaussian")
    assert gaussian["ssim"].item() == pytest.approx(metrics.ssim(to_tensor([b]), to_tensor([a])).item(), abs=1e-12)
    assert gaussian["ssim"].item() != pytest.approx(scores["ssim"].item(), abs=1e-4)


def test_frame_scores_batch_equals_single_frames_and_stays_on_device():
    a, b = PAIRS["astronaut"]
    c, d = PAIRS["coffee"]
    batch = metrics.frame_scores(to_tensor([b, d]).float(), to_tensor([a, c]).float())
    assert set(batch) == {"psnr", "ssim", "psnr_aligned", "ssim_aligned"}
    for index, (result, gt) in enumerate([(b, a), (d, c)]):
        single = metrics.frame_scores(to_tensor([result]).float(), to_tensor([gt]).float())
        for key, value in batch.items():
            assert value.shape == (2,) and value.device == torch.device("cpu")
            assert value[index].item() == pytest.approx(single[key].item(), abs=1e-9)


def test_quantize_8bit_rounds_half_up_and_clamps():
    values = torch.tensor([0.49 / 255, 0.5 / 255, 1.49 / 255, 254.6 / 255, -0.1, 1.2])
    expected = torch.tensor([0.0, 1.0, 1.0, 255.0, 0.0, 255.0], dtype=torch.float64) / 255
    torch.testing.assert_close(metrics.quantize_8bit(values), expected)


@pytest.mark.parametrize("a_shape, b_shape, message", [
    ((1, 3, 64, 64), (1, 3, 64, 60), "shapes differ"),
    ((3, 64, 64), (3, 64, 64), "(B, C, H, W)"),
    ((1, 3, 40, 64), (1, 3, 40, 64), "too small"),
    ((1, 1, 64, 64), (1, 1, 64, 64), "RGB"),
])
def test_frame_scores_rejects_bad_input(a_shape, b_shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        metrics.frame_scores(torch.rand(a_shape), torch.rand(b_shape))


def test_ssim_rejects_images_smaller_than_the_window_and_unknown_windows():
    with pytest.raises(ValueError, match="smaller than"):
        metrics.ssim(torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30))
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(torch.rand(1, 1, 30, 30), torch.rand(1, 1, 30, 30), window="box")
