"""The 19 Cityscapes training classes shared by Cityscapes and BDD100K.

The labelId -> trainId table is taken from the official ``cityscapesscripts.helpers.labels``.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

_train = sorted({lab.trainId for lab in _CS_LABELS if 0 <= lab.trainId < 255})
assert _train == list(range(NUM_CLASSES))

CLASS_NAMES: tuple[str, ...] = tuple(
    next(lab.name for lab in _CS_LABELS if lab.trainId == t and not lab.ignoreInEval)
    for t in range(NUM_CLASSES)
)

#: RGB colour of each trainId (the Cityscapes palette); ignore is black.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lab in _CS_LABELS:
    if 0 <= _lab.trainId < NUM_CLASSES:
        PALETTE[_lab.trainId] = _lab.color

#: Cityscapes labelId (0..33, and -1 for the license plate) -> trainId (0..18 or 255).
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _lab in _CS_LABELS:
    if 0 <= _lab.id < 256:
        LABEL_ID_TO_TRAIN_ID[_lab.id] = _lab.trainId if 0 <= _lab.trainId < 255 else IGNORE_INDEX

#: Every labelId that the official table defines (others are unknown values in a mask).
KNOWN_LABEL_IDS = frozenset(lab.id for lab in _CS_LABELS if lab.id >= 0)

#: trainId -> one labelId that maps to it (used to write Cityscapes-encoded masks).
TRAIN_ID_TO_LABEL_ID = np.zeros(256, dtype=np.uint8)
for _t in range(NUM_CLASSES):
    TRAIN_ID_TO_LABEL_ID[_t] = next(lab.id for lab in _CS_LABELS if lab.trainId == _t)
TRAIN_ID_TO_LABEL_ID[IGNORE_INDEX] = 0  # 'unlabeled'


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 RGB in the Cityscapes palette."""
    return PALETTE[train_ids.astype(np.uint8)]
