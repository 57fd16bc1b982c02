"""``python -m faceveil`` is the ``faceveil`` command."""

from .cli import entry

if __name__ == "__main__":
    entry()
