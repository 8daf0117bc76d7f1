"""Where batch work runs: jobs split into shards, run in this process or on a Ray actor pool, with rows
written to resumable JSONL files under a run manifest."""
