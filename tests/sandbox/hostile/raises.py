"""Raises the exception class named by `kind`, to exercise every outcome family."""

import builtins


def run(kind="ValueError"):
    if kind == "RecursionError":
        def again():
            return again()
        again()
    raise getattr(builtins, kind)(f"boom: {kind}")
