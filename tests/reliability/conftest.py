"""Fixtures of the reliability suites (the in-process rig; the real-process server is in test_faults)."""

from tests.reliability.rig import rig, rig_factory

__all__ = ["rig", "rig_factory"]
