"""Shared pytest plumbing. Fixture families live in tests/plugins/, one module per real service."""

from __future__ import annotations

pytest_plugins: list[str] = []
