"""Property: no sequence of init and tool calls lets one tenant, or one bound conversation, read
another user's memories.

A hypothesis state machine drives the real app (real auth, binding, engine) with two tenants
that share phone numbers, and checks every tool answer against an independent model of who
each call must resolve to: the conversation's binding, else the body's user_id within the
token's tenant, else the caller's number within the token's tenant, else nobody.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import select

from db.models import Memory
from tests.agent_helpers import add_memories, add_user, token
from tests.conftest import Deployment

TENANTS = ("default", "acme")
SHARED_NUMBERS = ("+15550000001", "+15550000002")  # known in both tenants, different people
TOPICS = ("billing", "salesforce", "allergies", "vacation", "invoice")


@dataclass
class World:
    client: TestClient
    tokens: dict[tuple[str, str], str]  # (tenant, scope) → token
    # (tenant, number) → user_id and user_id → (tenant, memory ids), fixed for the run
    number_user: dict[tuple[str, str], str]
    memories: dict[str, tuple[str, set[int]]]
    all_users: list[str] = field(default_factory=list)


def build_world(client: TestClient, deployment: Deployment) -> World:
    tokens = {(t, s): token(deployment.db, t, s) for t in TENANTS for s in ("init", "tool")}
    number_user: dict[tuple[str, str], str] = {}
    memories: dict[str, tuple[str, set[int]]] = {}
    for tenant in TENANTS:
        for number in SHARED_NUMBERS:
            user = add_user(deployment.db, tenant, number=number)
            facts = [f"{tenant} caller {number} talked about {topic}." for topic in TOPICS]
            add_memories(deployment.db, deployment.settings, user, facts)
            number_user[(tenant, number)] = user
    with deployment.db.read() as session:
        for (tenant, _), user in number_user.items():
            ids = set(session.scalars(select(Memory.id).where(Memory.user_id == user)))
            memories[user] = (tenant, ids)
    return World(client, tokens, number_user, memories, list(memories))


class Isolation(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        self.run = uuid.uuid4().hex[:8]  # this example's own conversation ids
        self.bound: dict[tuple[str, str], str] = {}  # (tenant, conversation) → user
        self.fresh_users: dict[tuple[str, str], str] = {}  # (tenant, fresh number) → guest
        self.checked = 0

    def conv(self, i: int) -> str:
        return f"conv_{self.run}_{i}"

    def fresh(self, i: int) -> str:
        return f"+1555{int(self.run[:6], 16) % 1000:03d}{i:04d}"

    def user_of(self, tenant: str, number: str) -> str | None:
        return self.world.number_user.get((tenant, number)) or self.fresh_users.get(
            (tenant, number)
        )

    @rule(
        tenant=st.sampled_from(TENANTS),
        conv=st.integers(0, 4),
        known=st.booleans(),
        which=st.integers(0, 1),
    )
    def init(self, tenant: str, conv: int, known: bool, which: int) -> None:
        number = SHARED_NUMBERS[which] if known else self.fresh(which)
        resp = self.world.client.post(
            "/webhook/conversation-init"
            if tenant == "default"
            else f"/t/{tenant}/webhook/conversation-init",
            json={"caller_id": number, "conversation_id": self.conv(conv), "agent_id": "a"},
            headers={"Authorization": f"Bearer {self.world.tokens[(tenant, 'init')]}"},
        )
        assert resp.status_code == 200
        user = resp.json()["dynamic_variables"]["user_id"]
        key = (tenant, self.conv(conv))
        if key in self.bound:
            # A bound conversation never changes user, whoever calls init again.
            assert user == self.bound[key]
            return
        expected = self.user_of(tenant, number)
        if expected is not None:
            assert user == expected
        else:
            assert user.startswith("usr_") and user not in self.world.memories
            self.fresh_users[(tenant, number)] = user
        self.bound[key] = user

    @rule(
        tenant=st.sampled_from(TENANTS),
        conv=st.one_of(st.none(), st.integers(0, 5)),
        user_pick=st.one_of(st.none(), st.integers(0, 3)),
        caller=st.one_of(st.none(), st.sampled_from(SHARED_NUMBERS)),
        topic=st.sampled_from(TOPICS),
    )
    def query(
        self, tenant: str, conv: int | None, user_pick: int | None, caller: str | None, topic: str
    ) -> None:
        body: dict[str, object] = {"query": topic, "limit": 20}
        if conv is not None:
            body["conversation_id"] = self.conv(conv)
        if user_pick is not None:  # any user of any tenant: what a spoofed LLM might send
            body["user_id"] = self.world.all_users[user_pick]
        if caller is not None:
            body["caller_id"] = caller
        resp = self.world.client.post(
            "/tools/memory-query" if tenant == "default" else f"/t/{tenant}/tools/memory-query",
            json=body,
            headers={"Authorization": f"Bearer {self.world.tokens[(tenant, 'tool')]}"},
        )
        assert resp.status_code == 200
        returned = {m["id"] for m in resp.json()["memories"]}
        expected = self.expected_user(tenant, body)
        allowed = self.world.memories.get(expected, ("", set()))[1] if expected else set()
        assert returned <= allowed, (tenant, body, expected)
        if expected in self.world.memories:
            assert returned, (tenant, body)  # the right user is found, not just no one
        self.checked += 1

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

    @invariant()
    def bindings_are_per_tenant(self) -> None:
        for (tenant, _conv), user in self.bound.items():
            owner = self.world.memories.get(user)
            assert owner is None or owner[0] == tenant


def test_no_call_sequence_crosses_users_or_tenants(
    client: TestClient, deployment: Deployment
) -> None:
    Isolation.world = build_world(client, deployment)
    run_state_machine_as_test(
        Isolation,
        settings=settings(
            max_examples=30,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
