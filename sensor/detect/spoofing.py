"""The built-in rule "Parent process spoofing".

Kernel-Process logs a process start in the context of the process that called CreateProcess: the
ETW header's ProcessId (``CreatorProcessId``) is the real creator.  ``ParentProcessId`` is the
parent the new process declares, which a caller chooses freely with
``PROC_THREAD_ATTRIBUTE_PARENT_PROCESS`` (ATT&CK T1134.004).  The rule fires when the two differ,
except for the Windows brokers that create processes on behalf of another one by design; each
exception carries its reason, and alerts carry the list (``rule.meta.exceptions``).

The brokers are matched by their full System32 path on any drive (a file named ``svchost.exe``
elsewhere is no exception).  Sources without a creator (Sysmon EID 1, Security 4688, JSON lines
without ``CreatorProcessId``) never fire it: the rule requires the field.
"""
from __future__ import annotations

from .ir import Predicate, Rule

RULE_ID = "builtin-parent-process-spoofing"

# (glob on CreatorImage, reason).  Globs are case-insensitive whole-value matches.
EXCEPTIONS: tuple[tuple[str, str], ...] = (
    ("?:\\Windows\\System32\\svchost.exe",
     "Service host: AppInfo starts elevated processes (UAC, after consent.exe) with the requesting "
     "process as parent; Secondary Logon (seclogon, RunAs and CreateProcessWithLogonW) starts the "
     "new process with the caller as parent; Windows Error Reporting (WerSvc) starts WerFault.exe "
     "under the failing process."),
    ("?:\\Windows\\System32\\services.exe",
     "Service Control Manager: starts service processes and may hand them another parent."),
    ("?:\\Windows\\System32\\wininit.exe",
     "Session 0 initialisation: starts services.exe and lsass.exe at boot."),
    ("?:\\Windows\\System32\\smss.exe",
     "Session Manager: its per-session copies start csrss.exe and winlogon.exe and exit, so the "
     "declared parent is a Session Manager instance that is not the creator."),
    ("?:\\Windows\\System32\\WerFault.exe",
     "Windows Error Reporting: reflected-process dumps start a clone under the failing process."),
)

# Creators that are not user-mode processes: the idle process and the kernel (System).
KERNEL_CREATORS = (0, 4)


def spoofing_rule() -> Rule:
    """The rule as IR: creator known, creator != declared parent, creator not a documented broker."""
    preds = [
        Predicate("CreatorProcessId", "exists", (True,)),
        Predicate("ParentProcessId", "exists", (True,)),
        Predicate("CreatorProcessId", "fieldref", ("ParentProcessId",)),
        Predicate("CreatorProcessId", "eq", tuple(str(p) for p in KERNEL_CREATORS)),
        Predicate("CreatorImage", "glob", tuple(g for g, _ in EXCEPTIONS)),
    ]
    condition = ("and", ("pred", 0), ("pred", 1), ("not", ("pred", 2)), ("not", ("pred", 3)),
                 ("not", ("pred", 4)))
    return Rule(
        id=RULE_ID,
        title="Parent process spoofing",
        predicates=tuple(preds),
        condition=condition,
        level="high",
        description=("The process that created this process (the ETW header's ProcessId of its "
                     "start event) is not the parent it declares: the parent was set with "
                     "PROC_THREAD_ATTRIBUTE_PARENT_PROCESS, which hides the real creator from "
                     "parent-based detection."),
        tags=("attack.defense-evasion", "attack.privilege-escalation", "attack.t1134.004"),
        author="etw-sensor",
        references=("https://attack.mitre.org/techniques/T1134/004/",),
        falsepositives=("Brokers not in the exception list that create processes for another "
                        "process by design (third-party elevation or sandbox brokers).",
                        "A creator the process table does not know (CreatorImage empty) is never "
                        "excepted."),
        source="builtin:parent-process-spoofing",
        origin="builtin",
        meta={"exceptions": [{"creator_image": g, "reason": r} for g, r in EXCEPTIONS],
              "kernel_creators": list(KERNEL_CREATORS)},
    )
