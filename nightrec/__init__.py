"""nightrec package."""
