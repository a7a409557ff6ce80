"""Image-quality metrics (PSNR, SSIM) and the two evaluation protocols of PVDNet, in batched PyTorch.

Everything runs on the inputs' device in float64, batched over frames, with no per-pixel Python.
Images are (B, C, H, W) tensors; every score is a (B,) float64 tensor, one value per frame.

Primitives
----------
- `psnr(a, b, data_range)`: 10*log10(data_range^2 / MSE), the MSE taken over all channels and pixels
  (inf for identical images).
- `ssim(a, b, data_range, window)`: SSIM of Wang et al. 2004 with K1=0.01, K2=0.03, computed per channel
  and averaged over the channels (scikit-image's `channel_axis` convention; a 1-channel image is plain
  grey SSIM). Local statistics use the "valid" region only (MATLAB `filter2(..., 'valid')`, equal to
  scikit-image's crop of the window radius): the SSIM map is (H-k+1, W-k+1) and its mean is returned.
  `window="gaussian"`: 11x11 Gaussian, sigma 1.5, population (biased) variances, i.e. Zhou Wang's
  `ssim_index.m` = `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
  `window="uniform"`: 7x7 box with sample covariances (N/(N-1)), i.e. scikit-image's defaults.

Protocols of `frame_scores(result, gt)` (result and gt in [0, 1], (B, 3, H, W))
-------------------------------------------------------------------------------
*Plain* (`psnr`, `ssim`) reproduces the original Python evaluation (`eval.py` of codeslake/PVDNet,
the one that gave 31.89 dB / 0.9236 on DVD): whole frame, RGB, PSNR over all channels, SSIM
channel-averaged with scikit-image's default uniform 7x7 window (`plain_ssim_window="gaussian"` selects
the Gaussian SSIM instead), on the float result as it is.

*Aligned* (`psnr_aligned`, `ssim_aligned`) reproduces the paper's MATLAB evaluation
(`evaluation/evaluation.m`, the Koehler et al. benchmark code it calls), per frame:
1. the result is stored as an 8-bit image (the MATLAB reads the PNGs written by torchvision's
   `save_image`: round half up of 255*clamp(x, 0, 1)); `quantize_result=False` skips this;
2. a `border`-pixel (16) frame is cropped off result z and ground truth x;
3. least-squares intensity scale: zs = (sum(x*z) / sum(z*z)) * z, the sums over all channels;
4. the integer translation that registers zs to x: the peak of the circular cross-correlation
   ifft2(fft2(mean_c x) * conj(fft2(mean_c zs))) - Guizar-Sicairos' `dftregistration` at usfac=1;
   the peak index p (0-based) along an axis of length n maps to the shift p if p < n//2 else p - n
   (for odd n the index n//2 maps to -(n+1)/2, a quirk of the MATLAB kept here); ties go to the first
   maximum in column-major order, as MATLAB's `max` picks it;
5. zs is translated by that shift with zero fill (`imshift(..., 'same')`: out[r, c] = zs[r - dr, c - dc]),
   and so is an all-ones validity mask, which multiplies x: the invalid strip is 0 in both images;
6. both images are reduced to luma 0.299 R + 0.587 G + 0.114 B (MeTriX MuX converts every RGB input
   before any metric, PSNR included), and PSNR and Gaussian SSIM are computed on the whole aligned
   pair: the zeroed strip counts as pixels with zero error in the PSNR mean and as content in SSIM.

Differences from the MATLAB code (all deliberate and small):
- MATLAB works in double on 0..255 values; here images stay in [0, data_range] (both metrics and the
  registration are invariant to that scale) in float64, with real FFTs (`torch.fft.rfft2`): the
  cross-correlation equals MATLAB's up to rounding, so only an exact tie could pick another peak.
- A result that is all zero has no least-squares scale (MATLAB divides by zero and scores NaN);
  here the scale is 1.
- MATLAB transposes frames whose width is not 1280; every step here is symmetric in the two axes, so
  this is not needed (only the tie-break order of step 4 would change).
- `ssim_index.m` returns -Inf for images smaller than the window; here that is a ValueError.
- Which frames are scored (the MATLAB skips each video's first frame) is the caller's business.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange

SSIM_K1 = 0.01
SSIM_K2 = 0.03
GAUSSIAN_WINDOW_SIZE = 11
GAUSSIAN_SIGMA = 1.5
UNIFORM_WINDOW_SIZE = 7
# RGB -> luminance of the IJG JPEG YCbCr transform, as MeTriX MuX's preprocessing applies it.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Border cropped off result and ground truth by the MATLAB evaluation, pixels.
EVAL_BORDER = 16
EIGHT_BIT_LEVELS = 255
COMPUTE_DTYPE = torch.float64

SsimWindow = Literal["gaussian", "uniform"]


def _check_images(a: torch.Tensor, b: torch.Tensor, what: str = "images") -> None:
    for name, tensor in (("first", a), ("second", b)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{what}: the {name} argument must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{what}: expected (B, C, H, W) tensors, the {name} has shape {tuple(tensor.shape)}")
        if not (tensor.is_floating_point() or tensor.dtype == torch.uint8):
            raise ValueError(f"{what}: expected floating-point or uint8 images, the {name} is {tensor.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{what}: devices differ: {a.device} vs {b.device}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (B, C, H, W) x2 -> (B,) float64.

    MSE over all channels and pixels; values in [0, data_range]; identical images give +inf.
    """
    _check_images(a, b, "psnr")
    difference = a.to(COMPUTE_DTYPE) - b.to(COMPUTE_DTYPE)
    mse = difference.square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def _window_taps(window: SsimWindow, device: torch.device) -> tuple[torch.Tensor, float]:
    """1-D taps of the separable SSIM window (summing to 1) and the covariance normalisation factor."""
    if window == "gaussian":
        radius = GAUSSIAN_WINDOW_SIZE // 2
        offsets = torch.arange(-radius, radius + 1, dtype=COMPUTE_DTYPE, device=device)
        taps = torch.exp(-offsets.square() / (2.0 * GAUSSIAN_SIGMA**2))
        return taps / taps.sum(), 1.0
    if window == "uniform":
        taps = torch.full((UNIFORM_WINDOW_SIZE,), 1.0 / UNIFORM_WINDOW_SIZE, dtype=COMPUTE_DTYPE, device=device)
        samples = UNIFORM_WINDOW_SIZE**2
        return taps, samples / (samples - 1.0)
    raise ValueError(f"ssim: window must be 'gaussian' or 'uniform', got {window!r}")


def _valid_filter_1d(planes: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate along `dim` with `taps`, keeping the valid region (length n - k + 1).

    A weighted sum of shifted views: far faster than a float64 `conv2d` on CPU, and exact.
    """
    weights = taps.tolist()
    length = planes.shape[dim] - len(weights) + 1
    filtered = planes.narrow(dim, 0, length) * weights[0]
    for offset, weight in enumerate(weights[1:], start=1):
        filtered.add_(planes.narrow(dim, offset, length), alpha=weight)
    return filtered


def _valid_window_mean(planes: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Weighted local means over the 'valid' region: (..., H, W) -> (..., H-k+1, W-k+1)."""
    return _valid_filter_1d(_valid_filter_1d(planes, taps, dim=-2), taps, dim=-1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: SsimWindow = "gaussian") -> torch.Tensor:
    """Mean structural similarity per image: (B, C, H, W) x2 -> (B,) float64, channels averaged.

    Values in [0, data_range]. `window="gaussian"` (11x11, sigma 1.5, population variances) is MATLAB's
    `ssim_index`; `window="uniform"` (7x7 box, sample covariances) is scikit-image's default. The SSIM map
    covers the valid region only (no padding). To score grey like the MATLAB code, pass `to_luma(x)`.
    """
    _check_images(a, b, "ssim")
    taps, covariance_norm = _window_taps(window, a.device)
    size = taps.numel()
    batch, _, height, width = a.shape
    if height < size or width < size:
        raise ValueError(f"ssim: images of {height}x{width} are smaller than the {size}x{size} window")
    x = rearrange(a.to(COMPUTE_DTYPE), "b c h w -> (b c) 1 h w")
    y = rearrange(b.to(COMPUTE_DTYPE), "b c h w -> (b c) 1 h w")
    moments = _valid_window_mean(torch.cat([x, y, x * x, y * y, x * y]), taps)
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.chunk(5)
    variance_x = covariance_norm * (mean_xx - mean_x * mean_x)
    variance_y = covariance_norm * (mean_yy - mean_y * mean_y)
    covariance = covariance_norm * (mean_xy - mean_x * mean_y)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2.0 * mean_x * mean_y + c1) * (2.0 * covariance + c2)
    denominator = (mean_x * mean_x + mean_y * mean_y + c1) * (variance_x + variance_y + c2)
    ssim_map = rearrange(numerator / denominator, "(b c) 1 h w -> b (c h w)", b=batch)
    return ssim_map.mean(dim=1)


def to_luma(images: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) -> luma (B, 1, H, W) = 0.299 R + 0.587 G + 0.114 B, float64 (MeTriX MuX's grey)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"to_luma: expected (B, 3, H, W) RGB images, got shape {tuple(images.shape)}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=COMPUTE_DTYPE, device=images.device)
    return torch.einsum("bchw,c->bhw", images.to(COMPUTE_DTYPE), weights).unsqueeze(1)


def intensity_scale(result: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Least-squares scale s minimising ||reference - s * result||^2 per image: -> (B,) float64.

    Sums over all channels and pixels; an all-zero result gets s = 1.
    """
    _check_images(result, reference, "intensity_scale")
    z = result.to(COMPUTE_DTYPE).flatten(1)
    x = reference.to(COMPUTE_DTYPE).flatten(1)
    energy = (z * z).sum(dim=1)
    correlation = (x * z).sum(dim=1)
    return torch.where(energy > 0, correlation / energy.clamp_min(torch.finfo(COMPUTE_DTYPE).tiny), 1.0)


def register_translation(reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Integer translation (dy, dx) that registers `moving` onto `reference`: (B, C, H, W) x2 -> (B, 2) int64.

    The peak of the circular cross-correlation of the channel-mean images (dftregistration at usfac=1),
    so that `translate(moving, shift)` lines up with `reference`. Offsets beyond half the size wrap to
    negative shifts; see the module docstring for the exact index mapping and tie-breaking.
    """
    _check_images(reference, moving, "register_translation")
    _, _, height, width = reference.shape
    reference_mean = reference.to(COMPUTE_DTYPE).mean(dim=1)
    moving_mean = moving.to(COMPUTE_DTYPE).mean(dim=1)
    spectrum = torch.fft.rfft2(reference_mean) * torch.fft.rfft2(moving_mean).conj()
    cross_correlation = torch.fft.irfft2(spectrum, s=(height, width))
    # MATLAB's max scans column-major: flatten columns first so argmax keeps the same first maximum.
    peak = rearrange(cross_correlation, "b h w -> b (w h)").argmax(dim=1)
    peak_row, peak_col = peak % height, peak // height
    shift_row = torch.where(peak_row >= height // 2, peak_row - height, peak_row)
    shift_col = torch.where(peak_col >= width // 2, peak_col - width, peak_col)
    return torch.stack([shift_row, shift_col], dim=1)


def translate(images: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer translation with zero fill: out[b, :, r, c] = images[b, :, r - dy, c - dx].

    images (B, C, H, W); shift (B, 2) integer (dy, dx). Returns (translated float64 images,
    validity mask (B, 1, H, W) float64: 1 where the source pixel existed, else 0).
    """
    if images.dim() != 4:
        raise ValueError(f"translate: expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if shift.shape != (batch, 2):
        raise ValueError(f"translate: shift must have shape ({batch}, 2), got {tuple(shift.shape)}")
    shift = shift.to(device=images.device, dtype=torch.long)
    source_rows = torch.arange(height, device=images.device) - shift[:, :1]  # (B, H)
    source_cols = torch.arange(width, device=images.device) - shift[:, 1:]  # (B, W)
    rows_inside = (source_rows >= 0) & (source_rows < height)
    cols_inside = (source_cols >= 0) & (source_cols < width)
    mask = (rows_inside[:, :, None] & cols_inside[:, None, :]).unsqueeze(1).to(COMPUTE_DTYPE)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    gathered = images.to(COMPUTE_DTYPE)[
        batch_index, :, source_rows.clamp(0, height - 1)[:, :, None], source_cols.clamp(0, width - 1)[:, None, :]
    ]  # advanced indices first: (B, H, W, C)
    return rearrange(gathered, "b h w c -> b c h w") * mask, mask


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as an 8-bit file stores them (torchvision `save_image`), back in [0, 1], float64."""
    levels = torch.floor(images.to(COMPUTE_DTYPE) * EIGHT_BIT_LEVELS + 0.5).clamp(0, EIGHT_BIT_LEVELS)
    return levels / EIGHT_BIT_LEVELS


def crop_border(images: torch.Tensor, border: int) -> torch.Tensor:
    """Drop `border` pixels on each side: (B, C, H, W) -> (B, C, H - 2*border, W - 2*border)."""
    if border < 0:
        raise ValueError(f"crop_border: border must be >= 0, got {border}")
    if border == 0:
        return images
    height, width = images.shape[-2:]
    if height <= 2 * border or width <= 2 * border:
        raise ValueError(f"crop_border: a {border}-pixel border leaves nothing of a {height}x{width} image")
    return images[..., border:height - border, border:width - border]


def align_to_reference(result: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scale-fit and integer-register `result` onto `reference` (steps 3-5 of the MATLAB protocol).

    (B, C, H, W) x2 -> dict with `result` (scaled, translated, zero-filled), `reference` (times the
    validity mask), `mask` (B, 1, H, W), `shift` (B, 2) int64 (dy, dx) and `scale` (B,), all float64
    except `shift`.
    """
    _check_images(result, reference, "align_to_reference")
    scale = intensity_scale(result, reference)
    scaled = result.to(COMPUTE_DTYPE) * scale[:, None, None, None]
    shift = register_translation(reference, scaled)
    aligned, mask = translate(scaled, shift)
    return {
        "result": aligned,
        "reference": reference.to(COMPUTE_DTYPE) * mask,
        "mask": mask,
        "shift": shift,
        "scale": scale,
    }


def aligned_scores(result: torch.Tensor, gt: torch.Tensor, border: int = EVAL_BORDER,
                   quantize_result: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR and SSIM of the paper's MATLAB protocol (module docstring): RGB [0, 1] -> ((B,), (B,))."""
    _check_images(result, gt, "aligned_scores")
    if result.shape[1] != 3:
        raise ValueError(f"aligned_scores: expected RGB images, got {result.shape[1]} channels")
    if quantize_result:
        result = quantize_8bit(result)
    aligned = align_to_reference(crop_border(result, border), crop_border(gt, border))
    result_luma, gt_luma = to_luma(aligned["result"]), to_luma(aligned["reference"])
    return psnr(result_luma, gt_luma), ssim(result_luma, gt_luma, window="gaussian")


def frame_scores(result: torch.Tensor, gt: torch.Tensor, *, border: int = EVAL_BORDER,
                 plain_ssim_window: SsimWindow = "uniform", quantize_result: bool = True) -> dict[str, torch.Tensor]:
    """Plain and aligned PSNR (dB) / SSIM of deblurred frames against ground truth.

    result, gt: (B, 3, H, W) in [0, 1] on any device. Returns {psnr, ssim, psnr_aligned, ssim_aligned},
    each (B,) float64 on that device. Plain = the original Python evaluation (whole frame, RGB,
    `plain_ssim_window` SSIM); aligned = the MATLAB protocol (border crop, scale fit, DFT registration,
    luma, Gaussian SSIM); see the module docstring.
    """
    _check_images(result, gt, "frame_scores")
    if result.shape[1] != 3:
        raise ValueError(f"frame_scores: expected RGB images (B, 3, H, W), got shape {tuple(result.shape)}")
    minimum = 2 * border + max(GAUSSIAN_WINDOW_SIZE, UNIFORM_WINDOW_SIZE)
    if min(result.shape[-2:]) < minimum:
        raise ValueError(f"frame_scores: frames of {result.shape[-2]}x{result.shape[-1]} are too small for a "
                         f"{border}-pixel border and an {GAUSSIAN_WINDOW_SIZE}x{GAUSSIAN_WINDOW_SIZE} SSIM window")
    psnr_aligned, ssim_aligned = aligned_scores(result, gt, border=border, quantize_result=quantize_result)
    return {
        "psnr": psnr(result, gt),
        "ssim": ssim(result, gt, window=plain_ssim_window),
        "psnr_aligned": psnr_aligned,
        "ssim_aligned": ssim_aligned,
    }


__all__ = [
    "psnr", "ssim", "to_luma", "intensity_scale", "register_translation", "translate", "quantize_8bit",
    "crop_border", "align_to_reference", "aligned_scores", "frame_scores", "EVAL_BORDER", "LUMA_WEIGHTS",
]
