"""
Check what the small demos learned, from a training run's checkpoint:
- sort and adder (minGPT): exact-match accuracy on the held-out problems, each answer decoded greedily
  with the KV cache from its prompt, with a few examples printed;
- Image GPT: bits per dimension on the held-out images, against the palette's unigram entropy, and a PNG
  grid of held-out images with their bottom halves completed by the model from the top halves.

$ python demos.py --out_dir=out-sort
$ python demos.py --out_dir=out-adder
$ python demos.py --out_dir=out-igpt-digits          # writes out-igpt-digits/completions.png

The functions (exact_match, bits_per_token, complete_images) take a model and arrays of examples in the
masked-example format (gpt/tokendata.py), so other scripts can call them.
"""

import math
import os

import numpy as np
import torch
from torch.nn import functional as F

import configurator
from gpt.decoding import load_for_decoding
from gpt.engine import generate
from gpt.errors import UserError
from gpt.tokendata import dataset_dir, load_meta

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
out_dir = 'out-adder'       # the training run to evaluate
ckpt_name = 'best.pt'       # 'best.pt' (lowest val loss) or 'ckpt.pt' (latest); falls back to ckpt.pt
data_dir = ''               # the prepared data (default: the one the run trained on)
split = 'val'               # 'val' (held out) or 'train'
batch_size = 500            # examples decoded at once
show = 5                    # examples printed (sort/adder)
num_images = 8              # held-out images completed (Image GPT)
num_samples = 3             # completions per image (sampled at temperature, as in the paper)
temperature = 1.0           # for image completions; 0 = greedy
png = ''                    # where the image grid goes (default: out_dir/completions.png)
seed = 1337
device = 'cpu'              # 'cpu', 'cuda', 'auto', ...
# -----------------------------------------------------------------------------


def load_examples(data_dir, split):
    """(tokens, mask), two (N, example_len) int64 arrays, of a split in the masked-example format."""
    meta = load_meta(data_dir)
    if meta.get('format') != 'examples':
        raise UserError(f"{data_dir} is not in the examples format (meta.json has no format='examples')")
    L = meta['example_len']
    tokens = np.fromfile(os.path.join(data_dir, f'{split}.bin'), dtype=meta['dtype']).astype(np.int64)
    mask = np.fromfile(os.path.join(data_dir, f'{split}.mask.bin'), dtype=np.uint8).astype(np.int64)
    return tokens.reshape(-1, L), mask.reshape(-1, L)


def answer_span(mask):
    """(start, end) of the targets, the same in every row: the prompt is tokens[:, :start], the answer
    tokens[:, start:end]. Exact match needs one contiguous answer per example."""
    cols = np.flatnonzero(mask.any(axis=0))
    start, end = int(cols[0]), int(cols[-1]) + 1
    if not (mask[:, start:end] == 1).all() or mask[:, :start].any() or mask[:, end:].any():
        raise UserError("exact match needs every example's targets in one run at the same positions")
    return start, end


@torch.no_grad()
def exact_match(model, tokens, mask, batch_size=500):
    """Greedy answers to every example's prompt, with the KV cache. Returns (accuracy, predicted answers
    (N, answer length)): an example counts when all of its answer tokens are right."""
    start, end = answer_span(mask)
    dev = model.transformer.wte.weight.device
    preds = []
    for i in range(0, len(tokens), batch_size):
        prompt = torch.as_tensor(tokens[i:i + batch_size, :start], device=dev)
        preds.append(generate(model, prompt, end - start, temperature=0)[:, start:].cpu().numpy())
    preds = np.concatenate(preds)
    return float((preds == tokens[:, start:end]).all(axis=1).mean()), preds


@torch.no_grad()
def bits_per_token(model, tokens, mask, batch_size=500):
    """Mean negative log-likelihood of the target tokens, in bits, over all the examples (not a sample)."""
    dev = model.transformer.wte.weight.device
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        x = torch.as_tensor(tokens[i:i + batch_size], device=dev)
        m = torch.as_tensor(mask[i:i + batch_size, 1:], device=dev).bool()
        logits, _ = model(x[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction='none')  # (B, T) in nats
        total += float(nll[m].sum())
        count += int(m.sum())
    return total / count / math.log(2)


@torch.no_grad()
def complete_images(model, tokens, keep, num_samples=1, temperature=1.0, generator=None):
    """Complete examples (N, 1 + pixels: the start token, then palette ids in raster order) from their
    first `keep` pixels. Returns (N, num_samples, pixels) palette ids."""
    dev = model.transformer.wte.weight.device
    n_pix = tokens.shape[1] - 1
    prompt = torch.as_tensor(tokens[:, :1 + keep], device=dev).repeat_interleave(num_samples, dim=0)
    out = generate(model, prompt, n_pix - keep, temperature=temperature, generator=generator)[:, 1:].cpu().numpy()
    # the start token is never a target, so the model gives it ~0 probability; should it be drawn anyway,
    # show it as the last colour rather than fail on a palette lookup
    return np.minimum(out, model.config.vocab_size - 2).reshape(len(tokens), num_samples, n_pix)


def save_grid(path, rows, palette, pixel_max, shape, titles):
    """Write a PNG grid: one row per image, its columns the palette-id arrays of `rows` (N, columns,
    pixels), with -1 for pixels to show as missing (drawn in red). Colours are palette / pixel_max."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    palette = np.asarray(palette, dtype=np.float64) / pixel_max
    rgb = np.clip(palette if palette.shape[1] == 3 else np.repeat(palette, 3, axis=1), 0, 1)
    rgb = np.concatenate([rgb, [[1.0, 0.0, 0.0]]])  # index -1: missing
    n, cols = rows.shape[:2]
    fig, axes = plt.subplots(n, cols, figsize=(1.2 * cols, 1.2 * n), squeeze=False)
    for i in range(n):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(rgb[rows[i, j]].reshape(*shape, 3), interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def show_problem(task, meta, row, start, pred):
    """One example as text: the problem, the model's answer and the right one."""
    d = lambda ids: ''.join(str(int(t)) for t in ids)  # noqa: E731
    if task == 'adder':
        n = meta['ndigit']
        a, b = int(d(row[:n])), int(d(row[n:2 * n]))
        got = int(d(pred[::-1]))  # the sum is written lowest digit first
        return f"{a} + {b} = {got}" + ('' if got == a + b else f"   wrong, {a + b}")
    return f"sort {d(row[:start])} -> {d(pred)}" + ('' if (pred == row[start:]).all() else f"   wrong, {d(row[start:])}")


def main():
    d = load_for_decoding('resume', out_dir, ckpt_name, device, rows=batch_size)
    model, ckpt, dev = d.model, d.ckpt, d.device
    folder = data_dir or ckpt['config'].get('data_dir') or dataset_dir(ckpt['config']['dataset'])[0]
    meta = load_meta(folder)
    task = meta.get('task')
    tokens, mask = load_examples(folder, split)
    print(f"{out_dir}/{ckpt_name}: iteration {ckpt['iter_num']}, {model.num_params() / 1e6:.2f}M parameters; "
          f"{len(tokens)} {split} examples from {folder}")
    if task in ('sort', 'adder'):
        acc, preds = exact_match(model, tokens, mask, batch_size)
        start, _ = answer_span(mask)
        for row, pred in zip(tokens[:show], preds[:show]):
            print('  ' + show_problem(task, meta, row, start, pred))
        wrong = int(round((1 - acc) * len(tokens)))
        print(f"exact match on {split}: {acc * 100:.2f}% ({len(tokens) - wrong}/{len(tokens)})")
    elif task == 'image':
        bits = bits_per_token(model, tokens, mask, batch_size)
        channels = meta['channels']
        print(f"{split}: {bits:.3f} bits per pixel = {bits / channels:.3f} bits per dimension ({channels} "
              f"channel(s)); the palette's unigram entropy: {meta['unigram_entropy_bits']:.3f} bits per pixel "
              f"(a model that ignores context)")
        H, W = meta['height'], meta['width']
        keep = (H // 2) * W  # the top half, in raster order
        g = torch.Generator(device=dev).manual_seed(seed)
        pick = tokens[:num_images]
        done = complete_images(model, pick, keep, num_samples, temperature, g)
        pixels = pick[:, 1:]
        half = np.where(np.arange(H * W) < keep, pixels, -1)
        rows = np.concatenate([pixels[:, None], half[:, None], done], axis=1)
        path = png or os.path.join(out_dir, 'completions.png')
        save_grid(path, rows, meta['palette'], meta['pixel_max'], (H, W),
                  ['original', 'top half'] + [f'completion {i + 1}' for i in range(num_samples)])
        print(f"wrote {path}: {num_images} {split} images, top halves completed {num_samples} times "
              f"(temperature {temperature})")
    else:
        raise UserError(f"{folder}/meta.json names no demo task (sort, adder or image), got {task!r}")


if __name__ == '__main__':
    configurator.configure(globals(), verbose=False)
    main()
