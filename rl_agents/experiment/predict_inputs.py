"""What ``pixeldrl predict`` will segment, checked before any output is written.

A folder is read for the scans in it, not for the truth beside them: the data layouts this project reads keep masks
as ``<stem>_mask.*`` (LGG), in ``masks/`` or ``labelsTr/`` folders, and predict's own outputs end in ``_pred``,
``_uncertainty``, ``_overlay`` or ``_steps``; those files are skipped (and counted), as is anything matching a user's
``--exclude`` pattern. Every file is then opened far enough to know its shape (image header, NIfTI header) and
checked against the checkpoint's model (channels, dimensions), so a bad file is refused in one line naming it before
the first mask is written.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from pixelrl_env.io import DataError, image_header
from pixelrl_env.nifti import nifti_image_shape

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# truth files of the layouts the readers know, other common label names, and predict's own outputs
_NOT_A_SCAN = re.compile(r"_(mask|masks|seg|label|labels|gt|truth|pred|uncertainty|overlay|steps)$", re.IGNORECASE)
_TRUTH_DIRS = {"masks", "labels", "labelstr", "labelsts"}


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _readable_kind(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p)


def _skipped(p: Path, exclude: tuple[str, ...]) -> bool:
    return (bool(_NOT_A_SCAN.search(stem(p))) or p.parent.name.lower() in _TRUTH_DIRS
            or any(fnmatch.fnmatch(p.name, pat) for pat in exclude))


@dataclass
class Inputs:
    """The files to segment, in order, and what folders held that was left out (truth, earlier outputs)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def expand_inputs(inputs: list[str | Path], exclude: tuple[str, ...] = ()) -> Inputs:
    """Files and folders to the files to segment; refuses what is missing or of an unknown kind.

    A file named on the command line is taken as given (unless ``exclude`` matches it); a folder contributes the
    images and volumes directly in it that are not truth files or earlier outputs (module docstring).
    """
    found = Inputs()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            kinds = sorted(q for q in p.iterdir() if q.is_file() and _readable_kind(q))
            keep = [q for q in kinds if not _skipped(q, exclude)]
            found.skipped.extend(q for q in kinds if q not in keep)
            if not keep:
                left = f" ({len(kinds)} skipped as masks, labels or earlier outputs)" if kinds else ""
                raise DataError(f"{p} holds no image ({', '.join(IMAGE_SUFFIXES)}) or NIfTI "
                                f"({', '.join(NIFTI_SUFFIXES)}) file to segment{left}")
            found.files.extend(keep)
        elif p.is_file():
            if not _readable_kind(p):
                raise DataError(f"{p}: unknown kind of input; expected an image ({', '.join(IMAGE_SUFFIXES)}), a "
                                f"NIfTI volume ({', '.join(NIFTI_SUFFIXES)}) or a folder of them")
            if any(fnmatch.fnmatch(p.name, pat) for pat in exclude):
                found.skipped.append(p)
            else:
                found.files.append(p)
        else:
            raise DataError(f"input not found: {p}")
    if not found.files:
        raise DataError(f"nothing to segment: every input matched --exclude {' '.join(exclude)}")
    return found


def channels_expected(in_channels: int, channels: list[int] | None, context: int) -> str:
    """The model's input, said in a user's terms (what a file must hold)."""
    per_slice = in_channels // (2 * context + 1)
    if channels is not None:
        return f"at least {max(channels) + 1} channel(s) (the model reads channels {channels})"
    return f"{per_slice} channel(s){' per slice' if context else ''}"


def check_channels(source: str, n: int, in_channels: int, channels: list[int] | None, context: int) -> None:
    """Refuse an input of ``n`` channels that the model (``in_channels``, trained with ``data.channels`` and
    ``data.context``) cannot take, naming the file and what it needs."""
    if channels is not None:
        ok = 0 <= min(channels) and max(channels) < n
    else:
        ok = n * (2 * context + 1) == in_channels
    if not ok:
        grey = channels is None and in_channels == 2 * context + 1  # one channel a slice
        hint = " (convert it to greyscale)" if n == 3 and grey else ""
        raise DataError(f"{source} has {n} channel(s); this model takes "
                        f"{channels_expected(in_channels, channels, context)}{hint}")


def preflight(files: list[Path], in_channels: int, channels: list[int] | None, context: int) -> None:
    """Open every file's header and check it against the model; the first file that cannot be segmented raises."""
    for f in files:
        if is_nifti(f):
            nifti_image_shape(f)  # a readable 3-D volume of one channel
            check_channels(str(f), 1, in_channels, channels, context)
        else:
            check_channels(str(f), image_header(f)[2], in_channels, channels, context)
