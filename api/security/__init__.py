"""Request authentication helpers that do not depend on the database (signatures, body caps)."""
