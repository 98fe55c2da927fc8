"""Conformance reports: `report.json` is the source of truth (versioned schema); Markdown,
HTML (matplotlib plots inline), JUnit XML and the repro scripts are rendered from it alone (no
torch needed to re-render).

A report directory is written atomically: everything goes to a hidden temporary directory
beside it, which is renamed to `DIR/<run-id>` only when complete, so an interrupted run leaves
no half-written report.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def environment() -> dict[str, Any]:
    import hypothesis
    import numpy
    import torch

    from conformance.bridge import torch_capability
    from refimpl.optim import rounding_for_capability

    capability = torch_capability()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "hypothesis": hypothesis.__version__,
            "torch_cpu_capability": capability,
            "rounding_model": rounding_for_capability(capability)}


def build(results: list[Any], settings: dict[str, Any], created: str | None = None
          ) -> dict[str, Any]:
    """The report of a run: `results` are `conformance.runner.RunResult`s (one per dtype)."""
    from conformance.machine import Coverage

    coverage = Coverage()
    failures = []
    for result in results:
        coverage.merge(result.coverage)
        if result.divergence is None or result.case is None:
            continue
        case, divergence = result.case, result.divergence
        setup = case.setup.to_json()
        failures.append({
            "dtype": case.setup.dtype,
            "program": [a.to_json() for a in case.actions],
            "model": setup["model"],
            "hyperparameters": setup["defaults"],
            "groups": setup["groups"],
            "tensor_lr": setup["tensor_lr"],
            "case": case.to_json(),
            "first_divergence": first_divergence(divergence.to_json()),
            "other_divergences": divergence.others,
            "error_per_action": error_per_action(case, result.implementation, result.mode),
            "repro": f"repro_{len(failures) + 1}.py",
        })
    return {
        "schema_version": SCHEMA_VERSION,
        "created": created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "result": "fail" if failures else "pass",
        "implementation": results[0].implementation if results else settings.get("optimizer"),
        "environment": environment(),
        "settings": settings,
        "coverage": coverage.to_json(),
        "failures": failures,
    }


def error_per_action(case: Any, implementation: str, mode: Any) -> list[float]:
    from conformance.machine import error_per_action as profile

    try:
        return profile(case, implementation, mode)
    except Exception:  # the report is written whatever the implementation does
        return []


def first_divergence(divergence: dict[str, Any]) -> dict[str, Any]:
    """The flat record of where the implementation first differs."""
    mismatch = divergence.get("mismatch") or {}
    return {
        "action_index": divergence["action_index"], "action": divergence["action"],
        "group": divergence["group"], "parameter": divergence["parameter"],
        "tensor": divergence["tensor"], "index": mismatch.get("index"),
        "expected": mismatch.get("expected"), "actual": mismatch.get("actual"),
        "abs_error": mismatch.get("abs_error"), "ulp_error": mismatch.get("ulp_error"),
        "elements_differing": mismatch.get("count"), "reason": mismatch.get("reason"),
        "detail": divergence["detail"], "traceback": divergence["traceback"],
        "shape": divergence.get("shape"), "ulp_errors": divergence.get("ulp_errors"),
    }


# --- rendering -----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """A summary fit for a pull-request comment."""
    cov, env = report["coverage"], report["environment"]
    verdict = "✅ conforms to" if report["result"] == "pass" else "❌ diverges from"
    lines = [
        f"## `{report['implementation']}` {verdict} torch.optim.SGD",
        "",
        f"{cov['programs']:,} programs, {cov['actions']:,} actions "
        f"({', '.join(f'{k} {v}' for k, v in cov['action_kinds'].items())}); "
        f"mode {report['settings'].get('mode') or 'default'}, "
        f"profile {report['settings'].get('profile')}, seed {report['settings'].get('seed')}; "
        f"torch {env['torch']} ({env['torch_cpu_capability']}, {env['rounding_model']} "
        f"rounding).",
    ]
    for n, failure in enumerate(report["failures"], start=1):
        d = failure["first_divergence"]
        where = d["tensor"] + (f" of `{d['parameter']}`" if d["parameter"] else "")
        lines += ["", f"### Failure {n} ({failure['dtype']}): {where} at action "
                      f"{d['action_index']}, `{d['action']}`", ""]
        if d["index"] is not None:
            lines += ["| element | expected | actual | abs error | ULP error | reason |",
                      "| --- | --- | --- | --- | --- | --- |",
                      f"| {tuple(d['index'])} | {d['expected']} | {d['actual']} | "
                      f"{_num(d['abs_error'])} | {_num(d['ulp_error'])} | "
                      f"{_cell(d['reason'])} |"]
        if d["detail"]:
            lines += ["", _cell(d["detail"])]
        lines += ["", "Program (shrunk):", ""]
        lines += [f"{i}. `{_action(a)}`" for i, a in enumerate(failure["program"])]
        lines += ["", f"Model `{failure['model']['kind']}` ({failure['model']['loss']} loss); "
                      f"{len(failure['groups'])} group(s), with these hyperparameters "
                      f"(defaults, then each group's overrides):", ""]
        lines += [f"- group {i}: `{', '.join(group['params'])}`: "
                  f"`{json.dumps({**failure['hyperparameters'], **group['options']})}`"
                  for i, group in enumerate(failure["groups"])]
        lines += ["",
                  f"{len(failure['other_divergences'])} other tensor(s) differ at that action.",
                  "", f"Reproduce: `python {failure['repro']}`"]
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _action(action: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in action["args"].items())
    return f"{action['kind']}({args})"


def html(report: dict[str, Any]) -> str:
    """A self-contained page: the summary, and per failure its first divergence, the program,
    a plot of the error per action and one of where in the tensor the divergence sits (PNG,
    inline). Every value from the report is escaped."""
    e = _escape
    cov = report["coverage"]
    verdict = "conforms to" if report["result"] == "pass" else "diverges from"
    body = [f"<h1><code>{e(report['implementation'])}</code> {verdict} torch.optim.SGD</h1>",
            f"<p>{e(cov['programs'])} programs, {e(cov['actions'])} actions; settings "
            f"<code>{e(json.dumps(report['settings']))}</code>; environment "
            f"<code>{e(json.dumps(report['environment']))}</code></p>"]
    for n, failure in enumerate(report["failures"], start=1):
        d = failure["first_divergence"]
        body.append(f"<h2>Failure {n} ({e(failure['dtype'])}): {e(d['tensor'])} of "
                    f"<code>{e(d['parameter'])}</code> at action {e(d['action_index'])}, "
                    f"<code>{e(d['action'])}</code></h2>")
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(d.get(k))}</td></tr>" for k in (
            "index", "expected", "actual", "abs_error", "ulp_error", "reason", "detail"))
        body.append(f"<table>{rows}</table>")
        if d.get("traceback"):
            body.append(f"<pre>{e(d['traceback'])}</pre>")
        body.append("<ol start='0'>" + "".join(f"<li><code>{e(_action(a))}</code></li>"
                                               for a in failure["program"]) + "</ol>")
        for title, png in _plots(failure):
            body.append(f"<figure><img alt='{e(title)}' src='data:image/png;base64,{png}'>"
                        f"<figcaption>{e(title)}</figcaption></figure>")
        body.append(f"<p>Reproduce: <code>python {e(failure['repro'])}</code></p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;"
             "text-align:left}pre{background:#f4f4f4;overflow:auto}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>sgd-conformance: {e(report['implementation'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _escape(value: Any) -> str:
    import html as _html

    return _html.escape("" if value is None else str(value), quote=True)


def _plots(failure: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for the error per action and the error map of the tensor."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = []

    def encode(fig: Any) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    profile = failure.get("error_per_action") or []
    if profile:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        values = [max(v, 0) + 1 for v in profile]
        ax.bar(range(len(values)), values, color=["#c33" if v < 0 else "#37a" for v in profile])
        ax.set_yscale("log")
        ax.set_xticks(range(len(values)))
        ax.set_xlabel("action")
        ax.set_ylabel("max ULP error + 1")
        out.append(("largest ULP error after each action (red: not measurable)", encode(fig)))
    d = failure["first_divergence"]
    if d.get("ulp_errors") and d.get("shape") is not None:
        errors = np.asarray(d["ulp_errors"], dtype=float)
        shape = d["shape"]
        grid = errors.reshape(-1, shape[-1]) if len(shape) >= 1 and \
            errors.size == int(np.prod(shape)) and shape[-1] else errors.reshape(1, -1)
        fig, ax = plt.subplots(figsize=(6, 2.5))
        image = ax.imshow(np.log10(np.where(grid < 0, np.nan, grid) + 1), aspect="auto",
                          cmap="viridis")
        fig.colorbar(image, ax=ax, label="log10(ULP error + 1)")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set_xlabel("last dimension")
        ax.set_ylabel("other dimensions (flattened)")
        out.append((f"ULP error of {d['tensor']} {d['parameter']} per element", encode(fig)))
    return out


def junit(report: dict[str, Any]) -> str:
    """JUnit XML: one test case per dtype run, failed with its first divergence."""
    dtypes = report["settings"].get("dtypes", [])
    failed = {f["dtype"]: f for f in report["failures"]}
    suite = ET.Element("testsuite", name="sgd-conformance", tests=str(len(dtypes)),
                       failures=str(len(failed)), errors="0")
    for dtype in dtypes:
        case = ET.SubElement(suite, "testcase", classname=f"conformance.{report['implementation']}",
                             name=f"sgd_conformance[{dtype}]")
        if dtype in failed:
            d = failed[dtype]["first_divergence"]
            message = f"{d['tensor']} of {d['parameter']} differs at action " \
                      f"{d['action_index']} {d['action']}"
            failure = ET.SubElement(case, "failure", message=message, type="Divergence")
            failure.text = json.dumps(d, indent=2)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def repro_script(report: dict[str, Any], failure: dict[str, Any]) -> str:
    """A standalone script that replays the failing case against torch and exits 1 with the
    first divergence (0 once the implementation conforms)."""
    return f'''#!/usr/bin/env python
"""Reproduces a conformance failure of {report["implementation"]} against torch.optim.SGD.

Run it with plain `python {failure["repro"]}` where the implementation is importable (the
current directory is put on sys.path). It rebuilds the shrunk program, runs it on torch and
on the implementation, and exits 1 with the first divergence, 0 once they agree.
"""

import json
import os
import sys

sys.path.insert(0, os.getcwd())

from conformance.machine import replay  # noqa: E402
from conformance.program import Case  # noqa: E402

IMPLEMENTATION = {report["implementation"]!r}
MODE = {report["settings"].get("mode")!r}
CASE = json.loads({json.dumps(json.dumps(failure["case"]))})

divergence = replay(Case.from_json(CASE), IMPLEMENTATION, MODE)
if divergence is None:
    print("conforms: no divergence")
    sys.exit(0)
print(divergence)
sys.exit(1)
'''


def write(report: dict[str, Any], directory: Path, run_id: str | None = None) -> Path:
    """Writes report.json, report.md, junit.xml and repro_<n>.py into `directory/<run-id>`,
    atomically; returns that path."""
    directory.mkdir(parents=True, exist_ok=True)
    run_id = run_id or _run_id(report)
    target, n = directory / run_id, 1
    while target.exists():  # two runs in one second
        n += 1
        target = directory / f"{run_id}-{n}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=directory))
    try:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        (tmp / "report.html").write_text(html(report))
        (tmp / "junit.xml").write_text(junit(report))
        for failure in report["failures"]:
            (tmp / failure["repro"]).write_text(repro_script(report, failure))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _run_id(report: dict[str, Any]) -> str:
    stamp = re.sub(r"[^0-9T]", "", report["created"].split("+")[0])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(report["implementation"])).strip("-")
    return f"{stamp}-{slug}"
