"""The flags several ``mvit3`` sub-commands share, defined once.

Each ``add_*`` function adds one flag to a sub-command's parser with the same name,
type, metavar and help wording everywhere; a command passes only what is really its
own (the default, whether it is required, what the data is used for). Values are
checked while parsing: a bad value ends in one ``mvit3 COMMAND: error: argument
--FLAG: ...`` line and exit code 2, and the handlers never check a flag again.

The grammar of the command line: the thing a command acts on is positional
(``mvit3 train MODEL``, ``mvit3 export MODEL.keras``, ``mvit3 benchmark FILE.tflite``),
everything else is an option.

``--image-size H [W]`` is parsed by :func:`parse_image_size` only: the namespace holds
``(h, w)`` (one number is a square). Commands that only support a square size say so
with ``square=True``.
"""

from __future__ import annotations

import argparse
import json
import sys


def _checked_number(text: str, convert, accept, what: str):
    """``convert(text)`` when ``accept`` takes it, else the argparse error naming ``what``."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number > 0."""
    return _checked_number(text, int, lambda v: v > 0, "a whole number > 0")


def non_negative_int(text: str) -> int:
    """``argparse`` type: a whole number >= 0."""
    return _checked_number(text, int, lambda v: v >= 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    """``argparse`` type: a number > 0."""
    return _checked_number(text, float, lambda v: v > 0, "a number > 0")


def add_count(p, flag: str, *, help: str, default=None, zero_ok: bool = False) -> None:
    """``FLAG N``: a whole number > 0 (``zero_ok``: >= 0)."""
    kind = non_negative_int if zero_ok else positive_int
    p.add_argument(flag, type=kind, default=default, metavar="N", help=help)


# ---------------------------------------------------------------------------------------
# --image-size H [W]
# ---------------------------------------------------------------------------------------
def parse_image_size(values, *, square=None) -> tuple:
    """``H [W]`` (strings or ints; one number is a square) -> ``(h, w)``.

    Raises ``ValueError`` with what is wrong and the fix (the parser prefixes
    ``argument --image-size:``). ``square``: why the command needs ``H == W`` (a
    sentence, e.g. "training crops are square"); then ``H != W`` is an error too."""
    if isinstance(values, (int, str)):
        values = [values]
    values = list(values)
    given = " ".join(str(v) for v in values)
    sizes = []
    for value in values:
        try:
            sizes.append(positive_int(str(value)))
        except argparse.ArgumentTypeError:
            hint = " (put the positional arguments before --image-size)" if sizes else ""
            raise ValueError(
                f"takes whole numbers > 0, H [W] (e.g. 224 or 224 160), got {given}{hint}"
            ) from None
    if len(sizes) not in (1, 2):
        raise ValueError(
            f"takes one or two numbers, H [W] (e.g. 224 or 224 160), got {len(sizes)}: {given}"
        )
    h, w = sizes[0], sizes[-1]
    if square and h != w:
        reason = square if isinstance(square, str) else "this command needs a square size"
        raise ValueError(f"{reason}, got {h} {w}: pass one number, e.g. --image-size {h}")
    return h, w


class ImageSizeAction(argparse.Action):
    """Stores ``(h, w)`` from ``--image-size H [W]`` (:func:`parse_image_size`; argparse's
    usage line reads ``nargs="+"`` as ``H [W ...]``, the help text says one or two)."""

    def __init__(self, option_strings, dest, square=None, **kwargs):
        super().__init__(option_strings, dest, nargs="+", metavar=("H", "W"), **kwargs)
        self.square = square

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            size = parse_image_size(values, square=self.square)
        except ValueError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        setattr(namespace, self.dest, size)


def add_image_size(
    p, *, default_text: str, square: str | None = None, use: str = "input size", default=None
):
    """``--image-size H [W]`` -> ``args.image_size = (h, w)``, else ``default`` (None, or
    an ``(h, w)``; ``default_text``: what it means for the command); ``square``: why the
    command needs ``H == W``."""
    shape = f"one number ({square})" if square else "H [W], one number for a square"
    p.add_argument(
        "--image-size",
        action=ImageSizeAction,
        square=square,
        default=default,
        help=f"{use} in pixels: {shape} (default: {default_text})",
    )


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def add_dataset(p, *, use: str, required: bool = False, default_text: str | None = None):
    """``--dataset NAME``: a TFDS name, voc2012, an image folder or ``demo``."""
    default = "" if required or default_text is None else f" (default: {default_text})"
    p.add_argument(
        "--dataset",
        required=required,
        default=None,
        metavar="NAME",
        help=f"{use}: a TFDS name (imagenet2012, scene_parse150, ...), voc2012, an image "
        f"folder or 'demo' (the bundled digits){default}",
    )


def add_split(p, *, default: str | None, default_text: str | None = None):
    """``--split NAME``: ``train``, ``validation`` or a split name of the dataset."""
    p.add_argument(
        "--split",
        default=default,
        metavar="NAME",
        help="dataset split: train, validation or a TFDS split name "
        f"(default: {default_text or default})",
    )


def add_data_dirs(p, *, manual_dir: bool = True) -> None:
    """``--data-dir DIR`` (and ``--manual-dir DIR``) of TFDS."""
    p.add_argument("--data-dir", default=None, metavar="DIR", help="TFDS data_dir")
    if manual_dir:
        p.add_argument(
            "--manual-dir",
            default=None,
            metavar="DIR",
            help="TFDS manual_dir (imagenet2012 tars, VOCdevkit)",
        )


def add_task(p, *, choices, default_text: str) -> None:
    """``--task NAME`` (``args.task`` None: the command's default, ``default_text``)."""
    p.add_argument(
        "--task",
        default=None,
        choices=tuple(choices),
        help=f"{' or '.join(choices)} (default: {default_text})",
    )


def add_batch_size(p, *, default: int | None, use: str, default_text: str | None = None):
    """``--batch-size N`` (a whole number > 0)."""
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"{use} (default: {default_text or default})",
    )


# ---------------------------------------------------------------------------------------
# outputs and runtime
# ---------------------------------------------------------------------------------------
def add_output(p, *, metavar: str, use: str, required: bool = False, default=None) -> None:
    """``--output PATH``: where the command writes its result."""
    p.add_argument("--output", required=required, default=default, metavar=metavar, help=use)


def add_json(p, *, what: str = "the report") -> None:
    """``--json [FILE]``, one meaning for every command: without ``FILE`` stdout carries
    only ``what`` as JSON (the table and the progress lines go to stderr); with ``FILE``
    the command prints as usual and also writes ``what`` to ``FILE``."""
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help=f"{what} as JSON: alone, on stdout (everything else on stderr); "
        "with FILE, also written to FILE",
    )


def emit_json(destination, payload) -> None:
    """Write ``payload`` where ``--json`` said: nothing (``None``), a stream (what
    ``mvit3_cli.dispatch`` puts in place of ``-``: the real stdout) or a file
    (written atomically, then ``wrote FILE`` is printed)."""
    if destination is None:
        return
    if destination == "-":  # a handler called without mvit3_cli.dispatch
        destination = sys.stdout
    text = json.dumps(payload, indent=2, default=str)
    if hasattr(destination, "write"):
        destination.write(text + "\n")
        destination.flush()
        return
    from mvit3_keras.io_utils import atomic_write_text

    atomic_write_text(destination, text)
    print(f"wrote {destination}")


def add_threads(p, *, default: int = 2) -> None:
    """``--threads N``: LiteRT CPU threads."""
    p.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"LiteRT CPU threads (default: {default})",
    )


# ---------------------------------------------------------------------------------------
# the positional argument a command acts on, with a deprecated option spelling
# ---------------------------------------------------------------------------------------
_MISSING = object()


class _SubjectAction(argparse.Action):
    """The positional (``nargs="?"``, so that the deprecated option can stand in for it):
    called with ``_MISSING`` when absent; exactly one of the two spellings is required."""

    def __init__(self, option_strings, dest, missing: str = "", twice: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.missing = missing
        self.twice = twice

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, _MISSING)
        if values is _MISSING:
            if given is _MISSING:
                raise argparse.ArgumentError(self, self.missing)
            return
        if given is not _MISSING:
            raise argparse.ArgumentError(self, self.twice.format(first=values, second=given))
        setattr(namespace, self.dest, values)


class _DeprecatedOptionAction(argparse.Action):
    """``--model NAME`` for the positional ``NAME``: one line on stderr, same namespace."""

    def __init__(self, option_strings, dest, command: str = "", twice: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.command = command
        self.twice = twice

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        given = getattr(namespace, self.dest, _MISSING)
        if given is not _MISSING:
            raise argparse.ArgumentError(self, self.twice.format(first=given, second=values))
        print(
            f"{option_string} is deprecated: use `mvit3 {self.command} {values}`", file=sys.stderr
        )
        setattr(namespace, self.dest, values)


def add_subject(p, dest: str, *, metavar: str, help: str, command: str, missing: str, alias):
    """The positional ``dest`` a command acts on, also accepted (deprecated) as the
    option ``alias`` (e.g. ``--model``): exactly one of them is required and both give
    the same namespace; ``missing``: the error when neither is given."""
    twice = (
        f"{metavar} given twice ({{first}} and {alias} {{second}}): pass it once, "
        f"`mvit3 {command} {metavar}` ({alias} is deprecated)"
    )
    p.add_argument(
        dest,
        nargs="?",
        action=_SubjectAction,
        default=_MISSING,
        metavar=metavar,
        missing=missing,
        twice=twice,
        help=f"{help} (required)",
    )
    p.add_argument(
        alias,
        dest=dest,
        action=_DeprecatedOptionAction,
        default=argparse.SUPPRESS,
        metavar=metavar,
        command=command,
        twice=twice,
        help=argparse.SUPPRESS,  # still accepted, with one line on stderr
    )
