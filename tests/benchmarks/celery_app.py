"""What a Python user writes instead: a Celery task per webhook, posting with
requests. ``BENCH_CELERY_BROKER`` names the broker (a RabbitMQ virtual host)."""

from __future__ import annotations

import os

import requests
from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, task_ignore_result=True,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
_session = requests.Session()
_session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64))


@app.task(name="post_webhook", autoretry_for=(requests.RequestException,), retry_backoff=True)
def post_webhook(url: str, event_id: str, body: str) -> int:
    response = _session.post(url, data=body.encode(), timeout=15,
                             headers={"content-type": "application/json", "x-event-id": event_id})
    response.raise_for_status()
    return response.status_code
