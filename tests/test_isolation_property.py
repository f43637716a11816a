"""Property: no sequence of init, tool and forget calls lets one tenant, or one bound
conversation, read or change another user's data, and a forgotten user's data is gone for good.

A hypothesis state machine drives the real app (real auth, binding, engine, admin API) with two
tenants that share phone numbers, and checks every answer against an independent model of who
each call must resolve to: the conversation's binding, else the body's user_id within the
token's tenant, else the caller's number within the token's tenant, else nobody.

Forget requests (issue 10) go through the admin API (``DELETE /v1/users/{id}``, the owner's
admin token), through ``memory.privacy.forget_user`` directly, or through another tenant's
admin token (must be a 404 that changes nothing). Each forget diffs every row of every table
before and after: the rows that went must all be the forgotten user's (by user id, memory id
or conversation), and no other row may appear or change. Invariants after every step: no row
anywhere still names a forgotten user, their memory ids or their memory text, and every live
user still has exactly the memories they were created with. A probe rule asks for a forgotten
user with every token of every tenant, by user id, by their old number and by the
conversations once bound to them, through the tool, init and the admin API.

Each example builds its own world — the default tenant plus a tenant of its own, numbers of
its own shared by both, users with embedded memories — so a forget in one example cannot make
another one (or hypothesis' replay of it while shrinking) behave differently. Earlier
examples' rows stay in the database, and a forget must not touch them either.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import select, text

from api.background import get_writer
from db.models import Base, Memory, ToolInvocation
from db.tenancy import get_tenant
from memory import privacy
from memory.identity import normalize_number, user_for_number
from tests.agent_helpers import add_memories, add_user, bind, ensure_tenant, token
from tests.conftest import Deployment

TOPICS = ("billing", "salesforce", "allergies", "vacation", "invoice")
# Written off the request path or by design on every authenticated request.
VOLATILE = {("api_tokens", "last_used_at")}

Row = tuple[str, tuple[tuple[str, Any], ...]]


@dataclass
class Forgotten:
    tenant: str
    memory_ids: set[int]
    contents: set[str]
    numbers: set[str]
    conversations: set[str] = field(default_factory=set)


@dataclass
class World:
    client: TestClient
    deployment: Deployment
    tenants: tuple[str, str]
    shared_numbers: tuple[str, str]  # known in both tenants, different people
    tokens: dict[tuple[str, str], str]  # (tenant, scope) → token
    # (tenant, number) → user_id; user_id → (tenant, memory ids); memory id → content
    number_user: dict[tuple[str, str], str]
    memories: dict[str, tuple[str, set[int]]]
    contents: dict[int, str] = field(default_factory=dict)
    # Every user id ever seen (forgotten ones stay: a spoofed body may name them).
    all_users: list[str] = field(default_factory=list)
    forgotten: dict[str, Forgotten] = field(default_factory=dict)
    generation: int = 0

    def replenish(self) -> None:
        """Give every (tenant, shared number) a live user with memories again."""
        db, settings = self.deployment.db, self.deployment.settings
        for tenant in self.tenants:
            for number in self.shared_numbers:
                user = self.number_user.get((tenant, number))
                if user is not None and self.memories.get(user, ("", set()))[1]:
                    continue
                self.generation += 1
                if user is None:
                    user = self._owner_of(tenant, number) or add_user(db, tenant, number=number)
                facts = [
                    f"{tenant} caller {number} (generation {self.generation}) talked about {topic}."
                    for topic in TOPICS
                ]
                ids = add_memories(db, settings, user, facts)
                self.number_user[(tenant, number)] = user
                self.memories[user] = (tenant, set(ids))
                self.contents.update(zip(ids, facts, strict=True))
                if user not in self.all_users:
                    self.all_users.append(user)

    def _owner_of(self, tenant: str, number: str) -> str | None:
        """A guest an init created for this number after its user was forgotten."""
        tenant_id = ensure_tenant(self.deployment.db, tenant)
        with self.deployment.db.read() as session:
            user = user_for_number(session, tenant_id, normalize_number(number) or number)
            return user.user_id if user is not None else None

    def flush(self) -> None:
        writer = get_writer(self.client.app.state.voxmem.extras)  # type: ignore[attr-defined]
        if writer is not None:
            assert writer.flush()

    def decrypted(self) -> list[tuple[str, str, str]]:
        """Every text value of every table, decrypted: (table, column, text)."""
        self.flush()
        out: list[tuple[str, str, str]] = []
        with self.deployment.db.read() as session:
            for table in Base.metadata.sorted_tables:
                for row in session.execute(select(table)).mappings():
                    for column, value in row.items():
                        if isinstance(value, str):
                            out.append((table.name, column, value))
                        elif isinstance(value, dict | list):
                            out.append((table.name, column, json.dumps(value)))
        return out

    def rows(self) -> Counter[Row]:
        """Every row of every table as (table, ((column, value), ...))."""
        self.flush()
        out: Counter[Row] = Counter()
        with self.deployment.db.read() as session:
            conn = session.connection()
            tables = [
                str(r[0])
                for r in conn.execute(
                    text(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version'"
                    )
                )
            ]
            for table in tables:
                result = conn.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608 - our names
                columns = list(result.keys())
                for values in result:
                    out[
                        (
                            table,
                            tuple(
                                (c, v)
                                for c, v in zip(columns, values, strict=True)
                                if (table, c) not in VOLATILE
                            ),
                        )
                    ] += 1
        return out


def build_world(client: TestClient, deployment: Deployment, run: str) -> World:
    tenants = ("default", f"acme{run}")
    digits = int(run[:6], 16) % 10_000
    numbers = (f"+1555{digits:04d}001", f"+1555{digits:04d}002")
    tokens = {
        (t, s): token(deployment.db, t, s) for t in tenants for s in ("init", "tool", "admin")
    }
    world = World(client, deployment, tenants, numbers, tokens, number_user={}, memories={})
    world.replenish()
    return world


def prefix(tenant: str) -> str:
    return "" if tenant == "default" else f"/t/{tenant}"


class Isolation(RuleBasedStateMachine):
    client: TestClient
    deployment: Deployment
    forgets: ClassVar[Counter[str]] = Counter()  # forgets done, by path, over the whole run

    def __init__(self) -> None:
        super().__init__()
        self.run = uuid.uuid4().hex[:8]  # this example's own ids
        self.world = build_world(self.client, self.deployment, self.run)
        self.tenants = self.world.tenants
        self.shared = self.world.shared_numbers
        self.bound: dict[tuple[str, str], str] = {}  # (tenant, conversation) → user
        self.fresh_users: dict[tuple[str, str], str] = {}  # (tenant, fresh number) → guest
        # Conversations and numbers that once led to a forgotten user: what init answers for
        # them is only required not to be that user (a forget may leave a tombstone).
        self.gone_keys: set[tuple[str, str]] = set()
        self.checked = 0

    def conv(self, i: int) -> str:
        return f"conv_{self.run}_{i}"

    def fresh(self, i: int) -> str:
        return f"+1555{int(self.run[:6], 16) % 10_000:04d}{100 + i:03d}"

    def user_of(self, tenant: str, number: str) -> str | None:
        return self.world.number_user.get((tenant, number)) or self.fresh_users.get(
            (tenant, number)
        )

    def tenant_of(self, user: str) -> str | None:
        if user in self.world.memories:
            return self.world.memories[user][0]
        return next((t for (t, _n), u in self.fresh_users.items() if u == user), None)

    # --- rules ------------------------------------------------------------------------------
    @rule(
        tenant_pick=st.sampled_from((0, 1)),
        conv=st.integers(0, 4),
        known=st.booleans(),
        which=st.integers(0, 1),
    )
    def init(self, tenant_pick: int, conv: int, known: bool, which: int) -> None:
        tenant = self.tenants[tenant_pick]
        number = self.shared[which] if known else self.fresh(which)
        resp = self.world.client.post(
            f"{prefix(tenant)}/webhook/conversation-init",
            json={"caller_id": number, "conversation_id": self.conv(conv), "agent_id": "a"},
            headers={"Authorization": f"Bearer {self.world.tokens[(tenant, 'init')]}"},
        )
        assert resp.status_code == 200
        variables = resp.json()["dynamic_variables"]
        user = variables["user_id"]
        assert user not in self.world.forgotten, (tenant, number, conv)
        self.assert_no_forgotten_text(resp.text)
        key = (tenant, self.conv(conv))
        if key in self.bound:
            # A bound conversation never changes user, whoever calls init again.
            assert user == self.bound[key]
            return
        expected = self.user_of(tenant, number)
        if expected is not None:
            assert user == expected
        elif key in self.gone_keys or (tenant, number) in self.gone_keys:
            if not user:
                return  # neutral answer, nothing bound
            self.learn_guest(tenant, number, user)
        else:
            assert user.startswith("usr_") and user not in self.world.memories
            self.learn_guest(tenant, number, user)
        self.bound[key] = user

    def learn_guest(self, tenant: str, number: str, user: str) -> None:
        assert user.startswith("usr_") and user not in self.world.memories
        if number in self.shared:
            # A new person on a forgotten user's number: replenish() gives them memories.
            self.world.number_user[(tenant, number)] = user
            self.world.memories[user] = (tenant, set())
            self.world.all_users.append(user)
        else:
            self.fresh_users[(tenant, number)] = user

    @rule(
        tenant_pick=st.sampled_from((0, 1)),
        conv=st.one_of(st.none(), st.integers(0, 5)),
        user_pick=st.one_of(st.none(), st.integers(0, 10_000)),
        caller=st.one_of(st.none(), st.sampled_from((0, 1))),
        topic=st.sampled_from(TOPICS),
    )
    def query(
        self,
        tenant_pick: int,
        conv: int | None,
        user_pick: int | None,
        caller: int | None,
        topic: str,
    ) -> None:
        tenant = self.tenants[tenant_pick]
        body: dict[str, object] = {"query": topic, "limit": 20}
        if conv is not None:
            body["conversation_id"] = self.conv(conv)
        if user_pick is not None:  # any user of any tenant, forgotten too: a spoofed LLM
            body["user_id"] = self.world.all_users[user_pick % len(self.world.all_users)]
        if caller is not None:
            body["caller_id"] = self.shared[caller]
        returned = self.ask(tenant, body)
        expected = self.expected_user(tenant, body)
        allowed = self.world.memories.get(expected, ("", set()))[1] if expected else set()
        assert returned <= allowed, (tenant, body, expected)
        if expected in self.world.memories and allowed:
            assert returned, (tenant, body)  # the right user is found, not just no one
        self.checked += 1

    def ask(self, tenant: str, body: dict[str, object]) -> set[int]:
        resp = self.world.client.post(
            f"{prefix(tenant)}/tools/memory-query",
            json=body,
            headers={"Authorization": f"Bearer {self.world.tokens[(tenant, 'tool')]}"},
        )
        assert resp.status_code == 200
        self.assert_no_forgotten_text(resp.text)
        returned = {int(m["id"]) for m in resp.json()["memories"]}
        for gone in self.world.forgotten.values():
            assert not returned & gone.memory_ids, body
        return returned

    def expected_user(self, tenant: str, body: dict[str, object]) -> str | None:
        conv = body.get("conversation_id")
        if isinstance(conv, str) and (tenant, conv) in self.bound:
            return self.bound[(tenant, conv)]
        user = body.get("user_id")
        if isinstance(user, str) and self.world.memories.get(user, ("",))[0] == tenant:
            return user
        caller = body.get("caller_id")
        if isinstance(caller, str):
            return self.user_of(tenant, caller)
        return None

    @rule(
        pick=st.integers(0, 10_000),
        via=st.sampled_from(("admin_api", "privacy", "other_tenant_admin")),
    )
    def forget(self, pick: int, via: str) -> None:
        candidates = sorted({*self.world.memories, *self.fresh_users.values()})
        if not candidates:
            return  # everyone of this example is forgotten already
        user = candidates[pick % len(candidates)]
        tenant = self.tenant_of(user)
        assert tenant is not None
        before = self.world.rows()
        if via == "other_tenant_admin":
            other = next(t for t in self.tenants if t != tenant)
            resp = self.world.client.delete(
                f"{prefix(other)}/v1/users/{user}",
                headers={"Authorization": f"Bearer {self.world.tokens[(other, 'admin')]}"},
            )
            assert resp.status_code == 404, resp.text
            assert self.world.rows() == before, "a refused forget changed the database"
            Isolation.forgets["refused_other_tenant"] += 1
            return
        if via == "admin_api":
            resp = self.world.client.delete(
                f"{prefix(tenant)}/v1/users/{user}",
                headers={"Authorization": f"Bearer {self.world.tokens[(tenant, 'admin')]}"},
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["forgotten"] is True
        else:
            with self.world.deployment.db.write() as session:
                found = get_tenant(session, tenant)
                assert found is not None
                privacy.forget_user(session, found.id, user)
        Isolation.forgets[via] += 1
        self.record_forgotten(user, tenant)
        after = self.world.rows()
        # The one kind of row a forget may add, or replace (a number forgotten before gets a
        # fresh tombstone): its own tenant's tombstones, keyed hashes that drop late work for
        # the forgotten data (memory/tombstones.py).
        tenant_id = ensure_tenant(self.world.deployment.db, tenant)

        def bookkeeping(row: Row) -> bool:
            return row[0] == "forget_tombstones" and dict(row[1])["tenant_id"] == tenant_id

        added = Counter({row: n for row, n in (after - before).items() if not bookkeeping(row)})
        assert not added, f"forgetting {user} added or changed rows: {added}"
        removed = Counter({row: n for row, n in (before - after).items() if not bookkeeping(row)})
        self.assert_all_theirs(removed, user)
        self.probe(user)

    def record_forgotten(self, user: str, tenant: str) -> None:
        _, ids = self.world.memories.pop(user, (tenant, set()))
        numbers = {n for (t, n), u in self.world.number_user.items() if u == user}
        numbers |= {n for (t, n), u in self.fresh_users.items() if u == user}
        conversations = {c for (t, c), u in self.bound.items() if u == user}
        self.world.forgotten[user] = Forgotten(
            tenant=tenant,
            memory_ids=set(ids),
            contents={self.world.contents.pop(i) for i in ids},
            numbers=numbers,
            conversations=conversations,
        )
        for key in [k for k, u in self.world.number_user.items() if u == user]:
            del self.world.number_user[key]
            self.gone_keys.add(key)
        for key in [k for k, u in self.fresh_users.items() if u == user]:
            del self.fresh_users[key]
            self.gone_keys.add(key)
        for key in [k for k, u in self.bound.items() if u == user]:
            del self.bound[key]
            self.gone_keys.add(key)

    def assert_all_theirs(self, removed: Counter[Row], user: str) -> None:
        gone = self.world.forgotten[user]
        conv_fks: set[Any] = set()
        for table, cols in removed:
            if table == "conversations" and dict(cols).get("user_id") == user:
                conv_fks.add(dict(cols)["id"])
        for table, cols in removed:
            row = dict(cols)
            theirs = (
                row.get("user_id") == user
                or any(
                    row.get(c) in gone.memory_ids
                    for c in ("memory_id", "source_memory_id", "target_memory_id")
                )
                or (table == "memories" and row.get("id") in gone.memory_ids)
                or row.get("conversation_fk") in conv_fks - {None}
                or row.get("conversation_id") in gone.conversations
            )
            assert theirs, f"forgetting {user} removed someone else's row in {table}: {row}"

    @rule(pick=st.integers(0, 10_000))
    def probe_forgotten(self, pick: int) -> None:
        """Later, after other steps: still nothing of a forgotten user comes back."""
        if not self.world.forgotten:
            return
        users = sorted(self.world.forgotten)
        Isolation.forgets["later_probes"] += 1
        self.probe(users[pick % len(users)])

    def probe(self, user: str) -> None:
        """Every token of every tenant, every way in: nothing of a forgotten user comes back."""
        gone = self.world.forgotten[user]
        for tenant in self.tenants:
            self.ask(tenant, {"query": "talked about", "user_id": user, "limit": 20})
            for number in gone.numbers:
                self.ask(tenant, {"query": "talked about", "caller_id": number, "limit": 20})
            for conv in gone.conversations:
                self.ask(tenant, {"query": "talked about", "conversation_id": conv, "limit": 20})
            admin = {"Authorization": f"Bearer {self.world.tokens[(tenant, 'admin')]}"}
            for path in ("", "/export", "/memories", "/session", "/graph", "/conversations"):
                resp = self.world.client.get(
                    f"{prefix(tenant)}/v1/users/{user}{path}", headers=admin
                )
                assert resp.status_code == 404, (tenant, path, resp.status_code)
                self.assert_no_forgotten_text(resp.text)
            listing = self.world.client.get(
                f"{prefix(tenant)}/v1/users", params={"limit": 200}, headers=admin
            )
            assert listing.status_code == 200
            assert user not in listing.text
            self.assert_no_forgotten_text(listing.text)

    # --- invariants -------------------------------------------------------------------------
    def assert_no_forgotten_text(self, body: str) -> None:
        for gone in self.world.forgotten.values():
            for content in gone.contents:
                assert content not in body, content

    @invariant()
    def bindings_are_per_tenant(self) -> None:
        for (tenant, _conv), user in self.bound.items():
            owner = self.world.memories.get(user)
            assert owner is None or owner[0] == tenant

    @invariant()
    def forgotten_users_are_gone_everywhere(self) -> None:
        if not self.world.forgotten:
            return
        forgotten = set(self.world.forgotten)
        memory_ids = {i for g in self.world.forgotten.values() for i in g.memory_ids}
        for table, cols in self.world.rows():
            row = dict(cols)
            for column, value in row.items():
                assert value not in forgotten, f"{table}.{column} still names a forgotten user"
            for column in ("memory_id", "source_memory_id", "target_memory_id"):
                assert row.get(column) not in memory_ids, f"{table}.{column}: forgotten memory"
            if table == "memories":
                assert row["id"] not in memory_ids
        self.assert_no_forgotten_text_stored()

    def assert_no_forgotten_text_stored(self) -> None:
        """No decrypted value anywhere (tool logs' queries and answers, payloads, summaries)
        names a forgotten user or carries their memory text."""
        users = set(self.world.forgotten)
        contents = {c for g in self.world.forgotten.values() for c in g.contents}
        for table, column, value in self.world.decrypted():
            # Tool requests made after the forget that name the forgotten user id (the probes
            # here; a late tool call or a spoofing LLM in production) included.
            for needle in users | contents:
                assert needle not in value, f"{table}.{column} still holds {needle!r}"

    @invariant()
    def live_users_keep_their_memories(self) -> None:
        with self.world.deployment.db.read() as session:
            stored: dict[str, set[int]] = {}
            for memory_id, user_id, content in session.execute(
                select(Memory.id, Memory.user_id, Memory.content)
            ):
                stored.setdefault(user_id, set()).add(memory_id)
                if memory_id in self.world.contents:
                    assert content == self.world.contents[memory_id]
        for user, (_tenant, ids) in self.world.memories.items():
            assert stored.get(user, set()) == ids, user


def test_no_call_or_forget_sequence_crosses_users_or_tenants(
    client: TestClient, deployment: Deployment
) -> None:
    Isolation.client = client
    Isolation.deployment = deployment
    Isolation.forgets = Counter()
    run_state_machine_as_test(
        Isolation,
        settings=settings(
            max_examples=30,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    # The forget rules really ran (hypothesis could in principle never pick them).
    done = Isolation.forgets
    assert done["admin_api"] and done["privacy"] and done["refused_other_tenant"], done
    print(f"\nisolation: forgets and probes {dict(done)}")


def _logged(deployment: Deployment) -> list[dict[str, Any]]:
    with deployment.db.read() as session:
        rows = session.scalars(select(ToolInvocation.request_params).order_by(ToolInvocation.id))
        return [json.loads(p) for p in rows]


def test_a_request_naming_a_forgotten_user_is_not_stored_with_their_id(
    client: TestClient, deployment: Deployment
) -> None:
    """Found by the state machine: a tool request made after a forget that named the forgotten
    user id (a late tool call of their call, a spoofing LLM) was logged with that id."""
    user = add_user(deployment.db, "default", number="+15550009911")
    add_memories(deployment.db, deployment.settings, user, ["Talked about the invoice."])
    admin = {"Authorization": f"Bearer {token(deployment.db, 'default', 'admin')}"}
    assert client.delete(f"/v1/users/{user}", headers=admin).status_code == 200
    r = client.post(
        "/tools/memory-query",
        json={"query": "invoice", "user_id": user},
        headers={"Authorization": f"Bearer {token(deployment.db, 'default', 'tool')}"},
    )
    assert r.status_code == 200 and r.json()["memories"] == []
    world = World(client, deployment, ("default", "default"), ("", ""), {}, {}, {})
    assert [(t, c) for t, c, value in world.decrypted() if user in value] == []
    # The request is still logged (it happened), without the id it named.
    ((logged),) = _logged(deployment)
    assert logged["query"] == "invoice" and logged["user_id"] == "<not the answered user>"


def test_a_tool_log_row_names_no_one_but_its_own_user(
    client: TestClient, deployment: Deployment
) -> None:
    """Found by the state machine: B's tool log row kept the user_id (and caller number) of
    another user A that the request named, so forgetting A left A's id and number behind."""
    a_number, b_number = "+15550009921", "+15550009922"
    a = add_user(deployment.db, "default", number=a_number)
    b = add_user(deployment.db, "default", number=b_number)
    add_memories(deployment.db, deployment.settings, b, ["Talked about the invoice."])
    bind(deployment.db, "default", b, "conv_b_1")
    tool = {"Authorization": f"Bearer {token(deployment.db, 'default', 'tool')}"}
    for body in (
        {"query": "invoice", "conversation_id": "conv_b_1", "user_id": a, "caller_id": a_number},
        {"query": "invoice", "caller_id": b_number, "user_id": b},
    ):
        r = client.post("/tools/memory-query", json=body, headers=tool)
        assert r.status_code == 200 and r.json()["memories"], r.text  # B's memories
    admin = {"Authorization": f"Bearer {token(deployment.db, 'default', 'admin')}"}
    assert client.delete(f"/v1/users/{a}", headers=admin).status_code == 200
    world = World(client, deployment, ("default", "default"), ("", ""), {}, {}, {})
    for needle in (a, a_number, a_number.lstrip("+")):
        assert [(t, c) for t, c, value in world.decrypted() if needle in value] == []
    spoofed, own = _logged(deployment)  # B's rows stay, B's own identifiers kept
    assert spoofed["user_id"] == spoofed["caller_id"] == "<not the answered user>"
    assert own["user_id"] == b and own["caller_id"] == b_number
