"""Reading images and masks from files, with errors that name the file and what was expected.

Mask rule (documented in the README, applied by every source):

* 1-bit masks (Pillow mode ``"1"``) and masks whose values are all 0 or 1: foreground is ``> 0``.
* 8-bit masks: foreground is ``> 127``; 16-bit masks: ``> 32767``. RGB masks are read as their luminance.
* A mask stored losslessly (PNG, TIFF, BMP, GIF) must hold at most two levels, ``{0, 1}`` or ``{0, max}``; a label map
  such as ``{0, 1, 2}`` or a grey-level image is rejected as "not binary".
* JPEG masks carry compression noise around edges, so any value is accepted, but if more than 5 % of the pixels lie
  in the ambiguous middle band (64..191) the file is not a mask and is rejected.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

# Truncated files must raise, never decode silently into half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_LOSSY_FORMATS = {"JPEG", "MPO"}
_MID_BAND_MAX_FRACTION = 0.05


@dataclass(frozen=True)
class Sample:
    """One annotated slice.

    Attributes:
        image: ``(H, W, C)`` uint8 or uint16 as stored, or float32 for NIfTI volumes (scaled by the header's
            ``scl_slope``/``scl_inter``, otherwise unchanged: intensities can be negative, e.g. z-scored MRI or CT).
        mask: ``(H, W)`` uint8 in {0, 1}.
        group: the patient (or other unit) the slice belongs to; splits never divide a group.
        source: where it came from (file path, or ``synthetic:<seed>/<patient>/<slice>``).
    """

    image: np.ndarray
    mask: np.ndarray
    group: str
    source: str


class DataError(ValueError):
    """Bad input data. The message names the file or value and what was expected."""


@dataclass
class BadFiles:
    """Collects files skipped under ``skip_bad`` so that the count can be reported."""

    skip_bad: bool = False
    entries: list[tuple[str, str]] = field(default_factory=list)

    def handle(self, path: str | Path, error: DataError) -> None:
        """Raise ``error`` unless skipping bad files, in which case log and record it.

        A file is recorded once however often it is met: a NIfTI volume holds many rows, each of which may report it.
        """
        if not self.skip_bad:
            raise error
        if any(p == str(path) for p, _ in self.entries):
            return
        log.warning("skipping bad file %s: %s", path, error)
        self.entries.append((str(path), str(error)))

    def __len__(self) -> int:
        return len(self.entries)


MIN_SIDE = 2  # a 1-pixel-wide image is a broken export, not a scan (tests use 2x2 masks on purpose)


def _open_decoded(path: Path, what: str) -> Image.Image:
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    if not path.is_file():
        raise DataError(f"{what} path is not a file: {path}")
    return _decoded(path, path, what)


def _decoded(source, path, what: str) -> Image.Image:
    """``source`` (a path or a binary file object) opened and decoded, with every check of a file read from disk;
    ``path`` names it in errors."""
    try:
        im = Image.open(source)  # the header only: Pillow refuses images over MAX_IMAGE_PIXELS here, before decoding
        small = min(im.size) < MIN_SIDE
        if not small:
            im.load()  # forces a full decode so that truncation is caught here
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(
            f"cannot read {what} {path}: the file is truncated, corrupt or not an image ({e}); "
            f"expected a complete image file ({', '.join(IMAGE_SUFFIXES)})"
        ) from e
    if small:
        raise DataError(f"{what} {path} is {im.size[0]}x{im.size[1]} px: a scan has at least {MIN_SIDE} px on a side "
                        "(a broken export?)")
    return im


def image_to_array(im: Image.Image, name: str = "image") -> np.ndarray:
    """Convert a Pillow image to an ``(H, W, C)`` array, ``C`` in {1, 3}, dtype uint8 or uint16.

    Palette and 1-bit images become grey or RGB; alpha channels are dropped.
    """
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
        mode = im.mode
    if mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode in ("LA", "1"):
        im = im.convert("L")
    elif mode in ("I", "F"):
        arr = np.asarray(im)
        if not np.isfinite(arr).all():
            raise DataError(f"{name}: {int((~np.isfinite(arr)).sum())} pixels are NaN or infinite (mode {mode})")
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{name}: 32-bit pixel values outside 0..65535 are not supported (mode {mode})")
        return arr.astype(np.uint16)[..., None]
    elif mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)[..., None]
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(arr)


_GREY_MODES = ("1", "L", "LA", "I", "F")
_RGB_MODES = ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")


def image_header(path: str | Path) -> tuple[int, int, int]:
    """``(H, W, C)`` that :func:`read_image` would return, from the file header only (no pixel decoding).

    Lets a reader check sizes and channel counts of files whose pixels it will not need.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            bands = len(im.getbands())
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: not an image or corrupt header ({e})") from e
    if mode in _RGB_MODES:
        return h, w, 3
    if mode in _GREY_MODES or mode.startswith("I;16"):
        return h, w, 1
    return h, w, bands


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, C)`` uint8/uint16. Raises :class:`DataError` naming the file."""
    path = Path(path)
    with _open_decoded(path, "image") as im:
        return image_to_array(im, str(path))


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """:func:`read_image` of a file's bytes (an upload), with the same checks; ``name`` names it in errors."""
    with _decoded(io.BytesIO(data), name, "image") as im:
        return image_to_array(im, name)


def _levels(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values, as ``np.unique``; a histogram for 8/16-bit masks gives the same ~6x faster."""
    if arr.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=1)).astype(arr.dtype)
    return np.unique(arr)


def binarize_mask(arr: np.ndarray, *, lossy: bool, name: str) -> np.ndarray:
    """Apply the module's mask rule to a grey-level ``(H, W)`` array; returns uint8 {0, 1}."""
    if arr.ndim != 2:
        raise DataError(f"mask {name}: expected a 2-D grey-level mask, got shape {arr.shape}")
    values = _levels(arr)
    if values.size <= 2 and set(values.tolist()) <= {0, 1}:
        return (arr > 0).astype(np.uint8)
    top = 65535 if arr.dtype == np.uint16 else 255
    if not lossy:
        if set(values.tolist()) <= {0, top}:
            return (arr > top // 2).astype(np.uint8)
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise DataError(
            f"mask {name} is not binary: it holds {values.size} levels ({shown}); "
            f"expected 0/{top} (8-bit: foreground > 127), 0/1, or a 1-bit image"
        )
    mid = np.count_nonzero((arr >= top // 4) & (arr <= top - top // 4)) / arr.size
    if mid > _MID_BAND_MAX_FRACTION:
        raise DataError(
            f"mask {name} is not binary: {mid:.1%} of its pixels are mid-grey (expected JPEG masks near 0 and {top}, "
            f"at most {_MID_BAND_MAX_FRACTION:.0%} in between)"
        )
    return (arr > top // 2).astype(np.uint8)


def mask_from_image(im: Image.Image, name: str) -> np.ndarray:
    """Binarise an open Pillow image under the module's rule; returns ``(H, W)`` uint8 {0, 1}."""
    lossy = (im.format or "").upper() in _LOSSY_FORMATS
    if im.mode == "1":
        return (np.asarray(im) > 0).astype(np.uint8)
    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
    elif im.mode in ("I", "F"):
        arr = np.asarray(im)
        if not set(np.unique(arr).tolist()) <= {0, 1, 255, 65535}:
            raise DataError(f"mask {name} is not binary: mode {im.mode} with values outside 0/1/255/65535")
        # judge 0/255 by the 8-bit rule and 0/65535 by the 16-bit one
        arr = arr.astype(np.uint8 if arr.max() <= 255 else np.uint16)
    else:
        arr = np.asarray(im.convert("L"))
    return binarize_mask(arr, lossy=lossy, name=name)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as ``(H, W)`` uint8 {0, 1} under the module's rule."""
    path = Path(path)
    with _open_decoded(path, "mask") as im:
        return mask_from_image(im, str(path))


def read_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its mask and check that their sizes agree."""
    image = read_image(image_path)
    mask = read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]}; expected the same size"
        )
    return image, mask


# --- folder layouts: what the format readers share --------------------------------------------------------------

def existing_dir(root: str | Path, expected: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path does not exist: {root} (expected {expected})")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root} (expected {expected})")
    return root


def two_dirs(root: str | Path, first: str, second: str, expected: str) -> tuple[Path, Path]:
    """``root/first`` and ``root/second``, each required to exist (errors name the missing folder)."""
    root = existing_dir(root, expected)
    dirs = (root / first, root / second)
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"missing folder {d}; expected {expected}")
    return dirs


def index_files(d: Path, key, what: str) -> dict[str, Path]:
    """``{key(name): file}`` over the files of ``d`` whose ``key`` is not None; two files with one key are refused."""
    out: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        k = key(f.name) if f.is_file() else None
        if k is None:
            continue
        if k in out:
            raise DataError(f"two files hold {what} {k!r} in {d}: {out[k].name} and {f.name}")
        out[k] = f
    return out


def check_paired(have: dict[str, Path], other: dict[str, Path], what: str, other_what: str, expected) -> None:
    """Refuse the first key of ``have`` missing from ``other``, naming its file and ``expected(key, file)``."""
    missing = sorted(set(have) - set(other))
    if missing:
        first = have[missing[0]]
        raise DataError(
            f"{what} {first} has no {other_what}; expected {expected(missing[0], first)}"
            + (f"; {len(missing) - 1} more {what}s lack one" if len(missing) > 1 else "")
        )


def file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
