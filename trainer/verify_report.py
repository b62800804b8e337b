"""What `verify` found: one Check (name, ok, detail) per rule, and the report around them.

Shared by the file rules (trainer/verify.py) and the base-model rules (trainer/verify_base.py);
the CLI prints `format()`, the run log and the window show `summary()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ADAPTER = "lora_studio_verify"  # the adapter name verify loads a file under in diffusers
# |fused - expected| allowed, relative to the weight's magnitude: the pipeline computes in fp32
# from the file's own (fp16/bf16/fp32) tensors, so the file dtype cancels out here.
WEIGHT_RTOL = 1e-5


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    path: Path
    base_model: Path | None
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def format(self) -> str:
        lines = [f"verify {self.path.name}"
                 + (f" against {self.base_model}" if self.base_model else " (no base model)")]
        for check in self.checks:
            lines.append(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        for reason in self.skipped:
            lines.append(f"  skip  {reason}")
        failed = len(self.failures)
        lines.append(f"{'PASSED' if self.ok else 'FAILED'}: {len(self.checks) - failed} of "
                     f"{len(self.checks)} checks pass" + (f", {failed} fail" if failed else ""))
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for a log or the GUI."""
        if self.ok:
            return f"verified: all {len(self.checks)} checks pass"
        first = self.failures[0]
        return (f"verification FAILED ({len(self.failures)} of {len(self.checks)} checks): "
                f"{first.name}: {first.detail}")


def few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
