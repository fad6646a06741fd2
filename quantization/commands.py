"""``mvit3`` sub-commands contributed by the ``quantization`` package."""


def register(subparsers) -> None:
    """Add this package's sub-commands to the ``mvit3`` parser."""
