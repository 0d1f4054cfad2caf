"""preload.options: the one table of options agrees with the API, and each parser speaks the API's words."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import preload
from preload import options
from preload.options import OPTIONS, DecodeOptions


def test_the_table_describes_exactly_the_options_load_and_build_cache_take():
    for verb in (preload.load, preload.build_cache):
        parameters = inspect.signature(verb).parameters
        described = {name: parameters[name].default for name in OPTIONS}
        assert described == {name: option.default for name, option in OPTIONS.items()}, verb.__name__
    assert set(options.DECODE_OPTIONS) == {f.name for f in dataclasses.fields(DecodeOptions)}
    assert set(options.DECODE_OPTIONS) < set(OPTIONS)
    for option in OPTIONS.values():
        assert option.help and "\n" not in option.help and option.flag == "--" + option.name.replace("_", "-")


@pytest.mark.parametrize("name", [name for name, option in OPTIONS.items() if option.allowed])
def test_every_allowed_value_parses_and_others_are_refused_with_the_list(name):
    option = OPTIONS[name]
    for value in option.allowed:
        assert option.parse(value.upper()) == value
    listed = ", ".join(map(repr, option.allowed))
    with pytest.raises(preload.OptionError, match=rf"^{name}='bogus' is not accepted; use one of {listed}$"):
        option.parse("bogus")


@pytest.mark.parametrize(
    "name, text, value",
    [("size", "256", 256), ("size", "224x320", (224, 320)), ("size", "none", None), ("fill", "114,114,114",
     (114, 114, 114)), ("fill", "0", 0), ("exif", "no", False), ("reduce", "On", True), ("progress", "0", False),
     ("max_pixels", "1000", 1000), ("workers", "3", 3), ("workers", "all", None)],
)
def test_parsers_give_the_value_the_api_takes(name, text, value):
    assert OPTIONS[name].parse(text) == value


@pytest.mark.parametrize(
    "name, text, words",
    [("size", "big", r"size 'big' is not N or HxW"), ("size", "0x5", r"size=\(0, 5\) is not accepted; height and"),
     ("fill", "red", r"fill 'red' is not an int"), ("exif", "maybe", r"'maybe' is not a yes/no value"),
     ("max_pixels", "-1", r"max_pixels='-1' is not accepted; use a positive int"),
     ("workers", "0", r"workers=0 is not accepted; use a positive int, or None for every core"),
     ("workers", "two", r"workers='two' is not accepted")],
)
def test_parsers_refuse_with_the_api_s_message(name, text, words):
    with pytest.raises(preload.OptionError, match=words):
        OPTIONS[name].parse(text)


def test_workers_and_on_error_are_checked_once_the_same_way_everywhere():
    assert options.resolve_workers(None) == options.cpu_count() >= 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(preload.OptionError, match=r"is not accepted; use a positive int, or None for every core"):
            options.resolve_workers(bad)
    with pytest.raises(preload.OptionError, match=r"workers=0 is not accepted"):
        preload.ImageFiles([], size=4, workers=0)
    assert options.check_on_error("SKIP") == "skip"
    with pytest.raises(preload.OptionError,
                       match=r"^on_error='drop' is not accepted; use one of 'raise', 'skip', 'zero'$"):
        options.check_on_error("drop")


def test_progress_none_follows_the_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(options.sys, "stderr", Stream(True))
    assert options.progress_wanted(None) is True
    monkeypatch.setattr(options.sys, "stderr", Stream(False))
    assert options.progress_wanted(None) is False
    assert options.progress_wanted(True) is True and options.progress_wanted(0) is False
