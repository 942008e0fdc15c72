"""The Dockerfile read as instructions: what the manifest checks and the install test share."""

import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in dockerfile("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def dockerfile_copy_sources() -> list[str]:
    """The build-context paths the `COPY` instructions take (multi-stage `--from` copies are refused)."""
    sources: list[str] = []
    for args in dockerfile("COPY"):
        words = shlex.split(args)
        assert not any(w.startswith("--from") for w in words), f"COPY {args}: not from the build context"
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources
