"""gunicorn settings for the controller: `gunicorn -c deploy/gunicorn.conf.py 'controller:create_app()'`.

A gunicorn config file is an entry point, so it reads the environment:
ELDRIC_CONTROLLER_HOST / ELDRIC_CONTROLLER_PORT (default 127.0.0.1:8880, as `eldric controller`),
ELDRIC_CONTROLLER_WORKERS / ELDRIC_CONTROLLER_THREADS, ELDRIC_LOG_FORMAT (text or json), and the
slow-client limits ELDRIC_HTTP_* (eldric/web/client_limits.py), as the registry and the agents read them.
"""

import os

from eldric.logging_setup import format_from_env
from eldric.web.client_limits import HttpLimitsSettings
from eldric.web.gunicorn_server import guarded_worker

bind = f"{os.environ.get('ELDRIC_CONTROLLER_HOST', '127.0.0.1')}:{os.environ.get('ELDRIC_CONTROLLER_PORT', '8880')}"
# Threads: progress streams (Server-Sent Events, Ollama-style NDJSON) hold a connection each.
# gthread guarded against slow clients: a thread is taken only once a request head is whole.
worker_class = guarded_worker(HttpLimitsSettings.from_env().client_limits())
workers = int(os.environ.get("ELDRIC_CONTROLLER_WORKERS", "2"))
threads = int(os.environ.get("ELDRIC_CONTROLLER_THREADS", "16"))
timeout = 120
graceful_timeout = 30
accesslog = "-"
# gunicorn >= 24 opens a control socket under $HOME by default; two controllers on a host would share it.
control_socket_disable = True

_format = format_from_env()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"eldric": {"()": "eldric.logging_setup.make_formatter", "fmt": _format}},
    "filters": {"context": {"()": "eldric.logging_setup.ContextFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                             "formatter": "eldric", "filters": ["context"]}},
    "root": {"level": os.environ.get("ELDRIC_LOG_LEVEL", "INFO"), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}
