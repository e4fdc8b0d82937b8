"""`make preview`: a PNG grid of augmented training samples for an experiment config.

    python -m pipelines.preview --config pipelines/configs/default.yaml [key=value ...] [--n 8] [--out PATH]

Rows: the original images, one row per augmentation that is on (applied with
probability 1; the flip row draws each image's flip as training does, so
about half of a one-flip row is unchanged), and the full chain as configured. Writes
`reports/<config name>/augmentation_preview.png` and prints its path.
"""

from __future__ import annotations

import os
import sys

from pipelines.cli import config_parser, run_main


def parse_args(argv=None):
    p = config_parser("make preview", __doc__.split("\n\n")[0], "augment.rotation.max_degrees=90")
    p.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--seed", type=int, default=None,
                   help="augmentation seed (default: the config's train.seed, which training's augmentation uses)")
    p.add_argument("--out", default=None, help="PNG path (default reports/<config name>/augmentation_preview.png)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines.config import load_config
    from pipelines.errors import UserError

    cfg = load_config(args.config, args.overrides)
    if args.n < 1:
        raise UserError(f"--n must be at least 1 (got {args.n})")

    from data.streaming import naming_bad_data
    from pipelines.experiment import check_augmentation, load_data
    from pipelines.plots import preview_grid, save_png

    splits = load_data(cfg)
    check_augmentation(cfg, splits.image_shape)
    with naming_bad_data(splits):
        images = splits.train.arrays(args.n)[0]  # a seeded subset of n training images; only those are read
    seed = cfg.train.seed if args.seed is None else args.seed
    rgb = preview_grid(images, **cfg.augment.sections(), seed=seed, n=args.n, title=f"{cfg.name}: augmentation preview")
    out = args.out or os.path.join("reports", cfg.name, "augmentation_preview.png")
    print(save_png(rgb, out))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
