"""The offline dependency check (issue 10): constraints.txt against the vendored OSV snapshot
in ops/advisories/, with the allow-list shared with `make audit`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.version import Version

from tests.conftest import REPO

SCRIPT = REPO / "ops" / "advisories" / "advisories.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("voxmem_advisories", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


adv = _load()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def pinned(tmp_path: Path, **replace: str) -> Path:
    """constraints.txt with some pins swapped (name → version)."""
    lines = []
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name = line.split("==", 1)[0]
        lines.append(f"{name}=={replace.pop(name)}" if name in replace else line)
    lines += [f"{name}=={version}" for name, version in replace.items()]
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_pinned_set_passes_the_offline_check() -> None:
    result = run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    pins = sum(1 for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert f"advisories: ok: {pins} pins, 0 vulnerable, 0 not covered" in result.stdout


def test_a_deliberately_vulnerable_pin_fails_the_check(tmp_path: Path) -> None:
    result = run("check", "--constraints", str(pinned(tmp_path, requests="2.30.0")))
    assert result.returncode == 1, result.stdout
    assert "VULNERABLE requests==2.30.0" in result.stdout
    assert "PYSEC-2023-74 (CVE-2023-32681, GHSA-j8r2-6x86-q33q); fixed in 2.31.0" in result.stdout
    assert "advisories: FAILED" in result.stdout


def test_an_allowlisted_advisory_is_accepted_by_any_of_its_ids(tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text(
        "# accepted\nGHSA-j8r2-6x86-q33q  # requests: no proxy in use; test, 2026\n"
        "PYSEC-1999-1  # stale entry\n"
    )
    constraints = pinned(tmp_path, requests="2.30.0")
    result = run("check", "--constraints", str(constraints), "--allowlist", str(allow))
    assert result.returncode == 0, result.stdout
    assert "accepted requests==2.30.0: PYSEC-2023-74 (allow-list)" in result.stdout
    assert "allow-list entry PYSEC-1999-1 matches no pinned package" in result.stdout


def test_a_package_the_snapshot_never_looked_at_fails(tmp_path: Path) -> None:
    result = run("check", "--constraints", str(pinned(tmp_path, **{"left-pad-py": "1.0"})))
    assert result.returncode == 1
    assert "NOT COVERED left-pad-py==1.0" in result.stdout


@pytest.mark.parametrize("line", ["requests>=2.0", "requests", "requests==2.*"])
def test_a_constraint_that_is_not_an_exact_pin_is_an_error(tmp_path: Path, line: str) -> None:
    path = tmp_path / "constraints.txt"
    path.write_text(line + "\n")
    result = run("check", "--constraints", str(path))
    assert result.returncode == 2
    assert "not an exact pin" in result.stderr


@pytest.mark.parametrize(
    ("package", "version", "expected"),
    [
        # One range whose events are not in version order (two release lines).
        ("urllib3", "2.0.5", {"PYSEC-2023-192", "PYSEC-2023-212"}),
        ("urllib3", "2.0.6", {"PYSEC-2023-212"}),
        ("urllib3", "2.0.7", set()),
        ("urllib3", "1.26.17", {"PYSEC-2023-212"}),
        ("urllib3", "1.26.18", set()),
        # Several ranges (backported fixes).
        ("pydantic", "1.8.1", {"PYSEC-2021-47"}),
        ("pydantic", "1.8.2", set()),
        ("pydantic", "1.7.4", set()),
        ("pydantic", "1.6.1", {"PYSEC-2021-47"}),
        # Pre-releases order before their release.
        ("pyyaml", "5.2b1", {"PYSEC-2020-96", "PYSEC-2021-142"}),
        ("pyyaml", "5.1", {"PYSEC-2020-176", "PYSEC-2020-195", "PYSEC-2020-96", "PYSEC-2021-142"}),
        # introduced > 0.
        ("requests", "2.2.1", {"PYSEC-2014-13", "PYSEC-2014-14", "PYSEC-2015-17", "PYSEC-2018-28"}),
        ("requests", "2.31.0", set()),
    ],
)
def test_osv_ranges_are_evaluated_like_pip_audit(
    package: str, version: str, expected: set[str]
) -> None:
    found = {
        a["id"]
        for a in adv.load_advisories(adv.DEFAULT_DB, package)
        if adv.affects(a, package, Version(version))
    }
    assert found == expected


def test_in_range_semantics() -> None:
    events = [{"introduced": "1.0"}, {"last_affected": "1.4"}]
    assert not adv.in_range(Version("0.9"), events)
    assert adv.in_range(Version("1.4"), events)
    assert not adv.in_range(Version("1.4.1"), events)
    assert adv.in_range(Version("7.0"), [{"introduced": "0"}])  # no fix yet
    assert not adv.in_range(Version("7.0"), [{"introduced": "0"}, {"limit": "5"}])


def test_the_snapshot_is_well_formed_and_covers_every_pin() -> None:
    db = adv.DEFAULT_DB
    index = adv.load_index(db)
    pins = {p.name for p in adv.read_pins(REPO / "constraints.txt")}
    assert pins <= set(index["packages"])
    on_disk = {p.parent.name: set() for p in db.glob("vulns/*/*.json")}
    for path in db.glob("vulns/*/*.json"):
        on_disk[path.parent.name].add(path.stem)
        doc = json.loads(path.read_text())
        assert doc["id"] == path.stem
        assert doc["summary"] and doc["modified"] and doc["database_specific"]["source"]
        for entry in doc["affected"]:
            assert entry["package"] == {"ecosystem": "PyPI", "name": path.parent.name}
            for rng in entry["ranges"]:
                assert rng["type"] == "ECOSYSTEM"
                for event in rng["events"]:
                    ((kind, raw),) = event.items()
                    assert kind in ("introduced", "fixed", "last_affected", "limit")
                    assert raw == "0" or Version(raw)
    listed = {name: set(ids) for name, ids in index["packages"].items() if ids}
    assert listed == on_disk


def test_refresh_converts_a_clone_of_the_advisory_database(tmp_path: Path) -> None:
    """The online refresh, run here on a two-file stand-in for a clone: both schemas of
    pypa/advisory-database YAML become the OSV JSON the check reads."""
    clone = tmp_path / "clone"
    (clone / "vulns" / "requests").mkdir(parents=True)
    (clone / "vulns" / "requests" / "PYSEC-2099-1.yaml").write_text(
        "id: PYSEC-2099-1\n"
        "details: A made-up flaw\n  over two lines.\n"
        "aliases:\n- CVE-2099-0001\n"
        "modified: '2099-01-02T00:00:00Z'\npublished: '2099-01-01T00:00:00Z'\n"
        "affected:\n- package:\n    name: requests\n    ecosystem: PyPI\n  ranges:\n"
        "  - type: GIT\n    repo: https://example.invalid/requests\n    events:\n"
        "    - introduced: '0'\n    - fixed: abc123\n"
        "  - type: ECOSYSTEM\n    events:\n    - introduced: '2.0'\n    - fixed: 2.40.0\n"
    )
    (clone / "vulns" / "requests" / "PYSEC-2098-7.yaml").write_text(
        "id: PYSEC-2098-7\npackage:\n  name: requests\n  ecosystem: PyPI\n"
        "details: An early-schema entry.\naffects:\n  ranges:\n  - type: ECOSYSTEM\n"
        "    fixed: 1.0.0\naliases:\n- CVE-2098-0007\nmodified: '2098-01-01T00:00:00Z'\n"
    )
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("requests==2.39.0\nidna==3.20\n")
    db = tmp_path / "db"
    db.mkdir()
    result = run(
        "refresh",
        "--from",
        str(clone),
        "--commit",
        "f00d",
        "--constraints",
        str(constraints),
        "--db",
        str(db),
    )
    assert result.returncode == 0, result.stderr
    assert "2 packages, 2 advisories" in result.stdout
    index = json.loads((db / "index.json").read_text())
    assert index["packages"] == {"idna": [], "requests": ["PYSEC-2098-7", "PYSEC-2099-1"]}
    new = json.loads((db / "vulns" / "requests" / "PYSEC-2099-1.json").read_text())
    assert new["summary"] == "A made-up flaw over two lines."
    assert new["affected"][0]["ranges"] == [
        {"type": "ECOSYSTEM", "events": [{"introduced": "2.0"}, {"fixed": "2.40.0"}]}
    ]
    assert new["database_specific"]["source"] == (
        "pypa/advisory-database@f00d:vulns/requests/PYSEC-2099-1.yaml"
    )
    old = json.loads((db / "vulns" / "requests" / "PYSEC-2098-7.json").read_text())
    assert old["affected"][0]["ranges"][0]["events"] == [{"introduced": "0"}, {"fixed": "1.0.0"}]
    checked = run("check", "--constraints", str(constraints), "--db", str(db))
    assert checked.returncode == 1
    assert "VULNERABLE requests==2.39.0" in checked.stdout and "PYSEC-2099-1" in checked.stdout
    assert "PYSEC-2098-7" not in checked.stdout
