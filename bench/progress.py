"""Progress bars: tqdm when installed (the `bench` extra), else one line per step."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, total: int, desc: str) -> None:
        self.desc = desc
        self.total = total
        self.count = 0
        self._bar: Any = None
        try:
            from tqdm import tqdm
        except ImportError:
            print(f"[{desc}] {total} steps", file=sys.stderr)
        else:
            self._bar = tqdm(
                total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True, file=sys.stderr
            )

    def advance(self, label: str) -> None:
        self.count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
        else:
            print(f"[{self.desc}] {self.count}/{self.total} {label}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
