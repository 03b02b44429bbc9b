"""Side-by-side contact sheet: synthetic crops (left) beside real SVHN crops (right).

Both go through the same path the network's data takes: a format-1 folder, read with
`svhn.read_split`, cropped with `crops.crop_number` (union of digit boxes widened 1.3,
resized to 64x64). A person judges from this sheet whether the generator resembles SVHN.

    python scripts/contact_sheet.py                      # -> docs/figures/synth-vs-real.png
    python scripts/contact_sheet.py --sample-seed 3 --real ../shared/data/svhn-sample/train
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "svhn-sample" / "train"
DEFAULT_OUT = REPO / "docs" / "figures" / "synth-vs-real.png"


def crops_of(folder: Path, count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` crops (64, 64, 3) uint8 of photos drawn without replacement from a format-1 folder."""
    from transcribe import crops, svhn

    split = svhn.read_split(folder)
    if not split.records:
        sys.exit(f"error: {folder}: no usable records ({len(split.problems)} problems)")
    pick = np.random.default_rng(seed).permutation(len(split.records))[:count]
    images, texts = [], []
    for i in sorted(pick):
        rec = split.records[i]
        image = svhn.load_image(folder / rec.file)
        images.append(crops.crop_number(image, rec.boxes)[0])
        texts.append(rec.text)
    return images, texts


def grid(images: list[np.ndarray], texts: list[str], cols: int, scale: int, caption: int) -> Image.Image:
    """Tiles of scale*64 px, each with its label underneath."""
    size = 64 * scale
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * (size + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (img, text) in enumerate(zip(images, texts)):
        x, y = (k % cols) * size, (k // cols) * (size + caption)
        sheet.paste(Image.fromarray(img).resize((size, size), Image.NEAREST), (x, y))
        draw.text((x + 2, y + size), text, fill=(0, 0, 0))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real SVHN format-1 folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--count", type=int, default=64, help="crops per side")
    parser.add_argument("--sample-seed", type=int, default=0,
                        help="seed of the synthetic photos and of which real photos are drawn")
    parser.add_argument("--scale", type=int, default=2, help="each 64x64 crop is shown this many times larger")
    args = parser.parse_args(argv)

    from transcribe import synth

    if not args.real.exists():
        print(f"error: {args.real}: real SVHN folder not found (pass --real)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp) / "synth", args.count, seed=args.sample_seed)
        fake, fake_text = crops_of(Path(tmp) / "synth", args.count, args.sample_seed)
    real, real_text = crops_of(args.real, args.count, args.sample_seed)

    caption, title, gap = 12, 16, 24
    left = grid(fake, fake_text, 8, args.scale, caption)
    right = grid(real, real_text, 8, args.scale, caption)
    sheet = Image.new("RGB", (left.width + gap + right.width, title + max(left.height, right.height)), (255, 255, 255))
    sheet.paste(left, (0, title))
    sheet.paste(right, (left.width + gap, title))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"synthetic (transcribe.synth, seed {args.sample_seed})", fill=(0, 0, 0))
    draw.text((left.width + gap + 4, 2), f"real ({args.real.name} of {args.real.parent.name})", fill=(0, 0, 0))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    from transcribe.runs import atomic_write
    atomic_write(args.out, lambda f: sheet.save(f, format="PNG"))
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}): {len(fake)} synthetic | {len(real)} real crops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
