"""The options the subcommands share (:mod:`napari_segany.cli.options`)."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable

import pytest

from napari_segany import open_volume, weights
from napari_segany.cli.embed import add_embed
from napari_segany.cli.evaluate import add_evaluate
from napari_segany.cli.finetune import add_finetune
from napari_segany.cli.options import (
    MODEL_HELP,
    add_volume_options,
    count_arg,
    positive_arg,
    volume_options,
)
from napari_segany.cli.segment import add_segment
from napari_segany.volume.options import VolumeOptions

#: Each subcommand with its required arguments, before any option.
REQUIRED = {
    "embed": ["embed", "v.tif"],
    "segment": ["segment", "v.tif", "--out", "out"],
    "evaluate": ["evaluate", "image.tif", "labels.tif"],
    "finetune": ["finetune", "labels.ome.zarr", "--out", "tuned.pt"],
}
VOLUME_COMMANDS = ("embed", "segment")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-segany")
    commands = parser.add_subparsers()
    for add in (add_embed, add_segment, add_evaluate, add_finetune):
        add(commands)
    return parser


def _parse(command: str, *options: str) -> argparse.Namespace:
    return _parser().parse_args([*REQUIRED[command], *options])


@pytest.mark.parametrize("command", VOLUME_COMMANDS)
def test_volume_options_parse_the_same_on_each_subcommand(command: str) -> None:
    args = _parse(command, "--axes", "TCZYX", "--level", "1", "--channel", "2", "--time", "0")

    assert volume_options(args) == VolumeOptions(axes="TCZYX", level=1, channel=2, time=0)


@pytest.mark.parametrize("command", VOLUME_COMMANDS)
def test_volume_options_default_to_the_full_view(command: str) -> None:
    assert volume_options(_parse(command)) == VolumeOptions()


@pytest.mark.parametrize("command", VOLUME_COMMANDS)
@pytest.mark.parametrize("option", ["--level", "--channel", "--time"])
def test_a_negative_index_is_a_usage_error(
    command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(command, option, "-1")

    assert exit_.value.code == 2
    assert f"argument {option}: expected 0 or more, got -1" in capsys.readouterr().err


def test_volume_options_are_open_volume_keywords() -> None:
    keywords = volume_options(_parse("embed", "--axes", "ZYX")).keywords()

    assert set(keywords) <= set(inspect.signature(open_volume).parameters)
    assert keywords == {"axes": "ZYX", "level": 0, "channel": None, "time": None}


@pytest.mark.parametrize("command", REQUIRED)
def test_model_device_and_progress_parse_the_same_on_each_subcommand(command: str) -> None:
    defaults = _parse(command)
    given = _parse(command, "--model", "vit_b", "--device", "cpu", "--no-progress")

    assert (defaults.model, defaults.device, defaults.no_progress) == (
        weights.DEFAULT_MODEL,
        "auto",
        False,
    )
    assert (given.model, given.device, given.no_progress) == ("vit_b", "cpu", True)


def _actions(command: str) -> dict[str, argparse.Action]:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands.choices[command]
    return {a.option_strings[-1]: a for a in sub._actions if a.option_strings}


def _shown(action: argparse.Action) -> tuple[object, ...]:
    return (action.dest, action.default, action.metavar, action.type, action.help)


@pytest.mark.parametrize(
    ("option", "commands"),
    [
        ("--axes", VOLUME_COMMANDS),
        ("--level", VOLUME_COMMANDS),
        ("--channel", VOLUME_COMMANDS),
        ("--time", VOLUME_COMMANDS),
        ("--device", tuple(REQUIRED)),
        ("--no-progress", tuple(REQUIRED)),
        ("--model", ("embed", "segment", "evaluate")),
    ],
)
def test_a_shared_option_reads_the_same_on_each_subcommand(
    option: str, commands: tuple[str, ...]
) -> None:
    shown = {command: _shown(_actions(command)[option]) for command in commands}

    assert len(set(shown.values())) == 1, shown


def test_finetune_says_more_about_its_model_but_takes_it_alike() -> None:
    model = _actions("finetune")["--model"]
    shared = _actions("embed")["--model"]

    assert model.help != MODEL_HELP
    assert (model.dest, model.default, model.metavar) == (
        shared.dest,
        shared.default,
        shared.metavar,
    )


def test_add_volume_options_on_a_bare_parser() -> None:
    parser = argparse.ArgumentParser()
    add_volume_options(parser)

    args = parser.parse_args(["--channel", "3"])

    assert volume_options(args) == VolumeOptions(channel=3)


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (count_arg, "x", "expected an integer, got 'x'"),
        (count_arg, "-1", "expected 0 or more, got -1"),
        (positive_arg, "0", "expected 1 or more, got 0"),
    ],
)
def test_integer_types_reject_bad_values(
    convert: Callable[[str], int], text: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        convert(text)


def test_integer_types_accept_their_least_value() -> None:
    assert (count_arg("0"), positive_arg("1")) == (0, 1)
