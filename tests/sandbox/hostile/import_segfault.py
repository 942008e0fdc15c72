"""Crashes the interpreter while being imported (a native extension gone wrong)."""

import ctypes

ctypes.string_at(0)


def run():
    return "never"
