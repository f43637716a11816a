"""The operator console in a real browser (issue 11): Debian's headless Chromium driven by
Playwright for Python against the real API process.

The story goes in through signed webhooks to the live server and the real worker pipeline; the
test logs in with an admin token, finds the caller by name, opens the memory graph, reads a
memory's sources, archives a wrong memory and sees it vanish from ``/tools/memory-query``, reads
a call's transcript with its extracted memories, replays a dead letter and checks the health
page. Screenshots go to ``test-artifacts/console/``.

Chromium comes from ``ops/install-chromium.sh`` (run by ``make tools``; this test runs it too when
the browser is missing). Playwright's own browser download is never used (no internet). A
machine where Chromium cannot be had FAILS this test with the reason; it never skips.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, LiveServer
from tests.test_console import WRONG, push_poison, push_story

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("VOXMEM_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts" / "console"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def ensure_chromium() -> Path:
    if not CHROMIUM.exists():
        result = subprocess.run(
            [str(REPO / "ops" / "install-chromium.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if not CHROMIUM.exists():
            pytest.fail(
                f"Chromium is needed for the console browser test and could not be installed at "
                f"{CHROMIUM} (ops/install-chromium.sh exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-500:]})",
                pytrace=False,
            )
    return CHROMIUM


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    executable = ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the `test` extra pins it; its absence is a broken set-up
        pytest.fail(f"playwright is not installed ({exc}); pip install -e '.[test]'")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir per run
            executable_path=str(executable),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 900},  # a laptop screen
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A refused token is a 401 the browser logs as "Failed to load resource": expected.
            page.on(
                "console",
                lambda msg: (
                    errors.append(msg.text)
                    if msg.type == "error" and "Failed to load resource" not in msg.text
                    else None
                ),
            )
            page.console_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            context.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def memory_ids_from_tool(base: str, tool_token: str, user_id: str, query: str) -> set[int]:
    r = httpx.post(
        f"{base}/tools/memory-query",
        json={"query": query, "user_id": user_id, "limit": 20},
        headers={"Authorization": f"Bearer {tool_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return {int(m["id"]) for m in r.json()["memories"]}


def test_console_in_a_real_browser(live_server: LiveServer, browser_page: Any) -> None:
    from playwright.sync_api import expect

    deployment = live_server.deployment
    base = live_server.base_url
    page = browser_page
    with httpx.Client(base_url=base, timeout=30) as http:
        push_story(http, deployment)
        poison_id = push_poison(http, deployment)
        admin = {"Authorization": f"Bearer {deployment.tokens['admin']}"}
        callers = http.get("/v1/console/callers?q=Maria", headers=admin).json()["callers"]
        user_id = callers[0]["user_id"]
        memories = http.get(f"/v1/users/{user_id}/memories", headers=admin).json()["memories"]
    wrong = next(m for m in memories if WRONG in m["content"])
    tool_token = deployment.tokens["tool"]
    assert wrong["id"] in memory_ids_from_tool(base, tool_token, user_id, "What is the dog called?")

    # --- log in: the token goes into the form, then only into sessionStorage ----------------
    page.goto(f"{base}/console")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Admin token").fill("vxm_admin_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("refused")
    page.get_by_label("Admin token").fill(deployment.tokens["admin"])
    shot(page, "01-login")
    page.get_by_label("Admin token").press("Enter")
    expect(page.get_by_role("heading", name="Callers", exact=True)).to_be_visible()
    assert deployment.tokens["admin"] not in page.url
    stored = page.evaluate("() => sessionStorage.getItem('voxmem.admin_token')")
    assert stored == deployment.tokens["admin"]
    assert page.evaluate("() => localStorage.length") == 0

    # --- callers: search by name (keyboard only) -----------------------------------------------
    search = page.get_by_label("Search callers by name, number or user id")
    search.fill("maria")
    search.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("Callers matching"))).to_be_visible()
    row_link = page.get_by_role("link", name="Maria Lopez")
    expect(row_link).to_be_visible()
    shot(page, "02-callers")
    search = page.get_by_label("Search callers by name, number or user id")
    search.fill("+1 (555) 010-0142")
    search.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("matching “\\+1 \\(555\\)"))).to_be_visible()
    expect(page.get_by_role("link", name="Maria Lopez")).to_be_visible()
    page.get_by_role("link", name="Maria Lopez").focus()
    page.keyboard.press("Enter")

    # --- a caller: summary, profile, session, the graph ---------------------------------------
    expect(page.get_by_role("heading", name="Maria Lopez", level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="Memory graph")).to_be_visible()
    graph = page.locator("svg.graph")
    expect(graph).to_be_visible()
    nodes = graph.locator("g.node")
    assert nodes.count() == len(memories)
    assert graph.locator("g.node.sector-semantic").count() >= 1
    assert graph.locator("g.node.sector-episodic").count() >= 1
    expect(page.locator("ul.legend")).to_contain_text("procedural")
    # Keyboard: focus the wrong memory's node and press Enter; its card is highlighted.
    node = graph.locator(f'g.node[data-memory-id="{wrong["id"]}"]')
    node.focus()
    page.keyboard.press("Enter")
    expect(node).to_have_class(re.compile("selected"))
    shot(page, "03-caller-graph")

    # --- sources: the transcript turn the memory came from, decrypted on demand ---------------
    card = page.locator(f"#memory-{wrong['id']}")
    card.get_by_role("button", name="Show sources").click()
    expect(card.locator(".sources")).to_contain_text("My dog is called Biscuit.")
    expect(card.locator(".sources")).to_contain_text("conv_maria_1")
    card.scroll_into_view_if_needed()
    shot(page, "04-memory-sources")

    # --- salience edit ----------------------------------------------------------------------
    card.get_by_label("Salience").fill("0.35")
    card.get_by_role("button", name="Save").click()
    expect(page.locator("#toast")).to_contain_text("Salience")

    # --- archive the wrong memory: gone from the page, the graph and the memory tool ----------
    card.get_by_role("button", name="Archive").click()
    expect(page.locator(f"#memory-{wrong['id']}")).to_have_count(0)
    expect(graph.locator(f'g.node[data-memory-id="{wrong["id"]}"]')).to_have_count(0)
    assert wrong["id"] not in memory_ids_from_tool(
        base, tool_token, user_id, "What is the dog called?"
    )
    page.get_by_label("Show").select_option("archived")
    expect(page.locator(f"#memory-{wrong['id']}")).to_be_visible()
    expect(page.locator(f"#memory-{wrong['id']}")).to_have_attribute("data-state", "archived")
    shot(page, "05-archived")

    # --- a call: transcript with the memories extracted from each turn ------------------------
    page.get_by_role("link", name="conv_maria_1").first.click()
    expect(page.get_by_role("heading", name=re.compile("Salesforce sync"), level=1)).to_be_visible()
    turn = page.locator("#turn-6")
    expect(turn).to_contain_text("My dog is called Biscuit.")
    expect(turn.locator("ul.extracted")).to_contain_text(WRONG)
    expect(turn.locator("ul.extracted")).to_contain_text("archived")
    shot(page, "06-call-transcript")

    # --- queue: the dead letter with its error, replayed -------------------------------------
    sections = page.get_by_role("navigation", name="Console sections")
    sections.get_by_role("link", name="Queue").click()
    expect(page.get_by_role("heading", name="Queue", level=1)).to_be_visible()
    dead_row = page.locator(f'#dead-letters tr[data-event-id="{poison_id}"]')
    expect(dead_row).to_contain_text("conv_poison_1")
    expect(dead_row).to_contain_text("transcript")
    expect(page.locator("#dead-count")).to_have_text("1")
    shot(page, "07-queue-dead-letter")
    dead_row.get_by_role("button", name=f"Replay event {poison_id}").click()
    expect(page.locator("#toast")).to_contain_text("requeued")
    expect(page.locator("#dead-count")).to_have_text("0")
    expect(page.get_by_text("No dead letters.")).to_be_visible()
    with deployment.db.read() as session:
        from db.models import WebhookEvent

        event = session.get(WebhookEvent, poison_id)
        assert event is not None and event.status == "pending" and event.retry_count == 0
    shot(page, "08-queue-replayed")

    # --- health ------------------------------------------------------------------------------
    page.get_by_role("link", name="Health").click()
    expect(page.get_by_role("heading", name="Health", level=1)).to_be_visible()
    expect(page.get_by_role("rowheader", name="queue")).to_be_visible()
    expect(page.get_by_role("rowheader", name="database")).to_be_visible()
    expect(page.locator("#main")).to_contain_text("webhook_queue_depth")
    shot(page, "09-health")

    # --- sign out forgets the token ------------------------------------------------------------
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('voxmem.admin_token')") is None
    assert page.console_errors == [], page.console_errors
