"""The search (python -m nasfast.search): the outer loop, its candidates, and their distribution over processes."""
