"""`python -m stmkit.report <profile> [--tables-only]`: rebuild REPORT.md and update README.md from the recorded runs."""

from __future__ import annotations

import argparse

from ..experiment import REPO_ROOT, results_root
from .build import build_report
from .readme import update_readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stmkit.report",
                                     description="Rebuild REPORT.md and update README.md from the recorded runs.")
    parser.add_argument("profile", nargs="?", default="cpu-demo")
    parser.add_argument("--tables-only", action="store_true",
                        help="update only README's verdict and siblings tables, not the paper map's wall times "
                             "(after a warm or partial run, whose times are not the cold ones the map quotes)")
    args = parser.parse_args(argv)
    root = results_root(args.profile)
    build_report(root, args.profile)
    update_readme(REPO_ROOT / "README.md", root, args.profile, paper_map_too=not args.tables_only)
    print("REPORT.md rebuilt; README.md " + ("tables" if args.tables_only else "map and tables") + " updated")


if __name__ == "__main__":
    main()
