"""What every HTTP service of ours shares: the error format, file responses, bearer auth, the API Blueprint, the gunicorn server."""
