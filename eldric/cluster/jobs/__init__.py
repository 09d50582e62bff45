"""Jobs, owned here: starting one (start.py), its records' one write path (store.py), a worker's
progress (progress.py), reading and pruning (reads.py), the state rule (state.py), the reaper
(reaper.py) and catch-ups of skipped workers (catchups.py)."""
