"""`pvd deblur INPUT -o OUTPUT`: deblur videos with PVDNet (a thin layer over `pvd.stream.deblur_video`)."""

from __future__ import annotations

import argparse

from pvd.commands import add_model_options, command_parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pvd import stream, tiling, video_io

    parser = command_parser(
        subparsers, "deblur",
        description="Deblur a video (mp4/avi/mov), a folder of png/jpg frames, or a folder of such videos with "
                    "PVDNet. Each output has the input's frame count and frame size.")
    parser.add_argument("input", help="video file, folder of frames, or folder of videos / frame folders")
    parser.add_argument("-o", "--output", required=True,
                        help="output: a frame folder, or OUTPUT.mp4; for a folder of videos, a folder that gets "
                             "<name>/ and/or <name>.mp4 per video")
    add_model_options(parser)
    parser.add_argument("--side-by-side", action="store_true", help="write input | output, side by side")
    parser.add_argument("--format", choices=stream.OUTPUT_FORMATS, default=None,
                        help="png frames, mp4 video, or both (default: mp4 if OUTPUT ends in .mp4, else png)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="run random weights when no trained weights are found (for testing only)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA, long videos)")
    parser.add_argument("--crf", type=int, default=video_io.DEFAULT_CRF,
                        help="h264 quality of mp4 outputs, 0 (lossless) .. 51 (worst); the default is visually "
                             "lossless. Score from PNG frames, which are lossless")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of the mp4 (default: the source's exact rate and timestamps; "
                             f"{video_io.DEFAULT_FPS:g} for frame folders)")
    parser.add_argument("--tile", default=None, metavar="N|auto",
                        help="deblur in N x N tiles (bounded memory for large frames); auto: the largest tile that "
                             "fits the device's free memory")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="M",
                        help=f"pixels shared by neighbouring tiles, blended (None: {tiling.DEFAULT_OVERLAP})")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a video that decodes to fewer frames than its container announces (damaged "
                             "or truncated) instead of writing what decodes with a warning")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pvd import stream

    results = stream.deblur_video(
        args.input, args.output, weights=args.weights, device=args.device, precision=args.precision,
        size_policy=args.size_policy, side_by_side=args.side_by_side, format=args.format,
        allow_untrained=args.allow_untrained, overwrite=args.overwrite, progress=not args.quiet,
        compile=args.compile, crf=args.crf, fps=args.fps, tile=args.tile, tile_overlap=args.tile_overlap,
        strict=args.strict)
    for result in results:
        outputs = ", ".join(str(path) for path in result.outputs)
        damaged = (f" (TRUNCATED: {result.frames} of {result.announced_frames} announced frames decoded)"
                   if result.truncated else "")
        print(f"{result.name}: {result.frames} frames in {result.seconds:.1f} s "
              f"({result.frames_per_second:.2f} frames/s) -> {outputs}{damaged}")
    return 0
