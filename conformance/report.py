"""Conformance reports: `report.json` is the source of truth (versioned schema); Markdown,
HTML (matplotlib plots inline), JUnit XML and the repro scripts are rendered from it alone (no
torch needed to re-render).

Schema version 2: a run reports several distinct failures (each with the key it was
deduplicated by, when it was found, the diverging element's trajectory and the failing group's
hyperparameters), the contract it checked, and what it did not verify. The renderers also
accept a version 1 `report.json`, whose failures lack those fields, so old reports re-render.

Additions that keep version 2 (optional, so older version 2 reports still validate): a
failure's `flaky` (it did not show again when Hypothesis re-ran the program) and the settings'
`isolation` and `memory_limit`.

A report directory is written atomically: everything goes to a hidden temporary directory
beside it, which is renamed to `DIR/<run-id>` only when complete, so an interrupted run leaves
no half-written report. `check_directory` and `check_file` say up front, with a probe, whether
a report can be written where asked; `check_replayable` whether a report.json read back is one
this version can replay (validated against `report_schema.json`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import html as _html
import json
import math
import os
import platform
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence, Set
from pathlib import Path
from typing import Any, TypedDict

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
FLAKY = "flaky: did not show again on a re-run"


def environment() -> dict[str, Any]:
    import hypothesis
    import numpy
    import torch

    from conformance.bridge import torch_capability
    from refimpl.optim import rounding_for_capability

    capability = torch_capability()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "hypothesis": hypothesis.__version__,
        "torch_cpu_capability": capability,
        "rounding_model": rounding_for_capability(capability),
    }


def build(
    results: Sequence[Any],
    settings: dict[str, Any],
    created: str | None = None,
    *,
    not_verified: list[dict[str, str]],
) -> dict[str, Any]:
    """The report of a run. `results` are the runner's results, one per dtype (at least one):
    each has `implementation`, `coverage` and `failures`, the distinct failures in the order
    they were found, whose measurements (error per action, trajectory) the runner made, so
    that building a report replays nothing. `not_verified` is required (no default) because a
    report that is silent about what it left out would read as a full pass."""
    if not results:
        raise ValueError("a report needs the result of at least one dtype")
    coverage = copy.deepcopy(results[0].coverage)  # merged into: the results stay untouched
    for result in results[1:]:
        coverage.merge(result.coverage)
    failures = [failure for result in results for failure in result.failures]
    from conformance.families import get

    return {
        "schema_version": SCHEMA_VERSION,
        "created": created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "result": "fail" if failures else "pass",
        "implementation": results[0].implementation,
        "reference": get(settings.get("family", "sgd")).torch_name,
        # the hyperparameter that carries each feature a failure key can name, so the HTML can
        # highlight it in the failing group's table (features that are actions, such as
        # closure or state-dict, have none)
        "hyperparameter_features": {
            "lr": "tensor-lr",
            **{
                h.name: h.feature
                for h in get(settings.get("family", "sgd")).hyperparameters
                if h.feature is not None
            },
        },
        "contract": settings["contract"],
        "environment": environment(),
        "settings": settings,
        "not_verified": [dict(entry) for entry in not_verified],
        "coverage": coverage.to_json(getattr(results[0], "options", None)),
        "failures": [_failure(failure, n) for n, failure in enumerate(failures, start=1)],
    }


def _failure(failure: Any, number: int) -> dict[str, Any]:
    case = failure.case.to_json()
    setup = case["setup"]
    divergence = failure.divergence.to_json()
    return {
        "dtype": setup["dtype"],
        "key": {
            "tensor": failure.key["tensor"],
            "difference": failure.key["difference"],
            "action": failure.key["action"],
            "features": list(failure.key["features"]),
        },
        "found_after_programs": failure.found_after_programs,
        "found_after_seconds": failure.found_after_seconds,
        "program": case["actions"],
        "model": setup["model"],
        "hyperparameters": setup["defaults"],
        "groups": setup["groups"],
        "tensor_lr": setup["tensor_lr"],
        "group_hyperparameters": group_hyperparameters(case, divergence),
        "case": case,
        "first_divergence": first_divergence(divergence),
        "other_divergences": [
            {key: other[key] for key in ("tensor", "parameter", "mismatch", "detail")}
            for other in divergence["others"]
        ],
        "trajectory": failure.trajectory,
        "error_per_action": list(failure.error_per_action),
        "repro": f"repro_{number}.py",
        "flaky": bool(getattr(failure, "flaky", False)),
    }


def first_divergence(divergence: dict[str, Any]) -> dict[str, Any]:
    """The flat record of where the implementation first differs."""
    mismatch = divergence.get("mismatch") or {}
    return {
        "action_index": divergence["action_index"],
        "action": divergence["action"],
        "group": divergence["group"],
        "parameter": divergence["parameter"],
        "tensor": divergence["tensor"],
        "index": mismatch.get("index"),
        "expected": mismatch.get("expected"),
        "actual": mismatch.get("actual"),
        "abs_error": mismatch.get("abs_error"),
        "ulp_error": mismatch.get("ulp_error"),
        "elements_differing": mismatch.get("count"),
        "reason": mismatch.get("reason"),
        "detail": divergence["detail"],
        "traceback": divergence["traceback"],
        "shape": divergence.get("shape"),
        "ulp_errors": divergence.get("ulp_errors"),
        "overwritten": divergence["overwritten"],
        "features": list(divergence["features"]),
    }


class _Group(TypedDict):
    """A parameter group as a program's JSON states it."""

    params: list[str]
    options: dict[str, Any]


def group_hyperparameters(
    case: dict[str, Any], divergence: dict[str, Any]
) -> dict[str, Any] | None:
    """The hyperparameters the failing parameter's group held when the failing action ran:
    the setup's defaults, that group's options, then the program's set_hyperparameter and
    add_param_group actions before the failing one, applied as torch applies them. A tensor
    lr becomes {"tensor": value} (JSON has no tensors, and the reader must see it was one).
    None where the divergence names no parameter or group (an exception, the loss)."""
    setup = case["setup"]
    groups: list[_Group] = [
        {"params": list(g["params"]), "options": {**setup["defaults"], **g["options"]}}
        for g in setup["groups"]
    ]
    for action in case["actions"][: divergence["action_index"]]:
        args = action["args"]
        if action["kind"] == "set_hyperparameter" and groups:
            groups[args["group"] % len(groups)]["options"][args["name"]] = args["value"]
        elif action["kind"] == "add_param_group" and not any(
            name in group["params"] for group in groups for name in args["params"]
        ):
            # torch rejects a group holding a parameter another group has: nothing is added
            groups.append(
                {
                    "params": list(args["params"]),
                    "options": {**setup["defaults"], **args["options"]},
                }
            )
    index = next(
        (i for i, group in enumerate(groups) if divergence["parameter"] in group["params"]),
        divergence["group"],
    )
    if index is None or not 0 <= index < len(groups):
        return None
    options = groups[index]["options"]
    if setup["tensor_lr"] and "lr" in options:
        options["lr"] = {"tensor": options["lr"]}
    return options


# --- rendering: shared pieces --------------------------------------------------------------------


def _num(value: Any) -> str:
    """An error measure: three significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _value(value: Any) -> str:
    """A tensor element: every digit (repr is the shortest text that reads back the same
    float), since values a few ULPs apart must look different."""
    return "—" if value is None else repr(value) if isinstance(value, float) else str(value)


def _element(index: list[int] | None) -> str:
    return "—" if index is None else str(tuple(index))


def _hyperparameter(value: Any) -> str:
    """As the value reads in Python: `tensor(0.1)` for a tensor lr, True/False/None."""
    if isinstance(value, dict) and set(value) == {"tensor"}:
        return f"tensor({_value(value['tensor'])})"
    return repr(value) if isinstance(value, bool | float | None) else str(value)


def _action(action: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in action["args"].items())
    return f"{action['kind']}({args})"


def _where(d: dict[str, Any], code: Callable[[Any], str], text: Callable[[Any], str] = str) -> str:
    """ "param of `0.weight` at action 3, `step()`": names formatted by `code`, the rest by
    `text` (the HTML escapes both)."""
    tensor = code(d["tensor"]) + (f" of {code(d['parameter'])}" if d["parameter"] else "")
    return f"{tensor} at action {text(d['action_index'])}, {code(d['action'])}"


def _differing(failure: dict[str, Any]) -> list[list[str]]:
    """Every tensor that differs at the failing action, the first divergence first, as text
    cells: tensor, parameter, element, expected, actual, ULP error or detail."""
    d = failure["first_divergence"]
    first = {
        "tensor": d["tensor"],
        "parameter": d["parameter"],
        "detail": d.get("detail"),
        "mismatch": None if d.get("index") is None else d,
    }
    rows = []
    for entry in (first, *failure.get("other_divergences", [])):
        m, detail = entry["mismatch"], entry.get("detail") or ""
        cells = [entry["tensor"], entry["parameter"] or "—"]
        if m is None:
            cells += ["—", "—", "—", detail]
        else:
            cells += [
                _element(m["index"]),
                _value(m["expected"]),
                _value(m["actual"]),
                f"{_num(m['ulp_error'])} ULP" + (f"; {detail}" if detail else ""),
            ]
        rows.append(cells)
    return rows


def _overwritten(d: dict[str, Any], code: Callable[[Any], str]) -> str | None:
    """The sentence saying which side's step overwrote a gradient (torch's foreach nesterov
    step writes g + μb into `.grad`; the semantic contract lets an implementation do either),
    so the reader does not take the grad difference for a wrong gradient."""
    side = d.get("overwritten")
    if side is None:
        return None
    doer, other = (
        ("The implementation's", "torch")
        if side == "implementation"
        else ("torch's", "the implementation")
    )
    return (
        f"{doer} step overwrote {code('.grad')} of {code(d['parameter'])}; {other} "
        f"leaves it unchanged."
    )


def _setting_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) if value else "none"
    return "none" if value is None else str(value)


def _contract(report: dict[str, Any]) -> str:
    return f" under the {report['contract']} contract" if report.get("contract") else ""


# --- Markdown ------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """A summary fit for a pull-request comment: the verdict under its contract, what was not
    verified (always said, so a narrowed run never reads as a full pass), and per failure the
    differing tensors, the failing group's hyperparameters, the shrunk program and how to
    reproduce it."""
    cov, env, settings = report["coverage"], report["environment"], report["settings"]
    not_verified = report.get("not_verified", [])
    failures = report["failures"]
    verdict = "✅ {} conforms to" if report["result"] == "pass" else "❌ {} diverges from"
    unverified = f" ({len(not_verified)} feature(s) not verified)" if not_verified else ""
    chosen = ", ".join(
        f"{name.replace('_', ' ')} {settings[name]}"
        for name in ("mode", "reference_path", "profile", "seed")
        if name in settings
    )
    found = f"{len(failures)} distinct failure(s) in " if failures else ""
    lines = [
        f"## {verdict.format(_code(report['implementation']))} {_reference(report)}"
        f"{_contract(report)}{unverified}",
        "",
        *(
            [
                f"First: {failures[0]['dtype']}, {_where(failures[0]['first_divergence'], _code)}"
                + (
                    f" — {_text(failures[0]['first_divergence']['detail'])}"
                    if failures[0]["first_divergence"].get("detail")
                    else ""
                )
                + ".",
                "",
            ]
            if failures
            else []
        ),
        f"{found}{cov['programs']:,} programs, {cov['actions']:,} actions "
        f"({', '.join(f'{k} {v}' for k, v in cov['action_kinds'].items())}); {chosen}; "
        f"torch {env['torch']} ({env['torch_cpu_capability']}, {env['rounding_model']} "
        f"rounding).",
    ]
    lines += _markdown_coverage(cov)
    if "not_verified" in report:
        lines += ["", "### Not verified", ""]
        lines += [
            f"- {_code(entry['feature'])} ({_text(entry['source'])}): {_text(entry['description'])}"
            for entry in not_verified
        ] or ["Nothing: every feature was checked."]
    for n, failure in enumerate(failures, start=1):
        lines += ["", *_markdown_failure(n, failure)]
    return "\n".join(lines) + "\n"


def _markdown_coverage(cov: dict[str, Any]) -> list[str]:
    """What the programs reached, in a table, and a warning for what a declared feature needs
    and no program reached (so a pass that never exercised something does not read as if it
    had). Reports without these keys (older ones) show nothing here."""
    lines: list[str] = []
    if cov.get("unreached"):
        lines += [
            "",
            "### ⚠️ Not reached",
            "",
            "Declared, but no program reached what checking it needs, so this run "
            "says nothing about:",
            "",
        ]
        lines += [
            f"- {_code(feature)}: {_text(need)}" for feature, need in cov["unreached"].items()
        ]
    rows = [
        (title, cov[key])
        for title, key in (
            ("ops (programs)", "ops"),
            ("kinks hit (forwards)", "kinks"),
            ("features in play (group steps)", "step_features"),
            ("feature pairs (group steps)", "feature_pairs"),
            ("steps with optimizer state", "buffered_steps"),
            ("actions", "action_kinds"),
        )
        if cov.get(key) is not None
    ]
    if not rows:
        return lines
    missed = [kink for kink, hits in cov.get("kinks", {}).items() if not hits]
    lines += ["", "### Coverage", "", "| what | counts |", "| --- | --- |"]
    lines += [
        f"| {title} | {_text(', '.join(f'{k} {v:,}' for k, v in counts.items()))} |"
        for title, counts in rows
    ]
    if missed:
        lines += ["", f"Kinks some model could hit but none did: {', '.join(missed)}."]
    return lines


def _markdown_failure(n: int, failure: dict[str, Any]) -> list[str]:
    d = failure["first_divergence"]
    lines = [f"### {n}. {failure['dtype']}: {_where(d, _code)}", ""]
    if failure.get("flaky"):
        lines += [
            f"**{FLAKY}**: Hypothesis ran the program again and it conformed; the "
            "divergence is reported, not dropped.",
            "",
        ]
    if "found_after_programs" in failure:
        key = failure["key"]
        features = ", ".join(key["features"]) or "no particular feature"
        lines += [
            f"Found after {failure['found_after_programs']:,} programs "
            f"({failure['found_after_seconds']:.1f} s); key: {_code(key['tensor'])} "
            f"{key.get('difference', 'values')} at {_code(key['action'])} with "
            f"{_text(features)}.",
            "",
        ]
    if d["index"] is not None:
        lines += [
            "| element | expected | actual | abs error | ULP error | elements differing | reason |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {_element(d['index'])} | {_value(d['expected'])} | {_value(d['actual'])} "
            f"| {_num(d['abs_error'])} | {_num(d['ulp_error'])} | "
            f"{d.get('elements_differing')} | {_cell(_text(d.get('reason')))} |",
            "",
        ]
    if d["detail"]:
        lines += [_text(d["detail"]), ""]
    overwritten = _overwritten(d, _code)
    if overwritten:
        lines += [f"**{overwritten}**", ""]
    rows = _differing(failure)
    if len(rows) > 1:
        lines += [
            f"All {len(rows)} tensors that differ at action {d['action_index']}:",
            "",
            "| tensor | parameter | element | expected | actual | ULP error or detail |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            "| "
            + " | ".join(_cell(_code(c) if i < 2 else _text(c)) for i, c in enumerate(row))
            + " |"
            for row in rows
        ]
        lines.append("")
    hyper = failure.get("group_hyperparameters")
    if hyper is not None:
        lines += [
            "Hyperparameters of the failing parameter's group: "
            + ", ".join(_code(f"{k} = {_hyperparameter(v)}") for k, v in hyper.items())
            + ".",
            "",
        ]
    elif "group_hyperparameters" in failure and d["parameter"]:
        lines += [f"{_code(d['parameter'])} was in no parameter group when this action ran.", ""]
    model = failure["model"]
    lines += [f"Program (shrunk; model {_code(model['kind'])}, {_code(model['loss'])} loss):", ""]
    lines += [
        f"{i}. {_code(_action(a))}" + (" ← diverges here" if i == d["action_index"] else "")
        for i, a in enumerate(failure["program"])
    ]
    lines += [
        "",
        f"Reproduce: {_code('python ' + failure['repro'])} or "
        f"{_code(f'conformance replay report.json --case {n}')}.",
    ]
    return lines


def _code(value: Any) -> str:
    """An inline code span that holds any text: its fence is longer than any run of
    backticks inside, and it holds no newline (a span cannot)."""
    text = str(value).replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _text(value: Any) -> str:
    """Prose from the report on one line, with no HTML tag a Markdown renderer would
    interpret."""
    return str(value).replace("\n", " ").replace("<", "&lt;")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# --- HTML ----------------------------------------------------------------------------------------


_STYLE = (
    "body{font-family:sans-serif;max-width:64em;margin:2em auto;line-height:1.4}"
    "header{padding:.5em 1em;border-left:.5em solid}header.pass{border-color:#2a2}"
    "header.fail{border-color:#c33}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;"
    "padding:2px 6px;text-align:left;vertical-align:top}thead th{background:#eee}"
    "tr.feature{background:#fff1b8;font-weight:bold}li.failing{background:#fde0e0;"
    "font-weight:bold}pre{background:#f4f4f4;overflow:auto;padding:.5em}"
    "img{max-width:100%}figure{margin:1em 0}section.failure{border-top:1px solid #ccc;"
    "margin-top:2em}"
)


def html(report: dict[str, Any]) -> str:
    """A self-contained page that reads as a report: the verdict under its contract, the
    settings and environment as tables, what was not verified, and per failure the failing
    group's hyperparameters (the failure's features highlighted), every differing tensor,
    the program with the failing action marked, the traceback and the plots (inline PNG).
    Every value from the report is escaped."""
    e = _escape
    cov = report["coverage"]
    outcome = "pass" if report["result"] == "pass" else "fail"
    verdict = "conforms to" if outcome == "pass" else "diverges from"
    failures = report["failures"]
    body = [
        f"<header class='{outcome}'><h1><code>{e(report['implementation'])}</code> "
        f"{verdict} {e(_reference(report))}{e(_contract(report))}</h1>"
        f"<p>{e(len(failures))} distinct failure(s) in {e(cov['programs'])} programs, "
        f"{e(cov['actions'])} actions.</p></header>"
    ]
    if failures:
        body.append(
            "<table><thead><tr><th>#</th><th>dtype</th><th>where</th>"
            "<th>features</th><th>found after</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td><a href='#failure-{n}'>{n}</a></td><td>{e(f['dtype'])}</td>"
                f"<td>{_where(f['first_divergence'], _html_code, e)}</td>"
                f"<td>{e(', '.join(f.get('key', {}).get('features', [])))}</td>"
                f"<td>{e(_found_after(f))}</td></tr>"
                for n, f in enumerate(failures, start=1)
            )
            + "</tbody></table>"
        )
    if cov.get("unreached"):
        body.append(
            "<h2>Not reached</h2><p>Declared, but no program reached what checking it "
            "needs, so this run says nothing about:</p><ul>"
            + "".join(
                f"<li><code>{e(feature)}</code>: {e(need)}</li>"
                for feature, need in cov["unreached"].items()
            )
            + "</ul>"
        )
    if "not_verified" in report:
        body.append("<h2>Not verified</h2>")
        body.append(
            "<ul>"
            + "".join(
                f"<li><code>{e(entry['feature'])}</code>: {e(entry['description'])} "
                f"(from {e(entry['source'])})</li>"
                for entry in report["not_verified"]
            )
            + "</ul>"
            if report["not_verified"]
            else "<p>Nothing: every feature was checked.</p>"
        )
    for title, table in (
        ("Settings", report["settings"]),
        ("Environment", report["environment"]),
        ("Coverage", cov),
    ):
        body.append(
            f"<h2>{title}</h2>"
            + _table([(name, _setting_text(value)) for name, value in table.items()])
        )
    for n, failure in enumerate(failures, start=1):
        body.append(_html_failure(n, failure, report.get("hyperparameter_features", {})))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>sgd-conformance: {e(report['implementation'])}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _html_failure(n: int, failure: dict[str, Any], feature_of: dict[str, str]) -> str:
    e = _escape
    d = failure["first_divergence"]
    parts = [
        f"<section class='failure' id='failure-{n}'>"
        f"<h2>Failure {n} ({e(failure['dtype'])}): {_where(d, _html_code, e)}</h2>"
    ]
    if failure.get("flaky"):
        parts.append(
            f"<p class='flaky'><strong>{e(FLAKY)}</strong>: Hypothesis ran the "
            "program again and it conformed; the divergence is reported, not "
            "dropped.</p>"
        )
    if "found_after_programs" in failure:
        key = failure["key"]
        parts.append(
            f"<p>Found after {e(_found_after(failure))}; key: "
            f"<code>{e(key['tensor'])}</code> at <code>{e(key['action'])}</code> with "
            f"{e(', '.join(key['features']) or 'no particular feature')}.</p>"
        )
    if d.get("detail"):
        parts.append(f"<p>{e(d['detail'])}</p>")
    overwritten = _overwritten(d, _html_code)
    if overwritten:
        parts.append(f"<p><strong>{overwritten}</strong></p>")
    features = set(failure.get("key", {}).get("features", []))
    hyper = failure.get("group_hyperparameters")
    if hyper is not None:
        highlight = {k for k in hyper if feature_of.get(k) in features}
        parts.append(
            "<h3>Hyperparameters of the failing parameter's group"
            + (" (highlighted: this failure's features)" if highlight else "")
            + "</h3>"
            + _table([(k, _hyperparameter(v)) for k, v in hyper.items()], highlight=highlight)
        )
    elif "group_hyperparameters" in failure and d["parameter"]:
        parts.append(
            f"<p>{_html_code(d['parameter'])} was in no parameter group when this action ran.</p>"
        )
    if d["index"] is not None:
        parts.append(
            f"<h3>First differing element: {e(_element(d['index']))}</h3>"
            + _table(
                [
                    (k.replace("_", " "), f(d.get(k)))
                    for k, f in (
                        ("expected", _value),
                        ("actual", _value),
                        ("abs_error", _num),
                        ("ulp_error", _num),
                        ("elements_differing", str),
                        ("reason", str),
                    )
                ]
            )
        )
    parts.append(
        f"<h3>Tensors that differ at action {e(d['action_index'])}</h3>"
        "<table><thead><tr><th>tensor</th><th>parameter</th><th>element</th>"
        "<th>expected</th><th>actual</th><th>ULP error or detail</th></tr></thead>"
        "<tbody>"
        + "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
            for row in _differing(failure)
        )
        + "</tbody></table>"
    )
    parts.append(
        "<h3>Program (shrunk)</h3><ol start='0'>"
        + "".join(
            f"<li class='failing'><code>{e(_action(a))}</code> (diverges here)</li>"
            if i == d["action_index"]
            else f"<li><code>{e(_action(a))}</code></li>"
            for i, a in enumerate(failure["program"])
        )
        + "</ol>"
    )
    if d.get("traceback"):
        parts.append(f"<h3>Traceback</h3><pre>{e(d['traceback'])}</pre>")
    for title, png in _plots(failure):
        parts.append(
            f"<figure><img alt='{e(title)}' src='data:image/png;base64,{png}'>"
            f"<figcaption>{e(title)}</figcaption></figure>"
        )
    parts.append(
        f"<p>Reproduce: <code>python {e(failure['repro'])}</code> or "
        f"<code>conformance replay report.json --case {n}</code></p></section>"
    )
    return "".join(parts)


def _found_after(failure: dict[str, Any]) -> str:
    if "found_after_programs" not in failure:
        return "—"
    return f"{failure['found_after_programs']:,} programs ({failure['found_after_seconds']:.1f} s)"


def _table(rows: list[tuple[str, str]], highlight: Set[str] = frozenset()) -> str:
    """A two-column name/value table; rows named in `highlight` get class 'feature'."""
    e = _escape
    return (
        "<table>"
        + "".join(
            ("<tr class='feature'>" if name in highlight else "<tr>")
            + f"<th>{e(name)}</th><td>{e(value)}</td></tr>"
            for name, value in rows
        )
        + "</table>"
    )


def _html_code(value: Any) -> str:
    return f"<code>{_escape(value)}</code>"


def _escape(value: Any) -> str:
    return _html.escape("" if value is None else str(value), quote=True)


# --- plots ---------------------------------------------------------------------------------------


def _plots(failure: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot the failure has data for: the diverging element's
    value on both sides after each action, the largest error per action, and where in the
    tensor the divergence sits."""
    import matplotlib

    matplotlib.use("Agg")
    return [
        plot
        for plot in (
            _trajectory_plot(failure),
            _error_per_action_plot(failure),
            _error_map_plot(failure),
        )
        if plot is not None
    ]


def _png(fig: Any) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _trajectory_plot(failure: dict[str, Any]) -> tuple[str, str] | None:
    """A line per side with a marker at every action, so a one-action program shows two
    points; values a plot cannot place (NaN, ±inf) are named in the title instead, and an
    action after which a side has no such tensor leaves a gap."""
    import matplotlib.pyplot as plt

    trajectory = failure.get("trajectory")
    if not trajectory:
        return None
    program = failure["program"]
    count = len(trajectory["expected"])
    unplotted = []
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * count), 2.8))
    for label, values, style in (
        ("expected (torch)", trajectory["expected"], {"marker": "o", "linestyle": "-"}),
        (
            "actual (implementation)",
            trajectory["actual"],
            {"marker": "x", "linestyle": "--", "markersize": 9},
        ),
    ):
        points = []
        for i, value in enumerate(values):
            number = math.nan if value is None else float(value)
            if value is not None and not math.isfinite(number):
                unplotted.append(f"{label.split()[0]} {value} after action {i}")
            points.append(number if math.isfinite(number) else math.nan)
        ax.plot(range(count), points, label=label, **style)
    labels = [
        f"{i} {program[i]['kind']}" if len(program) == count else str(i) for i in range(count)
    ]
    ax.set_xticks(range(count), labels, fontsize=8, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.5, count - 0.5)
    ax.set_xlabel("after action")
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    title = (
        f"{trajectory['tensor']} of {trajectory['parameter']}, element "
        f"{_element(trajectory['index'])}, after each action: torch and the implementation"
    )
    if unplotted:
        title += f" (not plotted: {'; '.join(unplotted)})"
    return title, _png(fig)


def _error_per_action_plot(failure: dict[str, Any]) -> tuple[str, str] | None:
    import matplotlib.pyplot as plt

    profile = failure.get("error_per_action") or []
    if not profile:
        return None
    fig, ax = plt.subplots(figsize=(6, 2.5))
    values = [max(v, 0) + 1 for v in profile]
    ax.bar(range(len(values)), values, color=["#c33" if v < 0 else "#37a" for v in profile])
    ax.set_yscale("log")
    ax.set_xticks(range(len(values)))
    ax.set_xlabel("action")
    ax.set_ylabel("max ULP error + 1")
    return "largest ULP error after each action (red: not measurable)", _png(fig)


def _error_map_plot(failure: dict[str, Any]) -> tuple[str, str] | None:
    import matplotlib.pyplot as plt
    import numpy as np

    d = failure["first_divergence"]
    if not d.get("ulp_errors") or d.get("shape") is None:
        return None
    errors = np.asarray(d["ulp_errors"], dtype=float)
    shape = d["shape"]
    grid = (
        errors.reshape(-1, shape[-1])
        if len(shape) >= 1 and errors.size == int(np.prod(shape)) and shape[-1]
        else errors.reshape(1, -1)
    )
    fig, ax = plt.subplots(figsize=(6, 2.5))
    image = ax.imshow(np.log10(np.where(grid < 0, np.nan, grid) + 1), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="log10(ULP error + 1)")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.set_xlabel("last dimension")
    ax.set_ylabel("other dimensions (flattened)")
    return f"ULP error of {d['tensor']} {d['parameter']} per element", _png(fig)


# --- JUnit and repro scripts ---------------------------------------------------------------------


def junit(report: dict[str, Any]) -> str:
    """JUnit XML: one test case per dtype run, failed with its first failure (every distinct
    failure of that dtype listed in the text), and one skipped test case per feature not
    verified, so CI dashboards show what the verdict does not cover."""
    dtypes = report["settings"].get("dtypes", [])
    not_verified = report.get("not_verified", [])
    by_dtype: dict[str, list[dict[str, Any]]] = {}
    for failure in report["failures"]:
        by_dtype.setdefault(failure["dtype"], []).append(failure)
    suite = ET.Element(
        "testsuite",
        name="sgd-conformance",
        tests=str(len(dtypes) + len(not_verified)),
        failures=str(len(by_dtype)),
        errors="0",
        skipped=str(len(not_verified)),
    )
    classname = f"conformance.{report['implementation']}"
    for dtype in dtypes:
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=f"sgd_conformance[{dtype}]"
        )
        if dtype in by_dtype:
            failures = by_dtype[dtype]
            element = ET.SubElement(
                case, "failure", type="Divergence", message=_summary(failures[0])
            )
            element.text = "\n".join(f"{f['repro']}: {_summary(f)}" for f in failures)
    for entry in not_verified:
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=f"not verified: {entry['feature']}"
        )
        ET.SubElement(case, "skipped", message=f"{entry['description']} ({entry['source']})")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _summary(failure: dict[str, Any]) -> str:
    d = failure["first_divergence"]
    where = d["tensor"] + (f" of {d['parameter']}" if d["parameter"] else "")
    flaky = f" ({FLAKY})" if failure.get("flaky") else ""
    return f"{where} differs at action {d['action_index']} {d['action']}{flaky}"


def _reference(report: dict[str, Any]) -> str:
    """The torch optimizer the run checked against (reports before families: SGD)."""
    return str(report.get("reference", "torch.optim.SGD"))


def repro_script(report: dict[str, Any], failure: dict[str, Any]) -> str:
    """A standalone script that replays the failing case against torch under the run's
    options (contract, mode, reference path, features left out, ...) and exits 1 with the
    first divergence (0 once the implementation conforms). The settings and the case are
    embedded as Python literals of their JSON, which hold any text safely."""
    return f'''#!/usr/bin/env python
"""Reproduces a conformance failure against {_reference(report)}.

Run it with plain `python {failure["repro"]}` where the implementation is importable (the
current directory is put on sys.path). It rebuilds the shrunk program, runs it on torch and
on the implementation under the run's options, and exits 1 with the first divergence, 0 once
they agree. To check another implementation, change "optimizer" in SETTINGS.
"""

import json
import os
import sys

sys.path.insert(0, os.getcwd())

from conformance.machine import replay  # noqa: E402
from conformance.options import RunOptions  # noqa: E402
from conformance.program import Case  # noqa: E402

SETTINGS = json.loads({json.dumps(report["settings"])!r})
CASE = json.loads({json.dumps(failure["case"])!r})


def main() -> int:
    divergence = replay(Case.from_json(CASE), RunOptions.from_json(SETTINGS))
    if divergence is None:
        print("conforms: no divergence")
        return 0
    print(divergence)
    return 1


if __name__ == "__main__":  # a worker process (--isolation process) imports this module too
    sys.exit(main())
'''


# --- checks up front ----------------------------------------------------------------------------


def check_directory(path: Path) -> None:
    """Raises ValueError, with a one-line reason, unless a report can be written into
    `path`: it is created where missing, then a probe file is written there and removed."""
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the directory {path}: {_reason(error)}") from error
    _probe(path)


def check_file(path: Path) -> None:
    """Raises ValueError, with a one-line reason, unless a file can be written at `path`: not
    a directory, its parent directory created where missing and writable (a probe), and an
    existing file opened for appending (which changes nothing)."""
    try:
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not a file")
    except OSError as error:
        raise ValueError(f"cannot use {path}: {_reason(error)}") from error
    check_directory(path.parent)
    try:
        if path.exists():
            with path.open("ab"):
                pass
    except OSError as error:
        raise ValueError(f"cannot write {path}: {_reason(error)}") from error


def _probe(directory: Path) -> None:
    try:
        handle, name = tempfile.mkstemp(prefix=".conformance-probe-", dir=directory)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise ValueError(f"cannot write in {directory}: {_reason(error)}") from error


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def schema() -> dict[str, Any]:
    """report_schema.json: the JSON Schema of report.json at SCHEMA_VERSION."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def timeless(value: Any) -> Any:
    """A report (or any part of one) without what a clock decides: its creation time and
    every duration. Two runs with the same seed and shard count are equal under it."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k != "created" and "seconds" not in k}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def check_replayable(data: Any) -> None:
    """Raises ValueError, with a one-line reason, unless `data` (a report.json, parsed) is a
    report this version can replay: version 2 against the whole schema; version 1 (which has
    no schema here) in what a replay reads, its settings and its failures' cases."""
    import jsonschema

    if not isinstance(data, dict):
        raise ValueError(f"not a report: a JSON object expected, found {_json_type(data)}")
    if "schema_version" not in data:
        raise ValueError("not a report: it has no schema_version")
    version = data["schema_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ValueError(
            f"report schema_version {version} is newer than this conformance "
            f"({SCHEMA_VERSION}); upgrade sgd-conformance"
        )
    if version not in (1, SCHEMA_VERSION) or isinstance(version, bool):
        raise ValueError(
            f"report schema_version {version!r} is unknown to this conformance "
            f"(it reads 1 and {SCHEMA_VERSION})"
        )
    full = schema()
    if version == 1:
        full = {
            "$defs": full["$defs"],
            "type": "object",
            "required": ["settings", "failures"],
            "properties": {
                "settings": {**full["properties"]["settings"], "required": ["optimizer"]},
                "failures": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["case"],
                        "properties": {"case": {"$ref": "#/$defs/case"}},
                    },
                },
            },
        }
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(full).iter_errors(data)
    )
    if error is not None:
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:200] + "…"
        raise ValueError(
            f"not a valid report of schema_version {version}: at {error.json_path}: {message}"
        )


def _json_type(value: Any) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def write(report: dict[str, Any], directory: Path, run_id: str | None = None) -> Path:
    """Writes report.json, report.md, report.html, junit.xml and repro_<n>.py into
    `directory/<run-id>`, atomically; returns that path."""
    directory.mkdir(parents=True, exist_ok=True)
    run_id = run_id or _run_id(report)
    target, n = directory / run_id, 1
    while target.exists():  # two runs in one second
        n += 1
        target = directory / f"{run_id}-{n}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=directory))
    try:
        # UTF-8 whatever the locale: the Markdown has ✅/❌, and names may be any text
        (tmp / "report.json").write_text(
            json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(html(report), encoding="utf-8")
        (tmp / "junit.xml").write_text(junit(report), encoding="utf-8")
        for failure in report["failures"]:
            (tmp / failure["repro"]).write_text(repro_script(report, failure), encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _run_id(report: dict[str, Any]) -> str:
    return run_id(report["created"], report["implementation"])


def run_id(created: str, implementation: str) -> str:
    """The report directory's name: the time it was created and the implementation."""
    stamp = re.sub(r"[^0-9T]", "", created.split("+")[0])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(implementation)).strip("-")
    return f"{stamp}-{slug}"
