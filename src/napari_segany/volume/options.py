"""Which view of a source to open: its axes, pyramid level, channel and time point.

These are :func:`~napari_segany.open_volume`'s arguments that choose the view (not the
intensity limits). One object carries them from the command line and the batch run to the
processes that reopen a source, and into an embedding store's signature, where
``napari-segany check`` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypedDict

__all__ = ["OpenKeywords", "VolumeOptions"]


class OpenKeywords(TypedDict):
    """:class:`VolumeOptions` as keyword arguments of :func:`~napari_segany.open_volume`."""

    axes: str | None
    level: int
    channel: int | None
    time: int | None


@dataclass(frozen=True)
class VolumeOptions:
    """How a source is viewed as a ``(Z, Y, X)`` volume (see :func:`~napari_segany.open_volume`).

    Attributes
    ----------
    axes
        The source's axes in the letters T, C, Z, Y, X; None: from the metadata or the shape.
    level
        The pyramid level; 0 is full resolution.
    channel, time
        The index on the C and T axes; None where not chosen.
    """

    axes: str | None = None
    level: int = 0
    channel: int | None = None
    time: int | None = None

    def keywords(self) -> OpenKeywords:
        """The options as keyword arguments: ``open_volume(source, **options.keywords())``."""
        return OpenKeywords(axes=self.axes, level=self.level, channel=self.channel, time=self.time)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-able values, as an embedding store's signature records them."""
        return dict(self.keywords())

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> VolumeOptions:
        """Options recorded by :meth:`to_dict` (None or ``{}``: the defaults).

        Raises
        ------
        ValueError
            A name that is not one of the options (a signature from another program).
        """
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown volume option(s) {', '.join(map(repr, unknown))}")
        return cls(**values)
