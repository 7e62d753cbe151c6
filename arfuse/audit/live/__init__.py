"""Running a target live: load it, sweep num_tokens in a worker process, capture its trace."""
