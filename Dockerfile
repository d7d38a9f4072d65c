# The image every dispatch process runs from: workers, Flower, and the CLI itself.
#   docker build -t dispatch .
#   docker compose up -d --scale worker=4      (see docker-compose.yml)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatch ./dispatch
COPY cli.py worker.py ./
RUN pip install . "flower>=2,<3" \
    && useradd --create-home --uid 10001 dispatch \
    && mkdir -p /workspace && chown dispatch /workspace

# Never root: agents run tools (shell kind) with the worker's rights.
USER dispatch
ENV DISPATCH_STATE_DIR=/home/dispatch/.dispatch
WORKDIR /workspace

# Consumes both queues; agent-only workers override the command with -Q dispatch.agents.
CMD ["celery", "-A", "dispatch.runtime.worker", "worker", "-Q", "dispatch.phases,dispatch.agents", "--loglevel", "INFO"]
