"""cellseg: StarDist segmentation of microscopy images, with transfer learning.

The backend knows nothing of KNIME: numpy arrays in, numpy arrays out, TensorFlow inside.
"""

from __future__ import annotations

import os

# Quieten TensorFlow's C++ logging (its tf.data graph rewrites log harmless errors) before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.3.0"

from cellseg.errors import CancelledError, CellsegError, InputError, ModelLoadError  # noqa: E402

__all__ = ["CancelledError", "CellsegError", "InputError", "ModelLoadError", "__version__"]
