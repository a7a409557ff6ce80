"""`pvd synth`: render a synthetic blurry/sharp/flow video data set (GoPro layout) from photographs."""

from __future__ import annotations

import argparse

from pvd.commands import HELP, command_parser, parse_size

NAME = "synth"


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..data.synth import SynthSettings

    defaults = SynthSettings()
    parser = command_parser(
        subparsers, NAME,
        description=HELP[NAME] + ". Writes OUT/<video>/blur_gamma/%05d.png, sharp/%05d.png, "
        "flow/%05d.npy (float32 (2,H,W), x then y, pixels: warp(sharp[t-1], flow[t]) ~= sharp[t]) and OUT/synth.json.")
    parser.add_argument("out", nargs="?", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--videos", type=int, default=4, help="number of videos (default 4)")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="frames per video")
    parser.add_argument("--size", type=parse_size, default=(defaults.height, defaults.width), metavar="HxW",
                        help=f"frame size (default {defaults.height}x{defaults.width})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--subframes", type=int, default=defaults.subframes,
                        help="sub-frames averaged into each blurry frame")
    parser.add_argument("--max-shift", type=float, default=defaults.max_shift,
                        help="peak camera translation, pixels per frame")
    parser.add_argument("--max-rotation", type=float, default=defaults.max_rotation,
                        help="peak camera rotation, degrees per frame")
    parser.add_argument("--max-zoom", type=float, default=defaults.max_zoom,
                        help="peak camera zoom, relative scale change per frame")
    parser.add_argument("--object-probability", type=float, default=defaults.object_probability,
                        help="chance of a moving foreground object per video")
    parser.add_argument("--max-object-shift", type=float, default=defaults.max_object_shift,
                        help="peak object translation, pixels per frame")
    parser.add_argument("--images", metavar="DIR", help="use the png/jpg images of DIR instead of the built-in "
                        "scikit-image photographs (names are the file stems)")
    parser.add_argument("--photos", type=_names, metavar="NAMES", help="comma-separated photographs to use")
    parser.add_argument("--exclude", type=_names, metavar="NAMES",
                        help="comma-separated photographs to leave out (e.g. a held-out test set)")
    parser.add_argument("--list-photos", action="store_true", help="print the available photographs and exit")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..data import synth

    if args.list_photos:
        if args.images:
            names = sorted(synth.load_photograph_folder(args.images))
            for name in names:
                print(name)
        else:
            for name in synth.builtin_photograph_names():
                print(f"{name:<22} {synth.BUILTIN_PHOTOGRAPHS[name][1]}")
        return 0
    if args.out is None:
        raise ValueError("OUT is required (or use --list-photos)")
    settings = synth.SynthSettings(
        frames=args.frames, height=args.size[0], width=args.size[1], subframes=args.subframes,
        max_shift=args.max_shift, max_rotation=args.max_rotation, max_zoom=args.max_zoom,
        object_probability=args.object_probability, max_object_shift=args.max_object_shift)
    if args.images:
        available = synth.load_photograph_folder(args.images)
        chosen = synth.select_photographs(list(available), args.photos, args.exclude)
        photographs = {name: available[name] for name in chosen}
        source = f"folder {args.images}"
    else:
        chosen = synth.select_photographs(synth.builtin_photograph_names(), args.photos, args.exclude)
        photographs = synth.load_builtin_photographs(chosen)
        source = "scikit-image"
    out = synth.generate_dataset(args.out, photographs, args.videos, settings, args.seed, source=source,
                                 overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.videos} videos of {args.frames} frames to {out} (photographs: {', '.join(chosen)})")
    return 0
