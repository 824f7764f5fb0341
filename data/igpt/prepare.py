"""
Image GPT's data (Chen et al. 2020): images as sequences of palette indices in raster order.

The paper clusters the (R, G, B) values of the training pixels with k-means (k = 512, a 9-bit palette,
3 bits per channel), replaces every pixel by its nearest cluster, and reads the image row by row, left
to right: one token per pixel. Each example here is a start token (id k, never a target: the paper's
learned SOS) followed by the H*W pixel tokens, all of which carry loss (the masked-example format,
data/prepare_utils.py). The palette is fitted on the training images only.

Default, offline: scikit-learn's handwritten digits (1,797 grayscale 8x8 images, 17 intensity levels
0..16, shipped inside the package). One channel at 3 bits, as the paper has per channel: k = 8.
With network: CIFAR-10 by hub name (32x32 RGB, k = 512 as in the paper).

$ python data/igpt/prepare.py                                             # digits -> data/igpt/
$ python data/igpt/prepare.py --source=cifar10 --k=512 --out_dir=data/igpt_cifar10
"""

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import get_parser, write_examples


def fit_palette(pixels, k, seed=1337, max_pixels=200_000):
    """k-means over pixel values (M, C): the k cluster centres (k, C), darkest first. Fitted on at most
    max_pixels pixels drawn at random (the paper's palette is a fixed property of the data set)."""
    from sklearn.cluster import KMeans
    pixels = np.asarray(pixels, dtype=np.float64)
    distinct = len(np.unique(pixels, axis=0))
    if k > distinct:
        raise SystemExit(f"error: --k={k} but the training pixels take only {distinct} different values; "
                         f"use --k={distinct} or fewer")
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    centres = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(pixels).cluster_centers_
    return centres[np.argsort(centres.sum(axis=1), kind='stable')]  # ids ordered by brightness


def quantize(images, palette, chunk=16384):
    """(N, H, W, C) images -> (N, H*W) palette ids in raster order (row by row, left to right): each
    pixel's nearest palette colour."""
    n, h, w, c = images.shape
    flat = np.asarray(images, dtype=np.float64).reshape(n * h * w, c)  # C order: raster order
    palette = np.asarray(palette, dtype=np.float64)
    ids = np.empty(len(flat), dtype=np.int64)
    for i in range(0, len(flat), chunk):  # chunk x k distances at a time: bounded memory for CIFAR's k = 512
        x = flat[i:i + chunk]
        # |x - p|^2 without the |x|^2 every centre shares
        ids[i:i + len(x)] = ((palette ** 2).sum(1)[None] - 2 * x @ palette.T).argmin(1)
    return ids.reshape(n, h * w)


def dequantize(ids, palette, h, w):
    """(N, H*W) palette ids in raster order -> (N, H, W, C) images of palette colours."""
    return np.asarray(palette)[np.asarray(ids)].reshape(len(ids), h, w, -1)


def make_examples(ids, k):
    """(tokens, mask): the start token k, then the pixel ids; every pixel is a target."""
    tokens = np.concatenate([np.full((len(ids), 1), k, dtype=np.int64), ids], axis=1)
    mask = np.ones_like(tokens, dtype=np.uint8)
    mask[:, 0] = 0
    return tokens, mask


def entropy_bits(ids, k):
    """The entropy (bits) of the palette ids' frequencies: what a model that ignores context achieves."""
    p = np.bincount(np.asarray(ids).ravel(), minlength=k) / np.asarray(ids).size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def load_digits(val_fraction, seed):
    """scikit-learn's 8x8 digits (offline): (train, val) images (N, 8, 8, 1), values 0..16, and labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.images))
    n_val = int(len(order) * val_fraction)
    images = d.images[..., None]
    return (images[order[n_val:]], images[order[:n_val]]), 16.0, 'sklearn.datasets.load_digits'


def load_cifar10(hub_name, max_images):
    """CIFAR-10 from the Hugging Face hub (needs network once): its train and test splits as
    (N, 32, 32, 3) uint8 images."""
    from gpt.hubdata import load_dataset
    ds = load_dataset(hub_name, instead='pass --source digits (offline)')
    column = next(c for c in ('img', 'image') if c in ds['train'].column_names)
    splits = [np.stack([np.asarray(im.convert('RGB')) for im in ds[s][:max_images][column]]) for s in ('train', 'test')]
    return tuple(splits), 255.0, f"hf:{hub_name}"


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--source", choices=("digits", "cifar10"), default="digits",
                        help="digits (offline, scikit-learn) or cifar10 (hub, needs network) (default: %(default)s)")
    parser.add_argument("--k", type=int, default=0,
                        help="palette size: k-means clusters (default: 8 for digits, 512 for cifar10)")
    parser.add_argument("--val_fraction", type=float, default=0.2,
                        help="digits held out as val (CIFAR-10 uses its test split) (default: %(default)s)")
    parser.add_argument("--hub_name", default="uoft-cs/cifar10", help="CIFAR-10 on the hub (default: %(default)s)")
    parser.add_argument("--max_images", type=int, default=50_000, help="CIFAR-10 images per split (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1337, help="val split and k-means (default: %(default)s)")
    args = parser.parse_args()

    if args.source == "digits":
        (train, val), pixel_max, source = load_digits(args.val_fraction, args.seed)
    else:
        (train, val), pixel_max, source = load_cifar10(args.hub_name, args.max_images)
    k = args.k or (8 if args.source == "digits" else 512)
    n, h, w, c = train.shape
    print(f"{source}: {n} train and {len(val)} val images of {h}x{w}x{c}; fitting a {k}-colour palette")
    palette = fit_palette(train.reshape(-1, c), k, args.seed)
    train_ids, val_ids = quantize(train, palette), quantize(val, palette)
    err = np.abs(dequantize(val_ids, palette, h, w) - val).mean() / pixel_max
    unigram = entropy_bits(train_ids, k)
    print(f"palette: mean absolute error {err:.4f} of the range on val; unigram entropy {unigram:.3f} bits per pixel "
          f"(raw: {math.log2(k):.0f} bits)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_examples(args.out_dir, {"train": make_examples(train_ids, k), "val": make_examples(val_ids, k)},
                   vocab_size=k + 1, tokenizer="palette", task="image", source=source, k=k, sos=k,
                   palette=palette.round(4).tolist(), pixel_max=pixel_max, height=h, width=w, channels=c,
                   unigram_entropy_bits=unigram, seed=args.seed)


if __name__ == "__main__":
    main()
