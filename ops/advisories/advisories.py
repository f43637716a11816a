"""Offline check of the pinned dependency set against a vendored advisory snapshot.

    python ops/advisories/advisories.py check              # constraints.txt vs the snapshot
    python ops/advisories/advisories.py refresh --from DIR # rebuild the snapshot (online step)

Why vendored: ``pip-audit`` (``make audit``) asks a vulnerability service on every run, and CI
here reaches only a PyPI mirror without it. No PyPI package ships a current advisory database
(``safety-db``'s last release is from 2021; ``safety`` and ``pip-audit`` fetch theirs), so the
advisories of exactly our pinned packages are kept in the repository in OSV format
(``vulns/<package>/<id>.json``, converted from pypa/advisory-database) and compared here with
``packaging``'s version ordering.

The check fails (exit 1) when a pinned version is affected by an advisory that is not in the
allow-list, and when a pinned package is missing from ``index.json`` (the snapshot never looked
at it, so "no advisory" would be a guess). See ops/advisories/README.md for the refresh
procedure and the allow-list format.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_DB = HERE
DEFAULT_CONSTRAINTS = REPO / "constraints.txt"
DEFAULT_ALLOWLIST = REPO / "ops" / "pip-audit-allowlist.txt"
# A snapshot older than this is reported (not failed): refreshing needs the network.
STALE_AFTER_DAYS = 90


class SnapshotError(Exception):
    """The snapshot or the constraints file cannot be read as documented."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: Version
    line: int


@dataclass(frozen=True)
class Finding:
    pin: Pin
    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    fixed: tuple[str, ...]

    @property
    def ids(self) -> frozenset[str]:
        return frozenset((self.advisory_id, *self.aliases))


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    accepted: list[Finding] = field(default_factory=list)
    uncovered: list[Pin] = field(default_factory=list)
    unused_allowlist: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings and not self.uncovered


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def read_pins(path: Path) -> list[Pin]:
    """``name==version`` lines (comments, blank lines and environment markers allowed)."""
    pins: list[Pin] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise SnapshotError(f"{path}:{number}: not a requirement: {line!r} ({exc})") from exc
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
            raise SnapshotError(
                f"{path}:{number}: {line!r} is not an exact pin; only name==version can be checked"
            )
        pins.append(Pin(canonicalize_name(req.name), Version(specs[0].version), number))
    return pins


def read_allowlist(path: Path) -> dict[str, str]:
    """``<id>  # package, why it does not apply, who accepted it and when`` per line."""
    accepted: dict[str, str] = {}
    if not path.exists():
        return accepted
    for raw in path.read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        ident, _, reason = text.partition("#")
        ident = ident.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", ident):
            raise SnapshotError(f"{path}: not an advisory id: {ident!r}")
        accepted[ident.upper()] = reason.strip()
    return accepted


def load_index(db: Path) -> dict[str, Any]:
    index_path = db / "index.json"
    try:
        index: dict[str, Any] = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"cannot read {index_path}: {exc}") from exc
    if not isinstance(index.get("packages"), dict):
        raise SnapshotError(f"{index_path}: no 'packages' mapping")
    return index


def load_advisories(db: Path, package: str) -> list[dict[str, Any]]:
    folder = db / "vulns" / package
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        advisory = json.loads(path.read_text())
        if advisory.get("id") != path.stem:
            raise SnapshotError(f"{path}: id {advisory.get('id')!r} does not match the file name")
        out.append(advisory)
    return out


# --------------------------------------------------------------------------------------------
# OSV evaluation (PyPI ecosystem)
# --------------------------------------------------------------------------------------------
_ZERO = Version("0")


def _bound(raw: str) -> Version | None:
    if raw == "0":
        return None  # before every version
    try:
        return Version(raw)
    except InvalidVersion:
        return None


def _event_key(event: Mapping[str, str]) -> tuple[int, Version, int]:
    ((kind, raw),) = event.items()
    bound = _bound(raw)
    order = {"introduced": 0, "fixed": 1, "last_affected": 1, "limit": 2}.get(kind, 3)
    return (0 if bound is None else 1, bound or _ZERO, order)


def in_range(version: Version, events: Sequence[Mapping[str, str]]) -> bool:
    """OSV semantics: walk the events in version order; ``introduced`` opens an affected
    interval, ``fixed``/``limit`` close it before, ``last_affected`` after, the bound."""
    affected = False
    for event in sorted(events, key=_event_key):
        ((kind, raw),) = event.items()
        bound = _bound(raw)
        if kind == "introduced":
            if bound is None or version >= bound:
                affected = True
        elif bound is None:
            continue
        elif kind in ("fixed", "limit") and version >= bound:
            affected = False
        elif kind == "last_affected" and version > bound:
            affected = False
    return affected


def affects(advisory: Mapping[str, Any], package: str, version: Version) -> bool:
    if advisory.get("withdrawn"):
        return False
    for entry in advisory.get("affected", []):
        pkg = entry.get("package", {})
        if pkg.get("ecosystem") != "PyPI" or canonicalize_name(pkg.get("name", "")) != package:
            continue
        listed = entry.get("versions", [])
        if any(_same(version, v) for v in listed):
            return True
        for rng in entry.get("ranges", []):
            if rng.get("type") == "ECOSYSTEM" and in_range(version, rng.get("events", [])):
                return True
    return False


def _same(version: Version, raw: str) -> bool:
    try:
        return Version(raw) == version
    except InvalidVersion:
        return False


def fixed_versions(advisory: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(
        event["fixed"]
        for entry in advisory.get("affected", [])
        for rng in entry.get("ranges", [])
        if rng.get("type") == "ECOSYSTEM"
        for event in rng.get("events", [])
        if "fixed" in event
    )


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------
def check(
    constraints: Path = DEFAULT_CONSTRAINTS,
    db: Path = DEFAULT_DB,
    allowlist: Path = DEFAULT_ALLOWLIST,
    *,
    today: date | None = None,
) -> Report:
    index = load_index(db)
    covered: Mapping[str, Any] = index["packages"]
    accepted = read_allowlist(allowlist)
    used: set[str] = set()
    report = Report()
    for pin in read_pins(constraints):
        report.checked += 1
        if pin.name not in covered:
            report.uncovered.append(pin)
            continue
        for advisory in load_advisories(db, pin.name):
            if not affects(advisory, pin.name, pin.version):
                continue
            finding = Finding(
                pin=pin,
                advisory_id=advisory["id"],
                aliases=tuple(advisory.get("aliases", [])),
                summary=str(advisory.get("summary") or advisory.get("details") or "")[:200],
                fixed=fixed_versions(advisory),
            )
            hits = {i.upper() for i in finding.ids} & set(accepted)
            if hits:
                used |= hits
                report.accepted.append(finding)
            else:
                report.findings.append(finding)
    report.unused_allowlist = sorted(set(accepted) - used)
    snapshot = index.get("snapshot_date")
    if isinstance(snapshot, str):
        age = ((today or datetime.now(UTC).date()) - date.fromisoformat(snapshot)).days
        if age > STALE_AFTER_DAYS:
            report.warnings.append(
                f"the advisory snapshot's data is {age} days old ({snapshot}): advisories "
                "published since are not checked; refresh it where the network is reachable "
                "(ops/advisories/README.md)"
            )
    return report


def render(report: Report) -> str:
    lines = []
    for f in report.findings:
        also = f" ({', '.join(f.aliases)})" if f.aliases else ""
        fix = f"; fixed in {', '.join(f.fixed)}" if f.fixed else ""
        lines.append(
            f"VULNERABLE {f.pin.name}=={f.pin.version} (constraints line {f.pin.line}): "
            f"{f.advisory_id}{also}{fix} — {f.summary}"
        )
    for pin in report.uncovered:
        lines.append(
            f"NOT COVERED {pin.name}=={pin.version}: not in the advisory snapshot "
            "(ops/advisories/index.json); refresh it (ops/advisories/README.md)"
        )
    for f in report.accepted:
        lines.append(f"accepted {f.pin.name}=={f.pin.version}: {f.advisory_id} (allow-list)")
    for ident in report.unused_allowlist:
        lines.append(f"warning: allow-list entry {ident} matches no pinned package any more")
    lines.extend(f"warning: {w}" for w in report.warnings)
    status = "FAILED" if not report.ok else "ok"
    lines.append(
        f"advisories: {status}: {report.checked} pins, {len(report.findings)} vulnerable, "
        f"{len(report.uncovered)} not covered, {len(report.accepted)} accepted"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Refresh (the online step: run it on a clone of pypa/advisory-database)
# --------------------------------------------------------------------------------------------
def normalise(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One pypa/advisory-database YAML document → the OSV subset kept here.

    Handles the current schema (``affected[].ranges[].events``) and the early one (top-level
    ``package``, ``affects.ranges[]`` with ``introduced``/``fixed`` keys)."""
    affected: list[dict[str, Any]] = []
    if "affected" in doc:
        for entry in doc["affected"]:
            pkg = entry.get("package", {})
            ranges = [
                {"type": "ECOSYSTEM", "events": [_event(e) for e in r.get("events", [])]}
                for r in entry.get("ranges", [])
                if r.get("type") == "ECOSYSTEM"
            ]
            item: dict[str, Any] = {
                "package": {"ecosystem": "PyPI", "name": canonicalize_name(pkg.get("name", ""))},
                "ranges": ranges,
            }
            if not ranges and entry.get("versions"):
                item["versions"] = [str(v) for v in entry["versions"]]
            affected.append(item)
    elif "affects" in doc:
        pkg = doc.get("package", {})
        ranges = []
        for r in doc["affects"].get("ranges", []):
            if r.get("type") != "ECOSYSTEM":
                continue
            events = [{"introduced": str(r.get("introduced", "0"))}]
            if "fixed" in r:
                events.append({"fixed": str(r["fixed"])})
            ranges.append({"type": "ECOSYSTEM", "events": events})
        item = {
            "package": {"ecosystem": "PyPI", "name": canonicalize_name(pkg.get("name", ""))},
            "ranges": ranges,
        }
        if not ranges and doc["affects"].get("versions"):
            item["versions"] = [str(v) for v in doc["affects"]["versions"]]
        affected.append(item)
    details = " ".join(str(doc.get("summary") or doc.get("details") or "").split())
    out: dict[str, Any] = {
        "id": str(doc["id"]),
        "aliases": [str(a) for a in doc.get("aliases", [])],
        "summary": details[:300],
        "published": str(doc.get("published", "")),
        "modified": str(doc.get("modified", "")),
        "affected": affected,
        "database_specific": {"source": source},
    }
    if doc.get("withdrawn"):
        out["withdrawn"] = str(doc["withdrawn"])
    return out


def _event(event: Mapping[str, Any]) -> dict[str, str]:
    ((kind, raw),) = event.items()
    return {str(kind): str(raw)}


def refresh(
    clone: Path,
    constraints: Path = DEFAULT_CONSTRAINTS,
    db: Path = DEFAULT_DB,
    *,
    commit: str = "",
    today: date | None = None,
) -> dict[str, list[str]]:
    """Rewrite ``db`` from ``clone/vulns/<package>/*.yaml`` for every pinned package."""
    import yaml  # PyYAML is in the test extra; only the refresh needs it

    packages: dict[str, list[str]] = {}
    vulns = db / "vulns"
    for pin in read_pins(constraints):
        folder = vulns / pin.name
        for old in folder.glob("*.json") if folder.is_dir() else []:
            old.unlink()
        ids = []
        for path in sorted((clone / "vulns" / pin.name).glob("*.yaml")):
            doc = yaml.safe_load(path.read_text())
            where = f"pypa/advisory-database@{commit or 'HEAD'}:vulns/{pin.name}/{path.name}"
            advisory = normalise(doc, where)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{advisory['id']}.json").write_text(
                json.dumps(advisory, indent=2, sort_keys=True) + "\n"
            )
            ids.append(advisory["id"])
        packages[pin.name] = ids
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    write_index(db, packages, source=f"pypa/advisory-database@{commit or 'HEAD'}", data_date=today)
    return packages


def write_index(
    db: Path,
    packages: Mapping[str, Iterable[str]],
    *,
    source: str,
    data_date: date | None = None,
    note: str = "",
) -> None:
    """``snapshot_date`` is how current the data is (the day of the clone), which the check
    compares with today."""
    index: dict[str, Any] = {
        "format": "OSV 1.x subset: id, aliases, summary, published, modified, affected "
        "(PyPI ECOSYSTEM ranges, or versions when no range), database_specific.source",
        "source": source,
        "snapshot_date": (data_date or datetime.now(UTC).date()).isoformat(),
    }
    if note:
        index["note"] = note
    index["packages"] = {name: sorted(ids) for name, ids in sorted(packages.items())}
    (db / "index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check_cmd = sub.add_parser("check", help="the pinned set against the snapshot (offline)")
    check_cmd.add_argument("--constraints", type=Path, default=DEFAULT_CONSTRAINTS)
    check_cmd.add_argument("--db", type=Path, default=DEFAULT_DB)
    check_cmd.add_argument("--allowlist", type=Path, default=DEFAULT_ALLOWLIST)
    refresh_cmd = sub.add_parser("refresh", help="rebuild the snapshot from a local clone")
    refresh_cmd.add_argument("--from", dest="clone", type=Path, required=True)
    refresh_cmd.add_argument("--commit", default="", help="the clone's commit, for provenance")
    refresh_cmd.add_argument("--constraints", type=Path, default=DEFAULT_CONSTRAINTS)
    refresh_cmd.add_argument("--db", type=Path, default=DEFAULT_DB)
    args = parser.parse_args(argv)
    try:
        if args.command == "refresh":
            packages = refresh(args.clone, args.constraints, args.db, commit=args.commit)
            total = sum(len(v) for v in packages.values())
            sys.stdout.write(f"snapshot rewritten: {len(packages)} packages, {total} advisories\n")
            return 0
        report = check(args.constraints, args.db, args.allowlist)
    except SnapshotError as exc:
        sys.stderr.write(f"advisories: error: {exc}\n")
        return 2
    sys.stdout.write(render(report) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
