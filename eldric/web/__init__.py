"""What every HTTP service of ours shares: the error format, file responses, auth, the API Blueprint."""
