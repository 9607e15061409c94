"""The Doctor screen's rows: what can be measured here, what cannot, and the fix for each
(exactly what `wattlens doctor` prints, from :func:`wattlens.app.doctor.doctor`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DoctorRow:
    ok: bool
    what: str
    detail: str
    fix: str = ""


def doctor_rows(db=None) -> list[DoctorRow]:
    from wattlens.app.doctor import doctor

    doc = doctor(db=db)
    rows = []
    for s in doc["usable"]:
        detail = f"{s['kind']}, {s['method']}"
        if s["method"] == "estimated":
            detail += f" — an estimate, not a meter: {s.get('tdp_source', '')}"
        rows.append(DoctorRow(True, f"{s['label']} ({s['id']})", detail))
    for u in doc["unavailable"]:
        rows.append(DoctorRow(False, f"{u['id']} ({u['kind']})", u["reason"], u.get("fix") or ""))
    for c in doc["checks"]:
        rows.append(DoctorRow(bool(c["ok"]), c["name"], c["detail"], (c.get("fix") or "") if not c["ok"] else ""))
    return rows
