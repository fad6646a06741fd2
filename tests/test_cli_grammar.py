"""One grammar for every ``mvit3`` command (``mvit3_keras.cli_args``): the subject is
positional, the shared flags are defined once, ``--image-size H [W]`` has one parser,
and bad values are one ``argparse`` error line naming the flag (exit code 2)."""

from __future__ import annotations

import pytest

from mvit3_cli import build_parser
from mvit3_keras.cli_args import parse_image_size

# The shortest valid command line of every command that takes --image-size.
IMAGE_SIZE_COMMANDS = {
    "train": ["train", "mobilevitv3_xxs", "--dataset", "demo"],
    "evaluate": ["evaluate", "runs/digits"],
    "export": ["export", "model.keras", "--output", "model.tflite"],
    "macs": ["macs", "mobilevitv3_xxs"],
    "convert-weights": ["convert-weights", "mobilevitv3_xxs", "ckpt.pt", "out.keras"],
}
SQUARE_ONLY = {"train", "evaluate"}  # training crops and evaluation sizes are square


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def _error(parser, argv, capsys) -> str:
    """The ``mvit3 COMMAND: error: ...`` line of a command line the parser refuses."""
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"mvit3 {argv[0]}: error: "), lines
    return lines[-1]


def test_image_size_commands_are_all_listed(parser):
    found = {name for name, p in parser.commands.items() if "--image-size" in p.format_help()}
    assert found == set(IMAGE_SIZE_COMMANDS)


@pytest.mark.parametrize("command", sorted(IMAGE_SIZE_COMMANDS))
def test_image_size_one_or_two_numbers(parser, command, capsys):
    base = IMAGE_SIZE_COMMANDS[command]
    square = parser.parse_args([*base, "--image-size", "224"]).image_size
    assert tuple(square) in ((224, 224), (224,))
    if command in SQUARE_ONLY:
        line = _error(parser, [*base, "--image-size", "224", "160"], capsys)
        assert "argument --image-size:" in line and "pass one number" in line
    else:
        size = parser.parse_args([*base, "--image-size", "224", "160"]).image_size
        assert tuple(size) == (224, 160)


@pytest.mark.parametrize("command", sorted(IMAGE_SIZE_COMMANDS))
@pytest.mark.parametrize("bad", [["0"], ["224", "160", "96"], ["-1"], ["x"]])
def test_image_size_bad_values_are_parse_errors(parser, command, bad, capsys):
    line = _error(parser, [*IMAGE_SIZE_COMMANDS[command], "--image-size", *bad], capsys)
    assert "argument --image-size: takes" in line and "H [W]" in line


def test_parse_image_size_is_the_one_parser():
    assert parse_image_size(["224"]) == (224, 224)
    assert parse_image_size(["224", "160"]) == (224, 160)
    assert parse_image_size(96) == (96, 96)
    with pytest.raises(ValueError, match="one or two numbers"):
        parse_image_size([1, 2, 3])
    with pytest.raises(ValueError, match="whole numbers > 0"):
        parse_image_size(["0"])
    with pytest.raises(ValueError, match="training crops are square.*--image-size 224"):
        parse_image_size(["224", "160"], square="training crops are square")
    with pytest.raises(ValueError, match="positional arguments before --image-size"):
        parse_image_size(["64", "mobilevitv3_xxs"])


def test_train_model_positional_and_deprecated_option(parser, capsys):
    rest = ["--dataset", "demo", "--image-size", "64"]
    new = parser.parse_args(["train", "mobilevitv3_xxs", *rest])
    assert capsys.readouterr().err == ""
    old = parser.parse_args(["train", "--model", "mobilevitv3_xxs", *rest])
    assert capsys.readouterr().err == "--model is deprecated: use `mvit3 train mobilevitv3_xxs`\n"
    assert vars(new) == vars(old)
    assert new.model == "mobilevitv3_xxs" and new.image_size == (64, 64)
    anywhere = parser.parse_args(["train", "--dataset", "demo", "mobilevitv3_xxs", *rest[2:]])
    assert vars(anywhere) == vars(new)


def test_train_model_missing_or_twice(parser, capsys):
    line = _error(parser, ["train", "--dataset", "demo"], capsys)
    assert "argument MODEL: name the variant to train" in line
    line = _error(parser, ["train", "a", "--model", "b", "--dataset", "demo"], capsys)
    assert "MODEL given twice (a and --model b)" in line and "--model is deprecated" in line
    line = _error(parser, ["train", "--model", "b", "a", "--dataset", "demo"], capsys)
    assert "MODEL given twice (a and --model b)" in line


def test_help_of_every_command_renders(parser, capsys):
    assert len(parser.commands) >= 13
    for name in parser.commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: mvit3 {name}"), name
        if "--image-size" in out:
            assert "--image-size H [W ...]" in out, name


# The shortest valid command line of each command with a shared flag.
SHARED = {
    "train": ["train", "mobilevitv3_xxs", "--dataset", "demo"],
    "evaluate": ["evaluate", "runs/digits"],
    "export": ["export", "model.keras", "--output", "model.tflite"],
    "evaluate-tflite": ["evaluate-tflite", "model.tflite", "--dataset", "demo"],
    "benchmark": ["benchmark", "model.tflite"],
    "qat": ["qat", "model.keras", "--output", "qat.keras", "--dataset", "demo"],
}


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "argument --batch-size: expected a whole number > 0, got '0'"),
        ("--threads", "two", "argument --threads: expected a whole number > 0, got 'two'"),
        ("--task", "detection", "argument --task: invalid choice: 'detection' (choose from"),
    ],
)
def test_shared_flags_check_values_alike(parser, flag, value, message, capsys):
    having = [name for name, argv in SHARED.items() if flag in parser.commands[name].format_help()]
    assert len(having) >= 2, f"{flag} is shared"
    for name in having:
        line = _error(parser, [*SHARED[name], flag, value], capsys)
        assert message in line, line


def test_shared_flags_read_alike(parser):
    """Same metavar everywhere (one definition): the option lines of every command's help."""
    lines = {
        name: [line.strip() for line in parser.commands[name].format_help().splitlines()]
        for name in SHARED
    }
    flags = ("--dataset NAME", "--batch-size N", "--threads N", "--split NAME", "--data-dir DIR")
    for flag in flags:
        option = flag.split()[0] + " "
        users = [name for name in SHARED if any(x.startswith(option) for x in lines[name])]
        assert len(users) >= 2, flag
        assert all(any(x.startswith(flag) for x in lines[name]) for name in users), flag


def test_commands_that_read_data_require_dataset_while_parsing(parser, capsys):
    for argv in (["evaluate-tflite", "model.tflite"], ["qat", "m.keras", "--output", "q.keras"]):
        line = _error(parser, argv, capsys)
        assert "the following arguments are required: --dataset" in line


def test_handlers_get_the_parsed_values(parser, monkeypatch):
    """``train`` / ``evaluate`` get one int from ``(h, w)``; no handler parses again."""
    import training.loop

    seen = {}
    monkeypatch.setattr(training.loop, "train", lambda config: seen.update(config=config))
    monkeypatch.setattr(
        training.loop, "evaluate", lambda target, **kw: seen.update(evaluate=kw) or {"top1": 1}
    )
    args = parser.parse_args(
        ["train", "mobilevitv3_xxs", "--dataset", "demo", "--image-size", "64"]
    )
    assert args.handler(args) == 0
    config = seen["config"]
    assert (config.model, config.image_size, config.task) == (
        "mobilevitv3_xxs",
        64,
        "classification",
    )
    args = parser.parse_args(["evaluate", "runs/x", "--image-size", "96", "--json"])
    assert args.handler(args) == 0
    assert seen["evaluate"]["image_size"] == 96 and seen["evaluate"]["batch_size"] == 32


def test_main_leaves_the_progress_logger_as_it_found_it(capsys):
    """Each ``main`` call renders the ``"mvit3"`` logger on its own stdout only."""
    from mvit3_cli import main
    from mvit3_keras.progress import logger

    before = (list(logger.handlers), logger.level, logger.propagate)
    assert main(["recipes", "--json"]) == 0
    assert main(["recipes", "--json"]) == 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    assert capsys.readouterr().out.count('"name"') > 2


# The shortest valid command line of every command with --json [FILE].
JSON_COMMANDS = {
    "list": ["list"],
    "macs": ["macs", "mobilevitv3_xxs"],
    "evaluate": ["evaluate", "runs/digits"],
    "recipes": ["recipes"],
    "export": ["export", "model.keras", "--output", "model.tflite"],
    "evaluate-tflite": ["evaluate-tflite", "model.tflite", "--dataset", "demo"],
    "benchmark": ["benchmark", "model.tflite"],
    "edgetpu-report": ["edgetpu-report", "model.tflite"],
    "inspect-tflite": ["inspect-tflite", "model.tflite"],
}


def test_json_has_one_meaning_for_every_command(parser):
    """``--json`` alone: the JSON document on stdout; ``--json FILE``: also to FILE."""
    found = {name for name, p in parser.commands.items() if "--json" in p.format_help()}
    assert found == set(JSON_COMMANDS)
    for argv in JSON_COMMANDS.values():
        assert parser.parse_args([*argv, "--json"]).json == "-"
        assert parser.parse_args([*argv, "--json", "out.json"]).json == "out.json"
        assert parser.parse_args(argv).json is None


def test_json_alone_puts_only_the_document_on_stdout(tmp_path, capsys):
    import json

    from mvit3_cli import main

    assert main(["list", "--pattern", "mobilevitv3_xxs", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)  # nothing else on stdout
    assert [r["name"] for r in rows] == ["mobilevitv3_xxs"]
    assert "mobilevitv3_xxs" in captured.err  # the table went to stderr
    path = tmp_path / "list.json"
    assert main(["list", "--pattern", "mobilevitv3_xxs", "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(path.read_text()) == rows
    assert "mobilevitv3_xxs" in captured.out and f"wrote {path}" in captured.out
