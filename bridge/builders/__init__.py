"""Build backends. `base.Builder` is the interface; `codebuild.CodeBuildBuilder` the first one."""
