"""gunicorn settings for the web: `gunicorn -c python:web.gunicorn_conf 'web:create_app()'`.

Counters of HTTP requests must add up across the gunicorn workers, whichever one
answers a scrape: prometheus-client's multiprocess mode keeps them in files in one
folder (PROMETHEUS_MULTIPROC_DIR, a fresh temporary one unless given), and a worker
that exits is marked dead so its gauges leave the sum while its counters stay.
"""

import os
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="seats-metrics-"))


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(getattr(worker, "pid", 0))


# Short requests, many of them, from clients that keep their connection (Stripe, a
# browser polling a purchase): threads per worker and keep-alive, measured to take about
# a third more webhooks per second than sync workers closing every connection
# (README "Benchmarks"). SEATS_WEB_THREADS=1 with SEATS_WEB_WORKER_CLASS=sync goes back.
worker_class = os.environ.get("SEATS_WEB_WORKER_CLASS", "gthread")
threads = int(os.environ.get("SEATS_WEB_THREADS", "4"))
keepalive = 5
