"""Progress of long commands: a log line per stage with its time, a bar on long loops.

A stage logs when it starts and when it ends, with its wall time and the process's CPU time
(summed over its threads: above the wall time when the work ran on several cores, below it
when the process waited for the machine). Bars are tqdm's, drawn only when stderr is a
terminal, so logs and tests stay free of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


@contextmanager
def stage(log: logging.Logger, name: str) -> Iterator[None]:
    log.info("%s ...", name)
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    log.info("%s: %.1f s (CPU %.1f s)", name, time.perf_counter() - wall, time.process_time() - cpu)


def bar(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    return tqdm(items, desc=desc, total=total, disable=None, leave=False)
