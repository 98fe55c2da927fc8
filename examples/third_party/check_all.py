"""Runs `conformance run` on each third-party adapter here and prints one Markdown table.

    python -m examples.third_party.check_all [--profile P] [--seed S] [--report-dir DIR]
                                             [--only PACKAGE ...] [--only-family F ...]
                                             [--dry-run] [--details] [-- EXTRA ...]

Each adapter is checked in the configuration where its package claims to equal
torch.optim.SGD, Adam or AdamW (its family: `--family adam|adamw` is passed to `conformance run`
for the Adam ones, nothing for the SGD ones), with the features it cannot offer declared
(`--without`, see README.md here).
Arguments after `--` are added to every run (e.g. `-- --examples 50`). The table goes to
stdout, the runs' own output to stderr. Exit status: 0 when every run gave a verdict (conforms
or diverges: divergence is a finding here, not a failure), 1 when any run could not be judged
(exit 2, a crash, or a verdict without its report.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository root: `examples` imports from here
MODULE = "examples.third_party"
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(:|$)")


@dataclass(frozen=True)
class Adapter:
    """One package's adapter and how the suite is told what it leaves out."""

    package: str  # the PyPI distribution
    pinned: str  # the version the adapter was written against
    target: str  # module:Class, relative to MODULE
    claim: str  # where the package says it equals the family's torch optimizer, in one line
    without: tuple[str, ...] = ()
    state_key: str | None = None  # where the momentum buffer lives, if not "momentum_buffer"
    family: str = "sgd"  # the torch optimizer it claims: "sgd" (SGD), "adam" or "adamw"

    @property
    def optimizer(self) -> str:
        return f"{MODULE}.{self.target}"


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        "torch-optimizer",
        "0.3.0",
        "torch_optimizer_sgdw:TorchOptimizerSGDW",
        "SGDW, weight_decay=0: SGD's arguments and code (sgdw.py:15-21, 33, 102-117)",
        without=("maximize", "weight-decay"),
    ),
    Adapter(
        "pytorch-optimizer",
        "4.1.0",
        "pytorch_optimizer_sgdw:PytorchOptimizerSGDW",
        'SGDW, weight_decouple=False: decay "added to the gradient" (optimizer/sgd.py:163, 170)',
        without=("maximize", "cross-load", "invalid-hyperparameters"),
    ),
    Adapter(
        "timm",
        "1.0.31",
        "timm_sgdw:TimmSGDW",
        'SGDW, weight_decay=0: "See :class:`~torch.optim.SGD` for details." (optim/sgdw.py:162)',
        without=("weight-decay",),
    ),
    Adapter(
        "qhoptim",
        "1.1.0",
        "qhoptim_qhm:QHMAsSGD",
        'QHM, ν=1, lr·1/(1−β) (pyt/qhm.py:72-78); weight_decay_type="grad" "same as '
        'torch.optim.SGD" (qhm.py:33-38)',
        without=(
            "dampening",
            "nesterov",
            "maximize",
            "tensor-lr",
            "set-hyperparameter",
            "cross-load",
            "invalid-hyperparameters",
        ),
    ),
    Adapter(
        "timm",
        "1.0.31",
        "timm_adamw:TimmAdamW",
        'AdamWLegacy: "Impl copied from PyTorch master" (optim/adamw.py:2)',
        family="adamw",
    ),
    Adapter(
        "torch-optimi",
        "0.3.3",
        "optimi_adam:OptimiAdam",
        'Adam, decouple_wd=False: "Based on PyTorch Optimizers" (optimi/adam.py:4), L2 '
        'penalty (adam.py:37-38); README "Differences from PyTorch"',
        without=("amsgrad", "maximize", "cross-load"),
        family="adam",
    ),
    Adapter(
        "torch-optimi",
        "0.3.3",
        "optimi_adam:OptimiAdamW",
        'AdamW: "Based on PyTorch Optimizers" (optimi/adamw.py:4); README "Differences '
        'from PyTorch"',
        without=("amsgrad", "maximize", "cross-load"),
        family="adamw",
    ),
    Adapter(
        "transformers",
        "4.49.0",
        "transformers_adamw:TransformersAdamW",
        'AdamW, correct_bias=True: "Use the PyTorch implementation torch.optim.AdamW '
        'instead" (optimization.py:640-644)',
        without=("amsgrad", "maximize", "cross-load"),
        family="adamw",
    ),
    Adapter(
        "torch-optimizer",
        "0.3.0",
        "torch_optimizer_lamb:TorchOptimizerLambAsAdam",
        'Lamb, adam=True, debias=True: "always use trust ratio = 1, which turns this into '
        'Adam" (lamb.py:28-30)',
        without=("weight-decay", "amsgrad", "maximize"),
        family="adam",
    ),
    Adapter(
        "pytorch-optimizer",
        "4.1.0",
        "pytorch_optimizer_flash_adamw:PytorchOptimizerFlashAdamW",
        'FlashAdamW, quantize=False: "AdamW with grouped 8-bit optimizer states" '
        "(optimizer/flash_adamw.py:163, 177)",
        without=("amsgrad", "maximize", "cross-load", "invalid-hyperparameters"),
        family="adamw",
    ),
)
FAMILIES = ("sgd", "adam", "adamw")


def command(
    adapter: Adapter, profile: str, seed: int, report_dir: Path, extra: list[str]
) -> list[str]:
    """The `conformance run` command line for one adapter, on this interpreter."""
    cmd = [sys.executable, "-m", "conformance", "run", "--optimizer", adapter.optimizer]
    if adapter.family != "sgd":  # SGD is conformance's default: its commands stay as they were
        cmd += ["--family", adapter.family]
    cmd += ["--profile", profile, "--seed", str(seed)]
    if adapter.without:
        cmd += ["--without", ",".join(adapter.without)]
    if adapter.state_key:
        cmd += ["--state-key", adapter.state_key]
    return [*cmd, "--report-dir", str(report_dir), *extra]


def installed_version(adapter: Adapter) -> str:
    try:
        version = metadata.version(adapter.package)
    except metadata.PackageNotFoundError:
        return f"not installed ({adapter.pinned} pinned)"
    return version if version == adapter.pinned else f"{version} ({adapter.pinned} pinned)"


def reports(directory: Path) -> set[Path]:
    return set(directory.glob("*/report.json")) if directory.is_dir() else set()


def newest_report(directory: Path, before: set[Path]) -> Path | None:
    """The report.json this run wrote: the newest one that was not there before it."""
    new = reports(directory) - before
    return max(new, key=lambda p: p.stat().st_mtime) if new else None


def one_line(text: str, limit: int = 240) -> str:
    """Text fit for one Markdown table cell."""
    line = " ".join(text.split()).replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def last_line(text: str) -> str:
    """The line that says why a run ended: its exception, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if EXCEPTION.match(line)]
    return errors[-1] if errors else lines[-1] if lines else "(no output)"


def describe(failure: dict[str, Any]) -> str:
    """One failure of report.json in one line: where, on which action, and what differed."""
    d = failure.get("first_divergence") or {}
    where = str(d.get("tensor", "?")) + (f" of {d['parameter']}" if d.get("parameter") else "")
    text = (
        f"{failure.get('dtype', '?')}: {where} at action {d.get('action_index', '?')} "
        f"`{d.get('action', '?')}`"
    )
    if d.get("detail"):
        text += f": {d['detail']}"
    elif d.get("index") is not None:
        text += (
            f": element {tuple(d['index'])} expected {d.get('expected')}, got "
            f"{d.get('actual')} ({d.get('ulp_error')} ULP)"
        )
    return one_line(text)


def first_divergence(report: dict[str, Any]) -> str:
    """report.json's `failures[0]`, and how many more distinct failures the run found."""
    failures = report.get("failures") or []
    if not failures:
        return "—"
    more = len(failures) - 1
    return describe(failures[0]) + (f" (+{more} more)" if more else "")


@dataclass
class Row:
    adapter: Adapter
    version: str
    verdict: str
    divergence: str
    judged: bool  # False: the run gave no verdict (usage error, crash, missing report)
    failures: list[str] = field(default_factory=list)  # every distinct failure, one line each

    def markdown(self) -> str:
        cells = [
            self.adapter.package,
            self.version,
            self.adapter.family,
            one_line(self.adapter.claim),
            self.verdict,
            self.divergence,
        ]
        return "| " + " | ".join(cells) + " |"


def check(adapter: Adapter, cmd: list[str], report_dir: Path) -> Row:
    """Runs one adapter's conformance run and reads its verdict and first divergence."""
    version = installed_version(adapter)
    before = reports(report_dir)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stdout + done.stderr)
    if done.returncode == 2:
        return Row(adapter, version, "error (exit 2)", one_line(last_line(done.stderr)), False)
    if done.returncode not in (0, 1):
        return Row(
            adapter,
            version,
            f"crashed (exit {done.returncode})",
            one_line(last_line(done.stderr or done.stdout)),
            False,
        )
    verdict = "conforms" if done.returncode == 0 else "diverges"
    path = newest_report(report_dir, before)
    if path is None:  # an uncaught exception exits 1 too, and writes no report
        return Row(
            adapter,
            version,
            f"crashed (exit {done.returncode}, no report.json)",
            one_line(last_line(done.stderr or done.stdout)),
            False,
        )
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return Row(adapter, version, verdict, one_line(f"{path}: {error}"), False)
    return Row(
        adapter,
        version,
        verdict,
        first_divergence(report),
        True,
        [describe(f) for f in report.get("failures") or []],
    )


def table(rows: list[Row]) -> str:
    head = [
        "| package | version | family | claim | verdict | first divergence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join([*head, *(row.markdown() for row in rows)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="check_all", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci", choices=["dev", "ci", "thorough"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("reports/third_party"),
        help="relative paths are under the repository root",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PACKAGE",
        choices=sorted({a.package for a in ADAPTERS}),
        help="repeatable; every adapter of that package",
    )
    parser.add_argument(
        "--only-family",
        action="append",
        metavar="FAMILY",
        choices=FAMILIES,
        help="repeatable: sgd, adam, adamw",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--details",
        action="store_true",
        help="after the table, list every distinct failure of each run",
    )
    args = parser.parse_args(own)
    report_dir = args.report_dir if args.report_dir.is_absolute() else ROOT / args.report_dir
    chosen = [
        a
        for a in ADAPTERS
        if (not args.only or a.package in args.only)
        and (not args.only_family or a.family in args.only_family)
    ]
    rows = []
    for adapter in chosen:
        cmd = command(adapter, args.profile, args.seed, report_dir, extra)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        rows.append(check(adapter, cmd, report_dir))
    if args.dry_run:
        return 0
    print(table(rows))
    if args.details:
        for row in rows:
            if len(row.failures) > 1:
                print(
                    f"\n{row.adapter.package} ({row.adapter.target}):\n"
                    + "\n".join(f"- {f}" for f in row.failures)
                )
    return 0 if all(row.judged for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
