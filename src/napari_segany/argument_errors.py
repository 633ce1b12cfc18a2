"""Errors about an argument, said in the words of whoever called.

An error the caller fixes by passing an argument, or one about an argument it passed, keeps
that argument apart from its words. Python callers read ``time=3 is out of range`` and
``pass recompute=True``; the command line renders the same error with its own options,
``--time 3 is out of range`` and ``use --recompute``, and leaves out a fix it has no
option for. The engine states the argument once; each front end words it.

Nothing heavy is imported here: the command line imports this module at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ArgumentError", "Blank", "Fix", "Setting"]


@dataclass(frozen=True)
class Blank:
    """A value for the caller to fill in: ``(low, high)`` in Python, ``LOW HIGH`` on the
    command line."""

    python: str
    command_line: str


Value = bool | int | float | str | range | Blank
"""What a :class:`Setting` holds: True for a switch, a range for "one of these"."""


@dataclass(frozen=True)
class Setting:
    """An argument and its value: ``time=3`` in Python, ``--time 3`` on the command line.

    Attributes
    ----------
    argument
        The keyword argument of the Python API, e.g. ``"time"``.
    value
        True for a switch (``recompute=True``, ``--recompute``); a range means any value
        in it (``time=0..2``); a :class:`Blank` is a value to fill in.
    """

    argument: str
    value: Value = True

    def python(self) -> str:
        """``time=0..2``, ``axes='TCZYX'``, ``recompute=True``."""
        if isinstance(self.value, Blank):
            return f"{self.argument}={self.value.python}"
        if isinstance(self.value, (bool, str)):
            return f"{self.argument}={self.value!r}"
        return f"{self.argument}={_plain(self.value)}"

    def command_line(self, option: str) -> str:
        """``--time 0..2``, ``--axes TCZYX``, ``--recompute`` for the option ``option``."""
        if self.value is True:
            return option
        if isinstance(self.value, Blank):
            return f"{option} {self.value.command_line}"
        return f"{option} {_plain(self.value)}"


@dataclass(frozen=True)
class Fix:
    """How to fix an error by passing an argument, with alternatives.

    Said ``{verb} {setting} or {setting}{then}``: in Python the verb defaults to "pass"
    and ``to`` names the function that takes the argument (``pass limits=(low, high) to
    open_volume``); on the command line it defaults to "use" (``use --recompute``).

    Attributes
    ----------
    settings
        One setting, or alternatives of the same argument.
    then
        What follows, in words for every caller, e.g. ``" to replace its embeddings"``.
    verb
        Replaces "pass" and "use", e.g. ``"pick one with"``.
    to
        The Python function that takes the argument (Python words only).
    """

    settings: tuple[Setting, ...]
    then: str = ""
    verb: str | None = None
    to: str | None = None

    def __post_init__(self) -> None:
        if not self.settings or len({s.argument for s in self.settings}) != 1:
            raise ValueError("a Fix names one argument, with one or more values")

    @property
    def argument(self) -> str:
        """The argument that fixes the error."""
        return self.settings[0].argument

    def python(self) -> str:
        """The fix in Python words."""
        settings = " or ".join(s.python() for s in self.settings)
        to = f" to {self.to}" if self.to else ""
        return f"{self.verb or 'pass'} {settings}{to}{self.then}"

    def command_line(self, option: str) -> str:
        """The fix in command-line words, with ``option`` for the argument."""
        settings = " or ".join(s.command_line(option) for s in self.settings)
        return f"{self.verb or 'use'} {settings}{self.then}"


Options = Callable[[str], str | None]
"""Maps an argument of the Python API to a command-line option, None when there is none."""


class ArgumentError(ValueError):
    """A ValueError whose message names arguments, for Python callers and for front ends.

    ``str(error)`` is the message in Python words. :meth:`said` words it for a front end
    that maps arguments to its own options.

    Parameters
    ----------
    *problem
        What went wrong: text, and :class:`Setting` where an argument the caller passed is
        named (``Setting("time", 3), " is out of range: ..."``).
    fix
        How to fix it, said after the problem (``problem; fix``), or None.

    Examples
    --------
    >>> pick = Fix((Setting("time", range(3)),), verb="pick one with")
    >>> error = ArgumentError("stack.tif has 3 time points", fix=pick)
    >>> str(error)
    'stack.tif has 3 time points; pick one with time=0..2'
    >>> error.said({"time": "--time"}.get)
    'stack.tif has 3 time points; pick one with --time 0..2'
    """

    def __init__(self, *problem: str | Setting, fix: Fix | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.said(None))

    def said(self, options: Options | None) -> str:
        """The message with each argument named by ``options``; Python words where it is
        None. A setting without an option stays in Python words (the front end passed it
        itself); a fix without one is left out (the front end cannot apply it)."""
        words = []
        for part in self.problem:
            if isinstance(part, Setting):
                option = options(part.argument) if options is not None else None
                words.append(part.command_line(option) if option else part.python())
            else:
                words.append(part)
        text = "".join(words)
        if self.fix is None:
            return text
        if options is None:
            return f"{text}; {self.fix.python()}"
        option = options(self.fix.argument)
        return f"{text}; {self.fix.command_line(option)}" if option else text

    def __reduce__(self) -> tuple:
        # Batch workers (dask) send errors back pickled; the default would call
        # __init__ with the message alone and lose the arguments.
        return (_rebuild, (type(self), self.problem, self.fix))


def _rebuild(
    kind: type[ArgumentError], problem: tuple[str | Setting, ...], fix: Fix | None
) -> ArgumentError:
    return kind(*problem, fix=fix)


def _plain(value: Value) -> str:
    if isinstance(value, range):
        if len(value) == 1:
            return str(value[0])
        return f"{value[0]}..{value[-1]}"
    return str(value)
