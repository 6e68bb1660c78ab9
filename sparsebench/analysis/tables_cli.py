"""``sparsebench-tables``: rebuild tables (Markdown, LaTeX, CSV) and figures (PNG) from results.

    sparsebench-tables --results results                      # Markdown on standard output
    sparsebench-tables --results results --experiment smoke --out tables/smoke --figures
    sparsebench-tables --wandb-project sparsebench --wandb-group owl_grid --out tables/owl
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sparsebench.analysis import plots, replicates, store, tables

log = logging.getLogger("sparsebench.tables")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sparsebench-tables", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, help="a local results folder (result documents)")
    source.add_argument("--wandb-project", help="a W&B project logged with tracker=wandb")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--wandb-group", help="only runs of this group (experiment_name)")
    parser.add_argument("--wandb-tag", action="append", default=[], help="only runs with this tag (repeatable)")
    parser.add_argument("--experiment", help="local store: only documents with this experiment_name")
    parser.add_argument("--datasets", nargs="+", help="columns, in this order (default: every dataset evaluated)")
    parser.add_argument("--out", type=Path, help="folder for tables.md, tables.tex, tables.csv and figures (default: Markdown on standard output)")
    parser.add_argument(
        "--also", nargs="+", default=[], choices=[name for name in tables.MEASURES if name != "ppl"],
        help="more tables, each in its own files: prune_time.md/.tex/.csv, ...",
    )
    parser.add_argument(
        "--replicate-key", action="append", dest="replicate_keys", metavar="KEY",
        help="a config key whose values are replicates of one cell (repeatable; default: calibration.seed)",
    )
    parser.add_argument("--baseline", help="the method every row is compared with, e.g. 'wanda + uniform' (default: each metric's uniform row)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of Welch's t-test against the baseline (default 0.05)")
    parser.add_argument("--figures", action="store_true", help="also write PNG figures (needs matplotlib and --out)")
    args = parser.parse_args(argv)
    if args.figures and args.out is None:
        parser.error("--figures writes PNG files: it needs --out FOLDER")
    return args


def _write(out: Path, stem: str, built: dict) -> None:
    """``stem``.md / .tex / .csv: every model's table of one measure."""
    (out / f"{stem}.md").write_text("\n".join(tables.to_markdown(t) for t in built.values()))
    (out / f"{stem}.tex").write_text("\n".join(tables.to_latex(t) for t in built.values()))
    (out / f"{stem}.csv").write_text("".join(tables.to_csv(t) if i == 0 else tables.to_csv(t).split("\n", 1)[1] for i, t in enumerate(built.values())))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    if args.results is not None:
        documents = store.local_documents(args.results, args.experiment)
    else:
        documents = store.wandb_documents(args.wandb_project, args.wandb_entity, args.wandb_group, tuple(args.wandb_tag))
    if not documents:
        log.error("no result documents found")
        return 1
    options = {"replicate_keys": tuple(args.replicate_keys or replicates.DEFAULT_REPLICATE_KEYS), "baseline": args.baseline, "alpha": args.alpha}
    built = tables.build_tables(documents, args.datasets, **options)
    also = {name: tables.build_tables(documents, None, tables.MEASURES[name], **options) for name in args.also}
    if args.out is None:
        print("\n".join(tables.to_markdown(t) for group in (built, *also.values()) for t in group.values()))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        _write(args.out, "tables", built)
        for name, extra in also.items():
            _write(args.out, name, extra)
    for table in built.values():
        for entry in table.missing:
            log.warning("missing: %s", entry)
    if args.figures:
        for table in built.values():
            plots.ppl_vs_sparsity(table, args.out)
        plots.per_layer_ratios(documents, args.out)
    if args.out is not None:
        log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
