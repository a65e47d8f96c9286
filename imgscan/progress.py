"""One self-erasing status line on stderr while layers are read, shown only when stderr is a terminal:
a 5 GB image takes most of a minute, and a silent minute looks like a hang. Pipes and CI logs get
nothing (their stderr keeps the one-line error contract).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

_CLEAR = "\r\x1b[K"


class LayerProgress:
    """'imgscan: read 2 of 5 layers (412 of 1,295 MiB)' as layers finish; erased by done()."""

    def __init__(self, total_layers: int, total_bytes: int, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() and not os.environ.get("IMGSCAN_NO_PROGRESS")
        self._total_layers = total_layers
        self._total_bytes = total_bytes
        self._layers = 0
        self._bytes = 0
        self._shown = False

    def layer_done(self, size: int | None) -> None:
        self._layers += 1
        self._bytes += size or 0
        if not self._enabled:
            return
        mib = f" ({self._bytes / 2**20:,.0f} of {self._total_bytes / 2**20:,.0f} MiB)"
        sizes = mib if self._total_bytes else ""
        self._stream.write(f"{_CLEAR}imgscan: read {self._layers} of {self._total_layers} layers{sizes}")
        self._stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self._stream.write(_CLEAR)
            self._stream.flush()
            self._shown = False
