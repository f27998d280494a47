"""One error base: user errors are shown as they are; anything else is a bug, said so, with its traceback logged."""

from __future__ import annotations

import argparse
import logging

import gradio as gr
import pytest

from app.command import run_handler
from app.errors import shown_to_user
from core.errors import UserError
from core.io.images import ImageInputError
from core.limits import LimitError
from core.io.metadata import MetadataError
from core.story import StoryError


@pytest.mark.parametrize("error", [ImageInputError("the image is 1x1 pixels"), LimitError("steps must be 1 to 100"),
                                   MetadataError("no settings"), StoryError([(3, "unknown character [Bob]")])])
def test_every_user_error_derives_from_one_base_and_is_shown(error):
    assert isinstance(error, UserError)

    @shown_to_user
    def handler():
        raise error

    with pytest.raises(gr.Error) as info:
        handler()
    assert str(error).splitlines()[0] in info.value.message and "Unexpected" not in info.value.message


def test_a_bug_in_a_handler_is_an_unexpected_error_with_its_traceback_logged(caplog):
    @shown_to_user
    def handler():
        return {}["missing"]  # a bug, not a user error

    with caplog.at_level(logging.ERROR), pytest.raises(gr.Error) as info:
        handler()
    assert info.value.message.startswith("Unexpected error (KeyError") and "details are in the terminal" in info.value.message
    record = next(r for r in caplog.records if "unexpected error in handler" in r.getMessage())
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_a_plain_value_error_is_a_bug_not_a_user_error():
    @shown_to_user
    def handler():
        raise ValueError("internal invariant broken")

    with pytest.raises(gr.Error, match="Unexpected error \\(ValueError"):
        handler()


def test_cli_exit_codes(capsys):
    def user(args):
        raise LimitError("steps must be from 1 to 100, got 1000")

    def bug(args):
        raise ZeroDivisionError("division by zero")

    assert run_handler(user, argparse.Namespace(debug=False)) == 2
    assert capsys.readouterr().err == "error: steps must be from 1 to 100, got 1000\n"
    assert run_handler(bug, argparse.Namespace(debug=False)) == 1
    err = capsys.readouterr().err
    assert "unexpected error (ZeroDivisionError: division by zero)" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        run_handler(bug, argparse.Namespace(debug=True))
