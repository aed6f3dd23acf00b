# One image for both front doors: the GitHub Action (default) and `bridge serve` (the webhook server).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/bridge
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md entrypoint.py ./
COPY bridge ./bridge
RUN pip install --no-cache-dir --no-deps . \
    && useradd --system --uid 10001 --home-dir /var/lib/bridge --create-home bridge

# The Action runs as the runner's user (GitHub mounts the workspace as root); `bridge serve` may run as `bridge`.
ENTRYPOINT ["python", "/opt/bridge/entrypoint.py"]
