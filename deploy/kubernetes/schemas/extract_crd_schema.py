"""Extract the openAPIV3Schema of each version of a CustomResourceDefinition into `<kind>-<version>.json`.

The test suite validates the PodMonitor and PrometheusRule manifests offline against these files, so they are
kept in the repository; this script is how they were made (see README.md here for the release):

    python extract_crd_schema.py monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_prometheusrules.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def extract(crd_file: Path, out_dir: Path) -> list[Path]:
    written = []
    for crd in yaml.safe_load_all(crd_file.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            out = out_dir / f"{kind.lower()}-{version['name']}.json"
            schema = version["schema"]["openAPIV3Schema"]
            out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            written.append(out)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd_files", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    for crd_file in args.crd_files:
        for path in extract(crd_file, args.out_dir):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
