"""`pvd demo`: deblur a short synthetic clip of a bundled photograph and print PSNR/SSIM (over `pvd.demo`)."""

from __future__ import annotations

import argparse
import sys

from pvd.commands import add_model_options, command_parser, parse_size

NAME = "demo"
BANNER_RULE = "!" * 100


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pvd import demo

    height, width = demo.DEFAULT_SIZE
    parser = command_parser(
        subparsers, NAME,
        description="Render a short camera-shake clip over a bundled photograph that the demo weights never saw "
                    "in training, deblur it with the bundled weights, print blurry-vs-deblurred PSNR/SSIM against "
                    "the sharp frames, and write the blurry, sharp and deblurred frames (png), deblurred.mp4, "
                    "side_by_side.png and results.json to the output folder. Same seed, same output.")
    parser.add_argument("-o", "--out", default=demo.DEFAULT_OUT_DIR,
                        help="output folder (default %(default)s; must not exist unless --overwrite)")
    add_model_options(parser, size_policy=False)
    parser.add_argument("--frames", type=int, default=demo.DEFAULT_FRAMES, help="clip length (default %(default)s)")
    parser.add_argument("--size", type=parse_size, default=demo.DEFAULT_SIZE, metavar="HxW",
                        help=f"frame size (default {height}x{width})")
    parser.add_argument("--seed", type=int, default=demo.DEFAULT_SEED, help="camera-motion seed (default %(default)s)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="run seeded random weights when the demo weights are missing (results are meaningless)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=run)
    return parser


def _banner(text: str) -> None:
    print(f"{BANNER_RULE}\n!! {text}\n{BANNER_RULE}", file=sys.stderr)


def format_table(results: dict) -> str:
    """The blurry-vs-deblurred score table (means over frames against the sharp frames)."""
    rows = [
        f"{'':<14}{'PSNR (dB)':>10}{'SSIM':>9}",
        f"{'blurry input':<14}{results['psnr_blurry']:>10.2f}{results['ssim_blurry']:>9.4f}",
        f"{'deblurred':<14}{results['psnr_deblurred']:>10.2f}{results['ssim_deblurred']:>9.4f}",
        (f"{'change':<14}{results['psnr_deblurred'] - results['psnr_blurry']:>+10.2f}"
         f"{results['ssim_deblurred'] - results['ssim_blurry']:>+9.4f}"),
    ]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from pvd import demo

    results = demo.run_demo(args.out, weights=args.weights, device=args.device, frames=args.frames,
                            size=args.size, seed=args.seed, allow_untrained=args.allow_untrained,
                            overwrite=args.overwrite, precision=args.precision, progress=not args.quiet)
    weights = results["weights"] or "seeded random weights (UNTRAINED)"
    print(f"pvd demo: {results['frames']} frames of {results['height']}x{results['width']} from "
          f"{results['photograph']} (seed {results['seed']}), weights: {weights}")
    print(f"mean over {results['frames']} frames, against the sharp frames:")
    print(format_table(results))
    per_frame = results["deblur_seconds"] / results["frames"]
    print(f"elapsed {results['seconds']:.1f} s on {results['device']} (networks {results['deblur_seconds']:.1f} s, "
          f"{per_frame:.2f} s per frame)")
    print(f"wrote {results['out_dir']}/: {demo.BLURRY_FOLDER}/, {demo.SHARP_FOLDER}/, {demo.DEBLURRED_FOLDER}/ "
          f"(png), {demo.VIDEO_FILE}, {demo.SIDE_BY_SIDE_FILE}, {demo.RESULTS_FILE}")
    if results["untrained"]:  # said once as a warning when the model loaded; repeated under the scores
        from pvd.weights import UNTRAINED_WARNING

        _banner(UNTRAINED_WARNING)
    return 0
