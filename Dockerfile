# One image for both front doors, published as ghcr.io/codebuild-bridge/bridge (.github/workflows/release.yml):
#   - the GitHub Action (the default: no arguments), which action.yml runs as a prebuilt image;
#   - the webhook server: `docker run ... IMAGE bridge serve --host 0.0.0.0` (docs/deploy.md).
# The base is a build argument so the image can be built where python:3.12-slim cannot be pulled (the
# tests build it on a Python base made from Debian's packages: tests/test_image.py); the default is the
# published base every release is built on.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="bridge" \
      org.opencontainers.image.description="Container builds on AWS CodeBuild for GitHub and GitLab, reported on the commit." \
      org.opencontainers.image.licenses="Apache-2.0"

# Unbuffered output: the Action's log lines and workflow commands reach the job log as they are written,
# and the server's JSON log lines reach `docker logs` / CloudWatch without waiting for a buffer to fill.
# PIP_BREAK_SYSTEM_PACKAGES: a base whose Python comes from Debian's packages marks it externally managed
# (PEP 668); in this single-purpose image pip is the only installer, so that guard does not apply.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/bridge \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    BRIDGE_CONFIG=/etc/bridge/bridge.toml

WORKDIR /opt/bridge

# Every dependency is pinned by version and hash (`--require-hashes` refuses anything else) and comes as
# a wheel (`--only-binary`: nothing is compiled at install time). The project itself is not pip-installed
# (that would fetch unpinned build tools): it runs from PYTHONPATH, and entrypoint.py is the CLI too.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock

COPY entrypoint.py ./
COPY bridge ./bridge

# A non-root user for the server (`docker run --user bridge`, ECS `user`, Kubernetes runAsUser 10001) with a
# writable state directory for the SQLite store. The Action must stay root: GitHub mounts the workspace and
# the file-command files (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY) owned by the runner, and documents that
# container actions run as the default (root) user, so there is no USER instruction here.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/bridge --create-home --shell /usr/sbin/nologin bridge \
    && mkdir -p /etc/bridge \
    && python -m compileall -q /opt/bridge/bridge

# Health: in server mode (`serve` among PID 1's arguments) GET /healthz on the --port given (default 8080);
# in Action mode the probe reports healthy at once and costs nothing (the runner does not wait on it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import re,sys,urllib.request as u; c=open('/proc/1/cmdline','rb').read().replace(b'\\0',b' ').decode(errors='replace'); sys.exit(0) if not re.search(r'(^| )serve( |$)',c) else None; p=re.search(r'--port[= ]([0-9]+)',c); u.urlopen('http://127.0.0.1:%s/healthz' % (p[1] if p else 8080),timeout=4)"]

# SIGTERM is what `docker stop`, ECS and Kubernetes send (stated here so nobody changes it by accident).
# Server: gunicorn stops accepting, finishes in-flight requests and stops the build worker within its
# 30 s graceful timeout, so give the orchestrator a longer stop timeout (docker stop -t 40, ECS stopTimeout 40).
# Action: a cancelled workflow run signals the container; the Action stops the CodeBuild build and reports
# the check run as cancelled.
STOPSIGNAL SIGTERM

EXPOSE 8080
ENTRYPOINT ["python", "/opt/bridge/entrypoint.py"]
