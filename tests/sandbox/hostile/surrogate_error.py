"""Raises with a lone surrogate in its message: what a non-UTF-8 file name decoded with `surrogateescape` gives."""

import os


def run():
    name = os.fsdecode(b"report-\xff.txt")  # 'report-\udcff.txt'
    raise RuntimeError(f"cannot read {name}")
