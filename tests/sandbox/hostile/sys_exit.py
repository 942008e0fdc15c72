import sys


def run():
    sys.exit(2)
