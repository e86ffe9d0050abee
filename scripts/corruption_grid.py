"""Draws every corruption at every severity on real images, as one PNG grid.

Rows are the registered corruptions (``jaxrobust.corruptions.names()``), columns
severities 1..5 and the clean image. Row r shows image r mod N of the N images
loaded (the first image of each class folder, in sorted order).

Usage (from the repository root):

  python scripts/corruption_grid.py                       # CIFAR-10 test images
  python scripts/corruption_grid.py ../shared/data/cifar10/test docs/corruption_grid.png
  python scripts/corruption_grid.py --size=224 --out=/tmp/grid224.png   # ImageNet table
"""

import argparse
import os
import pathlib
import sys

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxrobust import corruptions  # pylint: disable=g-import-not-at-top

_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def load_images(folder, count, size=None):
  """Loads up to ``count`` images: the first file of each class subfolder.

  Args:
    folder: directory in ``class/image`` layout (or a flat folder of images).
    count: number of images.
    size: optional side length to resize to (bilinear); None keeps the size.

  Returns:
    float32 array [N, H, W, 3] in [0, 1].
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ValueError(f'image folder {str(folder)!r} does not exist')
  classes = sorted(p for p in folder.iterdir() if p.is_dir()) or [folder]
  files = []
  for rank in range(count):
    for c in classes:
      images = sorted(p for p in c.iterdir() if p.suffix.lower() in _EXTENSIONS)
      if rank < len(images):
        files.append(images[rank])
      if len(files) == count:
        break
    if len(files) == count:
      break
  if not files:
    raise ValueError(f'no images ({", ".join(_EXTENSIONS)}) found under {str(folder)!r}')
  out = []
  for f in files:
    img = Image.open(f).convert('RGB')
    if size:
      img = img.resize((size, size), Image.BILINEAR)
    out.append(np.asarray(img, np.float32) / 255.0)
  return np.stack(out)


def corruption_grid(images, seed=0, table=None):
  """Returns a [rows][6] list of HxWx3 arrays: severities 1..5 and clean."""
  rows = []
  key = jax.random.key(seed)
  for r, name in enumerate(corruptions.names()):
    img = images[r % len(images)][None]
    fn = jax.jit(lambda x, k, name=name: [corruptions.corrupt(x, name, s, k, table=table)
                                          for s in corruptions.SEVERITIES])
    outs = fn(img, jax.random.fold_in(key, r))
    rows.append([np.asarray(o[0]) for o in outs] + [img[0]])
  return rows


def save_grid(rows, path, cell_inches=1.0):
  """Plots the grid with matplotlib and writes it to ``path`` (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = corruptions.names()
  n_rows, n_cols = len(rows), len(rows[0])
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols + 1.6,
                                                    cell_inches * n_rows + 0.4))
  titles = [f'severity {s}' for s in corruptions.SEVERITIES] + ['clean']
  for r in range(n_rows):
    for c in range(n_cols):
      ax = axes[r, c]
      img = np.clip(rows[r][c], 0, 1)
      ax.imshow(img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3
                else 'gray', vmin=0, vmax=1, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(titles[c], fontsize=8)
      if c == 0:
        ax.set_ylabel(names[r], fontsize=7, rotation=0, ha='right', va='center')
  fig.tight_layout(pad=0.2)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folder', nargs='?', default='../shared/data/cifar10/test',
                      help='image folder in class/image layout')
  parser.add_argument('out', nargs='?', default='docs/corruption_grid.png',
                      help='output PNG path')
  parser.add_argument('--out', dest='out_flag', default=None, help='output PNG path')
  parser.add_argument('--num_images', type=int, default=10)
  parser.add_argument('--size', type=int, default=None,
                      help='resize images to this side first (e.g. 224 for the ImageNet table)')
  parser.add_argument('--table', choices=corruptions.TABLES, default=None,
                      help='severity table (default: by image size)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  out = args.out_flag or args.out
  images = load_images(args.folder, args.num_images, args.size)
  rows = corruption_grid(images, args.seed, args.table)
  save_grid(rows, out, cell_inches=1.0 if images.shape[1] <= 64 else 2.0)
  print(f'wrote {out}: {len(rows)} corruptions x 5 severities + clean, '
        f'{images.shape[1]}x{images.shape[2]} images')


if __name__ == '__main__':
  main()
