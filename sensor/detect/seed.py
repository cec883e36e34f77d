"""The built-in rule: the seed page "Potential Suspicious Mofcomp Execution".

The page ships verbatim in ``sensor/data/``; its ``Criteria`` line is compiled by
``sensor.detect.criteria`` and its metadata is read from the page's sections.
"""
from __future__ import annotations

import re
from importlib import resources

from .criteria import parse_criteria
from .ir import Rule, RuleError

SEED_PAGE = "seed_000_cc784d634d6f7fd1.txt"
SEED_RULE_ID = "seed-cc784d634d6f7fd1"
# The SigmaHQ rule the page renders (differences: README, "The built-in rule").
SIGMAHQ_ID = "1dd05363-104e-4b4a-b963-196a534b03a1"

_HEADINGS = (
    "About the rule", "Rule Type", "Rule Description", "Severity", "Rule journey",
    "Attack chain scenario", "Impact", "Rule Requirement", "Prerequisites", "Criteria",
    "Detection", "Execution Mode", "Log Sources", "MITRE ATT&CK", "Security Standards",
    "Author", "Future actions", "Known False Positives", "Next Steps", "Mitigation",
)


def page_text() -> str:
    """The seed page as shipped."""
    return resources.files("sensor").joinpath("data", SEED_PAGE).read_text(encoding="utf-8")


def _sections(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    out: dict[str, list[str]] = {"_title": [lines[0].strip()] if lines else []}
    current = "_head"
    for line in lines[1:]:
        s = line.strip()
        if s in _HEADINGS:
            current = s
            out.setdefault(current, [])
            continue
        if s:
            out.setdefault(current, []).append(s)
    return out


def _bullets(lines: list[str]) -> list[str]:
    return [ln[1:].strip() if ln.startswith("-") else ln for ln in lines]


def _table(lines: list[str]) -> list[dict[str, str]]:
    rows = [[c.strip() for c in ln.rstrip("|").split("|")] for ln in lines if "|" in ln]
    if not rows:
        return []
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[1:]]


def seed_rule(text: str | None = None) -> Rule:
    """Build the seed rule from its page (the shipped one unless ``text`` is given)."""
    text = page_text() if text is None else text
    sec = _sections(text)
    try:
        criteria_line = sec["Criteria"][0]
    except (KeyError, IndexError):
        raise RuleError("seed page has no Criteria line", SEED_PAGE) from None
    try:
        crit = parse_criteria(criteria_line)
    except RuleError as exc:
        raise RuleError(exc.message, SEED_PAGE) from None

    summary = {}
    for row in _table(sec.get("_head", [])):
        if row.get("Rule name"):
            summary = row
            break
    mitre = summary.get("MITRE ATT&CK tags") or " ".join(sec.get("MITRE ATT&CK", []))
    m = re.match(r"\s*(?P<tactic>[^:]+):\s*(?P<technique>.+?)\s*\((?P<id>T\d{4}(?:\.\d{3})?)\)", mitre)
    tactic, technique, tech_id = (m.group("tactic"), m.group("technique"), m.group("id")) if m else ("", "", "")
    severity = summary.get("Severity", "")
    standards = sec.get("Security Standards", [])
    std = next((s for s in standards if re.match(r"[A-Z]{2}\.[A-Z]{2}-\d+", s)), "")
    mitigations = [
        {"id": r.get("Mitigation ID", ""), "name": r.get("Mitigation Name", ""),
         "description": r.get("Mitigation description", "")}
        for r in _table(sec.get("Mitigation", []))
    ]
    next_steps = _bullets(sec.get("Next Steps", []))
    if next_steps and next_steps[0].lower().startswith("when this rule is triggered"):
        next_steps = next_steps[1:]
    meta = {
        "rule_type": summary.get("Rule type") or " ".join(sec.get("Rule Type", [])),
        "log_source": summary.get("Log sources", ""),
        "severity": severity,
        "mitre": {"tactic": tactic, "technique": technique, "technique_id": tech_id},
        "attack_chain": " ".join(sec.get("Attack chain scenario", [])),
        "impact": _bullets(sec.get("Impact", [])),
        "execution_mode": " ".join(sec.get("Execution Mode", [])),
        "security_standard": std,
        "security_standard_note": " ".join(s for s in standards if s != std and
                                           not s.startswith("Enabling this rule")),
        "next_steps": next_steps,
        "mitigations": mitigations,
        "criteria": criteria_line,
        "sigmahq_id": SIGMAHQ_ID,
        "page": SEED_PAGE,
    }
    tags = ["attack.defense-evasion"]
    if tech_id:
        tags.append("attack." + tech_id.lower())
    return Rule(
        id=SEED_RULE_ID,
        title=sec["_title"][0] if sec.get("_title") else summary.get("Rule name", ""),
        predicates=crit.predicates,
        condition=crit.condition,
        level=severity.lower() or "critical",
        description=" ".join(sec.get("Rule Description", [])),
        tags=tuple(tags),
        author=" ".join(sec.get("Author", [])),
        falsepositives=tuple(sec.get("Known False Positives", [])),
        source=SEED_PAGE,
        origin="builtin",
        meta=meta,
        select=crit.select,
    )


def builtin_rules() -> list[Rule]:
    """The rules that ship with the sensor: the seed rule and "Parent process spoofing"."""
    from .spoofing import spoofing_rule
    return [seed_rule(), spoofing_rule()]
