"""The verdict: a table of every disagreement, a summary, and JUnit XML."""

from __future__ import annotations

import shutil
import textwrap
from collections import defaultdict
from xml.etree import ElementTree as ET

from .runner import Result

SHOWN_PER_RULE = 3  # rows per (check, rule) in the table; the rest are counted


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(str(text), width, break_long_words=True, break_on_hyphens=False) or [""]


def disagreement_table(results: list[Result], width: int | None = None) -> str:
    rows = [d for r in results for d in r.disagreements]
    if not rows:
        return ""
    width = width or max(120, min(shutil.get_terminal_size((160, 40)).columns, 200))
    cols = [("RULE", 0.20), ("REQUEST", 0.30), ("THE SPEC SAYS", 0.27), ("THE TARGET DID", 0.23)]
    widths = [max(12, int((width - 3 * len(cols)) * f)) for _, f in cols]
    groups: dict[tuple, list] = defaultdict(list)
    for d in rows:
        groups[(d.check, d.rule)].append(d)
    lines = []
    sep = "-+-".join("-" * w for w in widths)
    lines.append(" | ".join(name.ljust(w) for (name, _), w in zip(cols, widths)))
    lines.append(sep)
    last_check = None
    for (check_name, rule), items in groups.items():
        if check_name != last_check:
            if last_check is not None:
                lines.append(sep)
            lines.append(f"[{check_name}]")
            last_check = check_name
        for d in items[:SHOWN_PER_RULE]:
            cells = [_wrap(c, w) for c, w in zip((d.rule, d.request, d.spec, d.target), widths)]
            for i in range(max(map(len, cells))):
                lines.append(" | ".join((c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths)))
        if len(items) > SHOWN_PER_RULE:
            lines.append(f"  ... and {len(items) - SHOWN_PER_RULE} more disagreement(s) of rule {rule}")
    return "\n".join(lines)


def summary(results: list[Result], target: str, budget: str, extra: list[str] | None = None) -> str:
    count = defaultdict(int)
    for r in results:
        count[r.status] += 1
    n_dis = sum(len(r.disagreements) for r in results)
    out = [f"target: {target}", f"spend: {budget}"]
    out += extra or []
    skipped = [r for r in results if r.status == "skipped"]
    if skipped:
        out.append("skipped (not verified):")
        out += [f"  - {r.check} [{r.tier}]: {r.reason}" for r in skipped]
    errors = [r for r in results if r.status == "error"]
    if errors:
        out.append("errors (the check could not finish):")
        out += [f"  - {r.check}: {r.reason}" for r in errors]
    verdict = "AGREES with the contract" if not (count["failed"] or count["error"]) else "DISAGREES with the contract"
    out.append(f"{count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped, "
               f"{count['error']} errors; {n_dis} disagreement(s); the target {verdict}")
    return "\n".join(out)


def junit_xml(results: list[Result], path, name: str = "kie-mock verify") -> None:
    suite = ET.Element("testsuite", name=name, tests=str(len(results)),
                       failures=str(sum(r.status == "failed" for r in results)),
                       errors=str(sum(r.status == "error" for r in results)),
                       skipped=str(sum(r.status == "skipped" for r in results)),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"contract.{r.suite}.{r.tier}", name=r.check,
                             time=f"{r.duration:.3f}")
        rows = [f"{d.rule} | {d.request} | spec: {d.spec} | target: {d.target}" for d in r.disagreements]
        if r.status == "failed":
            first = r.disagreements[0] if r.disagreements else None
            msg = f"{first.rule}: expected {first.spec}; got {first.target}" if first else r.reason
            el = ET.SubElement(case, "failure", message=msg[:500], type="disagreement")
            el.text = "\n".join(rows)
        elif r.status == "skipped":
            ET.SubElement(case, "skipped", message=r.reason[:500])
        elif r.status == "error":  # what it found before it could not go on is kept
            el = ET.SubElement(case, "error", message=r.reason[:500])
            el.text = "\n".join(rows + r.notes)
        if r.notes and r.status != "error":
            ET.SubElement(case, "system-out").text = "\n".join(r.notes)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
