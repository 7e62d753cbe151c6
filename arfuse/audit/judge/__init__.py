"""Judging guards: which compile served which num_tokens, which line decided, and whether a
guard can fail inside the token domain. Knows no rule codes and no report."""
