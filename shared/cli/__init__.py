"""The `seats` command: provisioning, operations, and `seats up` with its embedded servers."""

from shared.cli.commands import main

__all__ = ["main"]
