"""Fixtures of the reliability suites: the in-process rig, the real-server rig, and the Action's runner
environment."""

from tests.reliability.rig import rig, rig_factory
from tests.reliability.served import served_factory
from tests.test_action import actions_token, push_env

__all__ = ["actions_token", "push_env", "rig", "rig_factory", "served_factory"]
