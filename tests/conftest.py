"""Shared pytest plumbing. Fixture families live in tests/plugins/, one module per real service."""

from __future__ import annotations

pytest_plugins = [
    "tests.plugins.aws",  # moto server over HTTP + the CodeBuild double
    "tests.plugins.github_api",  # fake GitHub REST API validated against GitHub's OpenAPI description
    "tests.plugins.gitlab_api",  # fake GitLab REST API
    "tests.plugins.docker",  # a real dockerd and registries from Debian's packages
]
