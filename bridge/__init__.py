"""bridge: on-demand container image builds on AWS CodeBuild, reported on the commit."""

__version__ = "0.1.0"
