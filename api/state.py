"""What the API process builds once in its lifespan and hands to every request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from db.checkpoint import Checkpointer
from db.crypto import Keyring
from db.engine import Database
from db.settings import Settings


@dataclass
class AppState:
    settings: Settings
    db: Database
    keyring: Keyring
    checkpointer: Checkpointer | None = None
    # Slots later subsystems fill in (memory engine, metrics, ...), keyed by name.
    extras: dict[str, Any] = field(default_factory=dict)
