"""Print the project's requirements (pyproject.toml), one a line, for `pip install -r -`.

Usage: python scripts/requirements.py [--extra NAME]... [--without NAME]...
The gateway image installs `--extra platform --without torch --without accelerate`, then the
project itself with `--no-deps`: it validates specs and never trains, so it carries no torch.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirement_name(requirement: str) -> str:
    """`uvicorn[standard]>=0.29` -> `uvicorn` (normalised: lower case, `_`/`.` as `-`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"{PYPROJECT}: cannot read the requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(extras: list[str], without: list[str]) -> list[str]:
    """The base dependencies plus `extras`, less the packages named in `without`."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"{PYPROJECT}: no extra {unknown} (known: {sorted(optional)})")
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += optional[extra]
    drop = {requirement_name(w) for w in without}
    missing = drop - {requirement_name(r) for r in reqs}
    if missing:
        raise SystemExit(f"{PYPROJECT}: --without {sorted(missing)}: not a requirement")
    return [r for r in reqs if requirement_name(r) not in drop]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="an optional extra")
    parser.add_argument("--without", action="append", default=[], help="a package to leave out")
    args = parser.parse_args()
    print("\n".join(requirements(args.extra, args.without)))


if __name__ == "__main__":
    main()
