"""Open Inference Protocol tensor datatypes: the one table of wire names and numpy dtypes.

Taken from `tritonclient.utils` (the OIP reference client), restricted to the fixed-size
numeric types Medserve moves as raw little-endian bytes; `BYTES` and `BF16` are not served.
"""

from __future__ import annotations

import numpy as np
from tritonclient.utils import triton_to_np_dtype

OIP_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                 "INT64", "FP16", "FP32", "FP64")
UNSUPPORTED = ("BYTES", "BF16")

DATATYPES: dict[str, np.dtype] = {name: np.dtype(triton_to_np_dtype(name))
                                  for name in OIP_DATATYPES}
NAMES: dict[np.dtype, str] = {dt: name for name, dt in DATATYPES.items()}
