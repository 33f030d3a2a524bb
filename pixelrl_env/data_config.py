"""What data a run reads and how it is prepared: :class:`DataConfig`, checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .io import DataError
from .sources import FORMATS

NORMALIZATIONS = ("minmax", "zscore", "none")
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared. All fields can be set from YAML or ``--set data.x=y``."""

    format: str = "synthetic"  # lgg | folder | parquet | synthetic | nifti
    path: str | None = None  # folder, or Parquet path/URI; unused for synthetic
    size: int | None = 128  # square side after resizing; None keeps the native size (needs equal sizes)
    channels: list[int] | None = None  # channel indices to keep, e.g. [1] = FLAIR of LGG; None = all
    # per image and channel: minmax (1st-99th percentile to [0, 1]) | zscore | none (integer images divided by their
    # dtype max, 255 or 65535; float images, i.e. NIfTI, kept as stored)
    normalize: str = "minmax"
    drop_empty: bool = True  # drop slices without foreground, as the paper does
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test fractions of groups
    seed: int = 0  # seeds the split of groups into train/val/test (and the synthetic images)
    # patient-level k-fold cross-validation: k folds of groups, fold `fold` is the test set, validation groups are
    # split[1] / (split[0] + split[1]) of the rest (split[2] unused); null = the train/val/test split above
    folds: int | None = None
    fold: int = 0  # which fold (0..folds-1) is the test set
    k_shot: int | None = None  # keep only k training slices (50, 100 in the paper's low-resource study)
    # with drop_empty: keep this fraction of the training split's empty slices (ours; a user's scan is mostly empty
    # slices, which a model trained on foreground slices only never saw)
    train_empty: float = 0.0
    skip_bad: bool = False  # log and skip unreadable or invalid files instead of stopping
    group_pattern: str | None = None  # folder format: regex on the file stem giving the patient id
    context: int = 0  # 2.5-D: this many neighbouring slices on either side of a slice join it as channels (ours)
    slice_axis: int = -1  # nifti: the volume axis cut into 2-D slices (-1 = last, the axial axis of MSD volumes)
    label_value: int | None = None  # nifti: foreground = label == this value; null = any label > 0
    # the built-in generator: patients, slices per patient, image side, difficulty (easy | medium | hard)
    synthetic: dict = field(
        default_factory=lambda: {"n_patients": 20, "slices_per_patient": 8, "size": 128, "difficulty": "easy"}
    )

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"data.format {self.format!r} unknown; expected one of {', '.join(FORMATS)}")
        if self.normalize not in NORMALIZATIONS:
            raise DataError(f"data.normalize {self.normalize!r} unknown; expected one of {', '.join(NORMALIZATIONS)}")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise DataError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        if self.size is not None and self.size < 8:
            raise DataError(f"data.size must be >= 8 or null, got {self.size}")
        if self.k_shot is not None and self.k_shot < 1:
            raise DataError(f"data.k_shot must be >= 1 or null, got {self.k_shot}")
        if not 0.0 <= self.train_empty <= 1.0:
            raise DataError(f"data.train_empty must be a fraction in [0, 1], got {self.train_empty}")
        if isinstance(self.slice_axis, bool) or not isinstance(self.slice_axis, int) or not -3 <= self.slice_axis <= 2:
            raise DataError(
                f"data.slice_axis must be -3..2 (an axis of a 3-D volume, -1 = last), got {self.slice_axis!r}"
            )
        if self.label_value is not None and (
            isinstance(self.label_value, bool) or not isinstance(self.label_value, int) or self.label_value < 1
        ):
            raise DataError(
                f"data.label_value must be a label >= 1 (0 is background) or null, got {self.label_value!r}"
            )
        if isinstance(self.context, bool) or not isinstance(self.context, int) or not 0 <= self.context <= 8:
            raise DataError(f"data.context must be an integer 0..8 (neighbouring slices on each side), "
                            f"got {self.context!r}")
        if self.context and self.skip_bad:
            raise DataError("data.context needs every slice of a volume (a skipped bad slice would shift its "
                            "neighbours); set data.skip_bad=false, or data.context=0")
        if self.folds is None:
            if self.fold != 0:
                raise DataError(f"data.fold={self.fold} needs data.folds (k of k-fold cross-validation); it is null")
        else:
            if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
                raise DataError(f"data.folds must be an integer >= 2 or null, got {self.folds!r}")
            if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not 0 <= self.fold < self.folds:
                raise DataError(
                    f"data.fold must be in 0..{self.folds - 1} for data.folds={self.folds}, got {self.fold!r}"
                )
            if self.split[0] + self.split[1] <= 0:
                raise DataError(f"data.folds needs data.split[0] + data.split[1] > 0 (train and val), got {self.split}")
