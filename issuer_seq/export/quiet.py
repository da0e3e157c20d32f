"""Quieter third-party logging around export steps.

The exporter, its optimizer and the quantizer log every node they touch at INFO, some on
the root logger; under the CLI's INFO logging that buries the export's own report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

_NOISY = {
    "": logging.WARNING,
    # warns once per missing torchvision op: none of them is used here
    "torch.onnx": logging.ERROR,
    # warns for every Split it leaves unfolded: a missed optimization, not a problem
    "onnxscript.optimizer": logging.ERROR,
}


@contextmanager
def quiet_libraries() -> Iterator[None]:
    loggers = {name: logging.getLogger(name) for name in _NOISY}
    saved = {name: lg.level for name, lg in loggers.items()}
    try:
        for name, lg in loggers.items():
            lg.setLevel(max(_NOISY[name], lg.getEffectiveLevel()))
        yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(saved[name])
