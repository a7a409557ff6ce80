"""`pvd eval DATA_ROOT -o OUT`: deblur a data set with ground truth and score it (a thin layer over `pvd.evaluate`)."""

from __future__ import annotations

import argparse

from pvd.commands import add_model_options, command_parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pvd import metrics
    from pvd.evaluate import GROUND_TRUTH_LAYOUTS, PROTOCOLS

    parser = command_parser(
        subparsers, "eval",
        description="Deblur every video of a DVD / GoPro / synthetic data set and score each frame against its "
                    "sharp frame: plain PSNR/SSIM (the original Python evaluation) and aligned PSNR/SSIM (the "
                    "paper's MATLAB protocol). Writes scores.csv, summary.json and summary.md to OUTPUT.")
    parser.add_argument("data_root", help="data set root: <root>/<video>/{input,GT} (DVD) or "
                                          "<root>/<video>/{blur_gamma|blur,sharp} (GoPro, synthetic)")
    parser.add_argument("-o", "--output", required=True, help="folder for scores.csv, summary.json, summary.md")
    add_model_options(parser)
    parser.add_argument("--allow-untrained", action="store_true",
                        help="score random weights when no trained weights are found (for testing only)")
    parser.add_argument("--large", action="store_true", help="with --allow-untrained: random PVDNet-large")
    parser.add_argument("--layout", choices=GROUND_TRUTH_LAYOUTS, default=None, help="default: detected")
    parser.add_argument("--blurry-folder", default=None,
                        help="GoPro layout: blurry frame folder (default blur_gamma, else blur)")
    parser.add_argument("--limit-videos", type=int, default=None, metavar="N", help="score only the first N videos")
    parser.add_argument("--limit-frames", type=int, default=None, metavar="N",
                        help="score only the first N frames of each video")
    parser.add_argument("--plain-ssim-window", choices=("uniform", "gaussian"), default="uniform",
                        help="SSIM window of the plain score: uniform 7x7 (the original Python evaluation, "
                             "default) or gaussian 11x11 sigma 1.5")
    parser.add_argument("--border", type=int, default=metrics.EVAL_BORDER,
                        help="border cropped by the aligned protocol, pixels (default %(default)s)")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="default",
                        help="paper: the conditions of the original Python evaluation behind the quoted figures "
                             "(fp32, --size-policy original, uniform plain SSIM; overrides those options)")
    parser.add_argument("--zero-flow", action="store_true",
                        help="ablation: feed PVDNet pixel volumes built from a zero flow instead of BIMNet's")
    parser.add_argument("--save-frames", action="store_true",
                        help="also write the deblurred frames (OUTPUT/frames/<video>/) and blurry | deblurred | "
                             "sharp side-by-sides (OUTPUT/side_by_side/<video>/)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing score files in OUTPUT")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pvd import evaluate

    summary = evaluate.evaluate(
        args.data_root, args.output, weights=args.weights, allow_untrained=args.allow_untrained,
        large=args.large, device=args.device, precision=args.precision, size_policy=args.size_policy,
        layout=args.layout, blurry_folder=args.blurry_folder, limit_videos=args.limit_videos,
        limit_frames=args.limit_frames, plain_ssim_window=args.plain_ssim_window, border=args.border,
        zero_flow=args.zero_flow, overwrite=args.overwrite, progress=not args.quiet,
        protocol=args.protocol, save_frames=args.save_frames)
    from pvd import sharding

    if not sharding.current().is_main:  # under torchrun rank 0 reports (and wrote the files)
        return 0
    print(evaluate.markdown_summary(summary))
    print(f"wrote {args.output}/{{{', '.join(evaluate.OUTPUT_NAMES)}}}")
    return 0
