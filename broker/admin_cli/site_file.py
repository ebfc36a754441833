"""A site's directory as a file: `site.yaml` (broker.yaml's `site:` shape) or `site.csv` (one row per member).

CSV columns: household_number, household_name, type (resident, device, or empty for a household alone), id,
name, kind (door or lobby), households (a lobby's households, separated by `;`), emergency (true/false).
Both are read into the same flat `Wanted` state and validated by broker.yaml's own models.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from broker.config import SiteConfig

__all__ = ["CSV_COLUMNS", "SiteFileError", "Wanted", "dump_csv", "dump_yaml", "read_site_file"]

CSV_COLUMNS = ("household_number", "household_name", "type", "id", "name", "kind", "households", "emergency")


class SiteFileError(Exception):
    """The file cannot be read; the message says where."""


@dataclass
class Wanted:
    """The directory a file declares: households, residents and devices by id, each with its fields."""

    households: dict[str, dict[str, Any]] = field(default_factory=dict)
    residents: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_site_file(path: Path) -> Wanted:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SiteFileError(f"cannot read {path}: {exc.strerror}") from exc
    raw = _from_csv(path, text) if path.suffix.lower() == ".csv" else _from_yaml(path, text)
    try:
        site = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SiteFileError(f"{path}: {where}: {first['msg']}") from exc
    return _flatten(site, path)


def _from_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SiteFileError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SiteFileError(f"{path}: top level must be a mapping with `households` (or `site:`)")
    site = loaded.get("site", loaded)
    return {"households": (site or {}).get("households") or []}


def _from_csv(path: Path, text: str) -> dict[str, Any]:
    reader = csv.DictReader(io.StringIO(text))
    missing = {"household_number", "type", "id"} - set(reader.fieldnames or ())
    if missing:
        raise SiteFileError(f"{path}: missing columns {', '.join(sorted(missing))} (header: {', '.join(CSV_COLUMNS)})")
    households: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(reader, start=2):
        number = (row.get("household_number") or "").strip()
        if not number:
            raise SiteFileError(f"{path}:{line}: household_number is empty")
        hh = households.setdefault(number, {"household_number": number, "residents": [], "devices": []})
        if (row.get("household_name") or "").strip():
            hh["name"] = row["household_name"].strip()
        kind, ident, name = (str(row.get(c) or "").strip() for c in ("type", "id", "name"))
        if kind == "":
            continue
        if kind not in ("resident", "device") or not ident:
            raise SiteFileError(f"{path}:{line}: type must be resident or device (or empty), with an id")
        member: dict[str, Any] = {f"{kind}_id": ident, "name": name or None}
        if kind == "device":
            if (row.get("kind") or "").strip():
                member["kind"] = row["kind"].strip()
            if (row.get("households") or "").strip():
                member["households"] = [h.strip() for h in row["households"].split(";") if h.strip()]
            flag = (row.get("emergency") or "").strip().lower()
            if flag:
                if flag not in ("true", "false", "1", "0", "yes", "no"):
                    raise SiteFileError(f"{path}:{line}: emergency must be true or false, got {flag!r}")
                member["emergency"] = flag in ("true", "1", "yes")
        hh[f"{kind}s"].append(member)
    return {"households": list(households.values())}


def _flatten(site: SiteConfig, path: Path) -> Wanted:
    wanted = Wanted()
    for hh in site.households:
        if hh.household_number in wanted.households:
            raise SiteFileError(f"{path}: household {hh.household_number} appears twice")
        wanted.households[hh.household_number] = {"name": hh.name}
        for r in hh.residents:
            if r.resident_id in wanted.residents:
                raise SiteFileError(f"{path}: resident {r.resident_id} appears twice")
            wanted.residents[r.resident_id] = {"household_number": hh.household_number, "name": r.name}
        for d in hh.devices:
            if d.device_id in wanted.devices:
                raise SiteFileError(f"{path}: device {d.device_id} appears twice")
            wanted.devices[d.device_id] = {"household_number": hh.household_number, "name": d.name, "kind": d.kind,
                                           "households": d.households, "emergency": d.emergency}
    return wanted


def _site(households: list[dict[str, Any]], residents: list[dict[str, Any]],
          devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {h["household_number"]: {"household_number": h["household_number"],
                                                              "name": h.get("name"), "residents": [], "devices": []}
                                      for h in households}
    for r in residents:
        out[r["household_number"]]["residents"].append({"resident_id": r["resident_id"], "name": r.get("name")})
    for d in devices:
        device = {"device_id": d["device_id"], "name": d.get("name"), "emergency": bool(d.get("emergency"))}
        if d.get("kind") is not None:
            device["kind"] = d["kind"]
        if d.get("households") is not None:
            device["households"] = d["households"]
        out[d["household_number"]]["devices"].append(device)
    return list(out.values())


def dump_yaml(households: list[dict[str, Any]], residents: list[dict[str, Any]],
              devices: list[dict[str, Any]]) -> str:
    return str(yaml.safe_dump({"households": _site(households, residents, devices)}, allow_unicode=True,
                              sort_keys=False))


def dump_csv(households: list[dict[str, Any]], residents: list[dict[str, Any]], devices: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(CSV_COLUMNS)
    for hh in _site(households, residents, devices):
        number, name = hh["household_number"], hh["name"] or ""
        if not hh["residents"] and not hh["devices"]:
            out.writerow([number, name, "", "", "", "", "", ""])
        for r in hh["residents"]:
            out.writerow([number, name, "resident", r["resident_id"], r["name"] or "", "", "", ""])
        for d in hh["devices"]:
            out.writerow([number, name, "device", d["device_id"], d["name"] or "", d.get("kind") or "",
                          ";".join(d.get("households") or ()), "true" if d["emergency"] else "false"])
    return buf.getvalue()
