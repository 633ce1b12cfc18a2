"""Malformed input at the public API and the CLI: a valid result, or one of our errors.

Hypothesis throws prompts, arrays and command lines at the entry points a user feeds by
hand: each example is a valid call with a few of its arguments (or none) made junk. A
call must either give a well-formed result or raise one of our typed errors: a
ValueError, TypeError or IndexError (or a subclass of ours) raised by a ``raise``
statement in napari_segany, whose message is one line in our words, not numpy's, zarr's or
torch's. Anything else (a RuntimeError from torch, an AttributeError, a KeyError, a warning
that the pytest settings turn into an error) fails the property.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_segany as sg
from napari_segany.cli import main
from napari_segany.labels.store import MAX_ID
from napari_segany.propagate import PROJECTIONS, StopRule
from napari_segany.segmenter import Prediction, Prompt, Segmenter

SHAPE = (3, 48, 64)
"""The embedded volume: three slices, a disk in each."""
PACKAGE = Path(sg.__file__).resolve().parent
TYPED = (ValueError, TypeError, IndexError)
INTERNAL_WORDS = (
    "reshape",
    "broadcast",
    "unsupported selection",
    "Tensor",
    "inhomogeneous",
    "setting an array element",
    "has no len()",
    "is not iterable",
    "not subscriptable",
    "unpack",
    "could not convert",
    "only integers, slices",
    "out of bounds for axis",
    "zero-size array",
    "not supported between instances",
    "cannot be interpreted as an integer",
    "truth value of an array",
    "ufunc",
    "unhashable",
    "object has no attribute",
)
"""Words of errors that come from inside numpy, zarr, torch or Python, not from us."""


def examples(n: int) -> settings:
    """``n`` examples and no deadline: a decode takes 25 ms on an idle 2-core CPU, ten
    times that on a busy one."""
    return settings(max_examples=n, deadline=None)


def assert_ours(error: BaseException) -> None:
    """``error`` is one of our typed errors: raised by our own ``raise``, one line, our words."""
    message = str(error)
    assert message.strip(), f"{type(error).__name__} without a message"
    assert "\n" not in message, f"{type(error).__name__} of several lines: {message!r}"
    for word in INTERNAL_WORDS:
        assert word not in message, f"{type(error).__name__} in library words: {message!r}"
    tb = error.__traceback__
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    line = linecache.getline(str(path), tb.tb_lineno).strip()
    assert PACKAGE in path.parents and line.startswith("raise"), (
        f"{type(error).__name__}: {message!r} comes from {path}:{tb.tb_lineno} ({line!r}), "
        "not from a raise of ours"
    )


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call``'s result, or None once it is checked that it raised one of our errors.

    Other exceptions propagate and fail the test with their own traceback.
    """
    try:
        return call(*args, **kwargs)
    except TYPED as error:
        assert_ours(error)
        return None


@st.composite
def spoilt(
    draw: st.DrawFn,
    valid: st.SearchStrategy[dict[str, Any]],
    junk: dict[str, st.SearchStrategy[Any]],
    most: int = 2,
) -> dict[str, Any]:
    """The arguments of a valid call, with up to ``most`` of them replaced by junk."""
    call = dict(draw(valid))
    for name in draw(st.sets(st.sampled_from(sorted(junk)), max_size=most)):
        call[name] = draw(junk[name])
    return call


# -- junk shared by the properties ----------------------------------------------------------

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
ODD_NUMBERS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**400, -1, 2.5, "3", "a", None, True, 1j]
)
COORDINATE = st.one_of(st.floats(-2, 70), st.integers(-3, 70), ANY_FLOAT, ODD_NUMBERS)
SLICE_INDEX = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([10**30, -(10**30), np.int64(1), np.uint8(2), np.int32(-1), True, False]),
    st.sampled_from([None, 1.0, 6.7, np.float64(1.0), math.nan, "1", (1,), [1]]),
)
FLAG = st.sampled_from([None, True, False, np.bool_(True), "no", 1, 0, 2.5])


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


DISK = _disk(SHAPE[1:], (20, 30), 10)


# -- prompts --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    image = np.where(DISK, 200.0, 20.0)
    store = sg.embed(sg.open_volume(np.stack([image] * SHAPE[0])), model, progress=False)
    return Segmenter(model, store)


@st.composite
def valid_prompt(draw: st.DrawFn) -> dict[str, Any]:
    """Points with labels (one positive at least), a box, a mask: one of them or several."""
    points = draw(st.lists(st.tuples(st.floats(0, 47.5), st.floats(0, 63.5)), max_size=3))
    labels = [1, *draw(st.lists(st.sampled_from([0, 1]), min_size=len(points)))]
    box = draw(st.sampled_from([None, (5, 5, 30, 40), (0, 0, 48, 64), (10.5, 2, 11.5, 3)]))
    mask = draw(st.sampled_from([None, DISK]))
    if not points and box is None and mask is None:
        box = (5, 5, 30, 40)
    return {
        "points": points or None,
        "labels": labels[: len(points)] or None,
        "box": box,
        "mask": mask,
    }


STACKED_LOGITS = np.zeros((2, 256, 256))
NAN_LOGITS = np.full((256, 256), np.nan)
READ_ONLY_LOGITS = np.zeros((256, 256), dtype=np.float32)
READ_ONLY_LOGITS.flags.writeable = False  # e.g. np.load(..., mmap_mode="r")
MASKS = [
    None,
    DISK,
    np.zeros(SHAPE[1:], dtype=bool),
    np.ones((3, 3), dtype=bool),
    DISK[None],
    DISK.astype(np.uint8),
    np.zeros((256, 256), dtype=np.float32),
    READ_ONLY_LOGITS,
    np.zeros((1, 256, 256)),
    STACKED_LOGITS,
    NAN_LOGITS,
    np.full((256, 256), np.inf, dtype=np.float32),
    np.zeros((256, 256), dtype=np.complex64),
    np.full((256, 256), "a"),
    np.array(True),
    [[1, 2]],
    [[True], [True, False]],
    "mask",
    {},
    torch.zeros(256, 256),
    torch.zeros(2, 256, 256),
    torch.full((256, 256), math.nan),
    torch.zeros(256, 256, dtype=torch.complex64),
    torch.zeros(256, 256, dtype=torch.int64),
    torch.from_numpy(DISK),
]
PROMPT_JUNK = {
    "points": st.one_of(
        st.none(),
        st.lists(st.tuples(COORDINATE, COORDINATE), max_size=4),
        st.lists(st.lists(COORDINATE, max_size=4), max_size=3),  # ragged, not pairs
        hnp.arrays(
            st.sampled_from([np.float64, np.float32, np.int64, np.uint8, bool, np.complex128]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        ),
        st.text(max_size=4),
        COORDINATE,
        st.sampled_from([{1, 2}, {1: 2}]),
    ),
    "labels": st.one_of(
        st.none(),
        st.lists(st.integers(-2, 3) | ANY_FLOAT | ODD_NUMBERS, max_size=4),
        st.lists(st.lists(st.integers(0, 1), max_size=2), max_size=3),
        hnp.arrays(
            st.sampled_from([np.float64, np.int64, bool, np.complex128]),
            hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
        ),
        st.text(max_size=3),
        ODD_NUMBERS,
    ),
    "box": st.one_of(
        st.none(),
        st.lists(COORDINATE, max_size=6),
        st.tuples(COORDINATE, COORDINATE, COORDINATE, COORDINATE),  # inverted, outside, NaN
        hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4)),
        st.text(max_size=4),
        COORDINATE,
    ),
    "mask": st.sampled_from(MASKS),
}


@st.composite
def valid_predict(draw: st.DrawFn) -> dict[str, Any]:
    flags = st.sampled_from([None, True, False])
    z = draw(st.integers(0, SHAPE[0] - 1))
    return {**draw(valid_prompt()), "z": z, "multimask": draw(flags), "refine": draw(flags)}


PREDICT_CALL = spoilt(
    valid_predict(), {**PROMPT_JUNK, "z": SLICE_INDEX, "multimask": FLAG, "refine": FLAG}
)


def check_prediction(pred: Prediction, z: int) -> None:
    assert isinstance(pred, Prediction)
    assert pred.z == z
    assert pred.mask.shape == SHAPE[1:] and pred.mask.dtype == bool
    assert math.isfinite(pred.score)
    assert pred.masks.shape == (len(pred.scores), *SHAPE[1:])
    assert np.isfinite(pred.scores).all()


@pytest.mark.slow  # the model, and a decode per example
@examples(60)
@given(call=PREDICT_CALL)
# the bugs of issue 17: library words, or a wrong slice
@example(call={"z": 1, "points": [(math.nan, 3)], "labels": [1]})
@example(call={"z": -1, "points": [(20, 30)], "labels": [1]})
@example(call={"z": 6.7, "points": [(20, 30)], "labels": [1]})
@example(call={"z": 0, "box": (1, 2, 3)})
# found here: a scalar for points, ragged labels, a list or a stack of logits, NaN logits
# (a NaN score), read-only logits (torch's warning), a complex point, multimask="no" (a
# KeyError in the decoder), (N, 3) points (regrouped into pairs)
@example(call={"z": 0, "points": 5, "labels": [1]})
@example(call={"z": 0, "points": [(2, 3)], "labels": [[1], [1, 0]]})
@example(call={"z": 0, "box": (5, 5, 30, 40), "mask": [[1, 2]]})
@example(call={"z": 0, "box": (5, 5, 30, 40), "mask": STACKED_LOGITS})
@example(call={"z": 0, "box": (5, 5, 30, 40), "mask": NAN_LOGITS})
@example(call={"z": 0, "box": (5, 5, 30, 40), "mask": READ_ONLY_LOGITS})
@example(call={"z": 0, "points": [(2 + 1j, 3)], "labels": [1]})
@example(call={"z": 0, "points": [(20, 30)], "labels": [1], "multimask": "no"})
@example(call={"z": 0, "points": [(20, 30, 1), (1, 2, 3)], "labels": [1, 1, 1]})
def test_predict_gives_a_mask_or_names_the_problem(
    segmenter: Segmenter, call: dict[str, Any]
) -> None:
    pred = outcome(segmenter.predict, **call)
    if pred is not None:
        check_prediction(pred, call["z"])


A_PROMPT = spoilt(valid_prompt(), PROMPT_JUNK, most=1).map(lambda kwargs: Prompt(**kwargs))
NOT_A_PROMPT = st.sampled_from([None, {"points": [(1, 2)]}, (1, 2), "prompt", 3])


@pytest.mark.slow
@examples(30)
@given(
    call=spoilt(
        st.fixed_dictionaries(
            {
                "z": st.integers(0, SHAPE[0] - 1),
                "prompts": st.lists(A_PROMPT, max_size=3),
                "multimask": st.sampled_from([None, True, False]),
            }
        ),
        {
            "z": SLICE_INDEX,
            "prompts": st.one_of(
                st.lists(A_PROMPT | NOT_A_PROMPT, min_size=1, max_size=3),
                A_PROMPT,
                NOT_A_PROMPT,
                st.just(iter([Prompt(box=(5, 5, 30, 40))])),
            ),
            "multimask": FLAG,
        },
    )
)
@example(call={"z": 0, "prompts": Prompt(box=(5, 5, 30, 40))})
@example(call={"z": 0, "prompts": [None]})
def test_predict_many_gives_a_mask_per_prompt_or_names_the_problem(
    segmenter: Segmenter, call: dict[str, Any]
) -> None:
    preds = outcome(segmenter.predict_many, **call)
    if preds is not None:
        assert len(preds) == len(call["prompts"])
        for pred in preds:
            check_prediction(pred, call["z"])


ANNOTATION = st.sampled_from(
    [DISK, DISK.astype(np.uint8), np.where(DISK, 1.0, np.nan), np.zeros(SHAPE[1:], dtype=bool)]
) | st.sampled_from([np.ones((3, 3), dtype=bool), DISK[None], [[True], [True, False]], "mask"])


@st.composite
def valid_propagation(draw: st.DrawFn) -> dict[str, Any]:
    """The disk drawn on a slice, perhaps on others too, carried through some or all."""
    index = st.integers(0, SHAPE[0] - 1)
    z = draw(index)
    others = draw(st.sets(index.filter(lambda other: other != z)))
    first, last = sorted(draw(st.lists(index, min_size=2, max_size=2)))
    return {
        "z": z,
        "mask": draw(st.sampled_from([DISK, DISK.astype(np.uint8)])),
        "annotations": {other: DISK for other in others} or None,
        "z_range": draw(st.sampled_from([None, (first, last)])),
        "direction": draw(st.sampled_from(["both", "forward", "backward"])),
        "projection": draw(st.sampled_from(PROJECTIONS)),
        "stop": draw(st.sampled_from([None, StopRule(min_score=0.1)])),
    }


@pytest.mark.slow
@examples(15)
@given(
    call=spoilt(
        valid_propagation(),
        {
            "z": SLICE_INDEX,
            "mask": ANNOTATION | st.none(),
            "annotations": st.one_of(
                st.dictionaries(SLICE_INDEX.filter(lambda z: not isinstance(z, list)), ANNOTATION),
                st.sampled_from([[DISK], "annotations", {}]),
            ),
            "z_range": st.one_of(
                st.tuples(SLICE_INDEX, SLICE_INDEX),
                st.lists(st.integers(-1, 3), max_size=3),
                st.sampled_from([3, "ab", (0.5, 2), (2, 0)]),
            ),
            "direction": st.sampled_from(["up", None, 3, ("both",), np.array(["both", "up"])]),
            "projection": st.sampled_from(["lasso", None, 1, ["box"]]),
            "stop": st.sampled_from([StopRule(min_score=math.nan), "strict", {"min_score": 1}]),
        },
    )
)
# found here: a float or True slice was numpy's IndexError (True wrote every slice), a
# 3-slice z_range an unpacking error, a list of masks a TypeError from dict()
@example(call={"z": 1.5, "mask": DISK})
@example(call={"z": True, "mask": DISK})
@example(call={"z": 1, "mask": DISK, "z_range": (0, 1, 2)})
@example(call={"z": 1, "mask": DISK, "annotations": [DISK]})
@example(call={"z": 1, "mask": [[True], [True, False]]})
def test_propagate_gives_a_volume_or_names_the_problem(
    segmenter: Segmenter, call: dict[str, Any]
) -> None:
    result = outcome(segmenter.propagate, **call)
    if result is not None:
        assert result.shape == SHAPE and result.dtype == bool
        drawn = dict(call.get("annotations") or {})
        if call.get("mask") is not None:
            drawn[call.get("z") or 0] = call["mask"]
        for z, mask in drawn.items():
            np.testing.assert_array_equal(result[z], np.asarray(mask) != 0)


# -- volumes --------------------------------------------------------------------------------

# Values span every float's range: beyond float32, ranges narrower than float32 can scale,
# flat images of values from 2**53 up, float16 ranges beyond float16 (found by this file,
# fixed in volume/intensity.py; pinned by test_extreme_intensities_are_scaled_or_refused).
NOT_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf])
VOLUME_DTYPES = st.sampled_from([np.int8, np.uint8, np.uint16, np.int32, np.float16]) | (
    st.sampled_from([np.float32, np.float64, np.dtype(">f4"), bool, np.complex64])
)


@st.composite
def arrays(draw: st.DrawFn, min_dims: int, max_dims: int, min_side: int) -> np.ndarray:
    dtype = np.dtype(draw(VOLUME_DTYPES))
    shape = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=5)
    if dtype.kind != "f":
        return draw(hnp.arrays(dtype, shape))
    finfo = np.finfo(dtype)
    values = (
        st.floats(float(finfo.min), float(finfo.max), allow_nan=False, width=finfo.bits)
        | st.floats(-1e-30, 1e-30)
        | NOT_NUMBERS
    )
    return draw(hnp.arrays(np.float64, shape, elements=values)).astype(dtype)


VOLUME_CALL = spoilt(
    st.fixed_dictionaries({"array": arrays(min_dims=2, max_dims=3, min_side=1)}),
    {
        "array": arrays(min_dims=0, max_dims=6, min_side=0),
        "axes": st.one_of(
            st.text(alphabet="TCZYXQSAtczyx", max_size=7),
            st.sampled_from(["YX", "ZYX", "YXC", "CYX", "TZYX", "TCZYX", 3, ["Y", "X"], b"YX"]),
        ),
        "limits": st.one_of(
            st.tuples(st.integers(-300, 300), st.integers(-300, 300)),
            st.tuples(st.sampled_from([math.nan, math.inf, -math.inf, 0.5, "a"]), st.just(1)),
            st.lists(st.integers(0, 300), max_size=3),
            st.sampled_from(["ab", 3, None]),
        ),
        "level": st.one_of(st.integers(-2, 3), st.sampled_from([1.5, "1", True, None])),
        "channel": st.one_of(st.integers(-2, 4), st.sampled_from([1.5, "1", True])),
        "time": st.one_of(st.integers(-2, 4), st.sampled_from([1.5, "1", True])),
    },
    most=3,
)


@examples(150)
@given(call=VOLUME_CALL)
def test_open_volume_gives_a_volume_or_names_the_problem(call: dict[str, Any]) -> None:
    array = call["array"]
    options = {name: value for name, value in call.items() if name != "array"}
    volume = outcome(sg.open_volume, array, **options)
    if volume is None:
        return
    assert 1 <= len(volume) <= max(array.size, 1)
    assert len(volume.fingerprint()) == 64
    image = outcome(volume.model_slice, len(volume) - 1)  # NaN pixels: a named ValueError
    if image is not None:
        assert image.shape == (*volume.slice_shape, *((3,) if volume.rgb else ()))
        assert image.dtype == np.float32
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 255


@pytest.mark.parametrize(
    ("array", "limits"),
    [
        (np.array([[-1e308, 1e308], [2, 3]]), None),  # wider than float32
        (np.full((4, 4), 2**64 - 1, np.uint64), None),  # flat, lo + 1 == lo
        (np.full((4, 4), 2.0**53, np.float32), None),
        (np.zeros((4, 4)), (0, 1e-320)),  # 255 / (high - low) overflows
        (np.zeros((4, 4)), (-1e308, 1e308)),
        (np.array([[3e4, -4e4]], np.float16), None),  # its range is beyond float16
    ],
)
def test_extreme_intensities_are_scaled_or_refused(array: np.ndarray, limits: Any) -> None:
    volume = outcome(sg.open_volume, array, limits=limits)
    image = None if volume is None else outcome(volume.model_slice, 0)
    assert image is None or np.isfinite(image).all()
    if limits is None:  # limits chosen from the data always work
        assert image is not None


# -- labels ---------------------------------------------------------------------------------

LABELS_SHAPE = (3, 16, 20)


@pytest.fixture(scope="module")
def labels_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sg.LabelsStore]:
    path = tmp_path_factory.mktemp("labels") / "labels.ome.zarr"
    store = sg.LabelsStore.create(path, LABELS_SHAPE, chunks=(1, 16, 20))
    yield store
    store.close()


@st.composite
def valid_commit(draw: st.DrawFn) -> dict[str, Any]:
    """A rectangle on a slice (or through the volume), a free id or none, any overlap."""
    (y0, y1), (x0, x1) = (
        sorted(draw(st.sets(st.integers(0, n), min_size=2, max_size=2))) for n in LABELS_SHAPE[1:]
    )
    flat = draw(st.booleans())
    mask = np.zeros(LABELS_SHAPE[1:] if flat else LABELS_SHAPE, dtype=bool)
    mask[..., y0:y1, x0:x1] = True
    return {
        "mask": mask,
        "z": draw(st.integers(0, LABELS_SHAPE[0] - 1)) if flat else None,
        "label_id": draw(st.none() | st.integers(1, 1000)),
        "overlap": draw(st.sampled_from(["keep", "overwrite"])),
        "record": draw(st.sampled_from([None, {"prompt": [1, 2]}, {"score": np.float32(0.9)}])),
    }


@st.composite
def junk_masks(draw: st.DrawFn) -> Any:
    shape = draw(
        st.sampled_from([LABELS_SHAPE[1:], LABELS_SHAPE, (1, 16, 20), (20, 16), (16,), ()])
        | hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3)
    )
    dtype = draw(st.sampled_from([bool, np.uint8, np.int64, np.float32, np.complex64, object]))
    if dtype is object:
        return np.full(shape, draw(st.sampled_from([None, "a", 1])), dtype=object)
    if dtype is bool:
        return draw(hnp.arrays(dtype, shape))
    zero_one = st.sampled_from([0, 1])
    return draw(hnp.arrays(dtype, shape, elements=draw(st.sampled_from([zero_one, None]))))


COMMIT_CALL = spoilt(
    valid_commit(),
    {
        "mask": junk_masks() | st.sampled_from([[[1, 0]], "mask", None, [[True], [True, False]]]),
        "z": SLICE_INDEX,
        "label_id": st.one_of(
            st.integers(-3, 0),
            st.sampled_from([MAX_ID + 1, 2**64, -(2**63), True, 1.5, "3", np.int64(7)]),
        ),
        "overlap": st.sampled_from(["KEEP", "", None, 1, ["keep"]]),
        "record": st.one_of(
            st.dictionaries(
                st.text(max_size=3),
                ANY_FLOAT
                | st.integers()
                | st.sampled_from([np.arange(3), {1, 2}, b"x", (1, 2), np.float64(math.nan)]),
                max_size=3,
            ),
            st.sampled_from([[], "record", 3, {(1, 2): 3}, {"a": {"b": math.inf}}]),
        ),
    },
)


@examples(60)
@given(call=COMMIT_CALL)
# found here: a ragged list was numpy's "inhomogeneous shape" ValueError
@example(call={"mask": [[True], [True, False]], "z": 0})
def test_commit_adds_an_object_or_names_the_problem(
    labels_store: sg.LabelsStore, call: dict[str, Any]
) -> None:
    new_id = outcome(labels_store.commit, **call)
    if new_id is None:
        return
    try:
        assert isinstance(new_id, int) and 1 <= new_id <= MAX_ID
        assert (labels_store.read() == new_id).any()
        assert labels_store.log()[-1]["id"] == new_id
    finally:
        assert labels_store.undo() == new_id  # an empty store for the next example
    assert not labels_store.read().any()


# -- the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of things that are not volumes, named like volumes, and one real image."""
    folder = tmp_path_factory.mktemp("sources")
    (folder / "text.tif").write_text("hello\n")
    (folder / "empty.tif").write_bytes(b"")
    (folder / "empty.zarr").write_bytes(b"")
    (folder / "folder.tif").mkdir()
    (folder / "plain.zarr").mkdir()
    for name, metadata in [
        ("group.zarr", '{"zarr_format": 3, "node_type": "group"}'),
        ("broken.zarr", "nonsense"),
        ("half.zarr", '{"zarr_format": 3, "node_type": "array"}'),
    ]:
        (folder / name).mkdir()
        (folder / name / "zarr.json").write_text(metadata)
    tifffile.imwrite(folder / "image.tif", np.where(_disk((24, 32), (12, 16), 6), 200, 20))
    return folder


def assert_cli_refuses(argv: list[str]) -> None:
    """``napari-segany argv`` fails with one line saying why (argparse: usage, then one)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse
            status = exit_.code
    lines = err.getvalue().strip().splitlines()
    assert status in (1, 2), f"exit {status} for {argv}: {err.getvalue()!r}"
    assert lines, f"exit {status} and nothing on stderr for {argv}"
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("napari-segany: error: "), lines
    else:
        assert lines[0].startswith("usage: "), lines
        assert all(line.startswith(" ") for line in lines[1:-1]), lines
        assert lines[-1].startswith("napari-segany") and ": error: " in lines[-1], lines
    for word in INTERNAL_WORDS:
        assert word not in lines[-1], f"library words for {argv}: {lines[-1]!r}"


ARGUMENT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8
).filter(lambda text: not text.startswith("-"))
NUMBER_TEXT = ARGUMENT | st.sampled_from(
    ["0", "1", "-1", "1e3", "nan", "inf", "2.5", "", " 3", "99999999999999999999"]
)
EMBED_OPTIONS = {
    "--model": ARGUMENT,
    "--out": ARGUMENT,
    "--axes": ARGUMENT,
    "--level": NUMBER_TEXT,
    "--channel": NUMBER_TEXT,
    "--time": NUMBER_TEXT,
    "--batch-size": NUMBER_TEXT,
    "--device": ARGUMENT | st.sampled_from(["auto", "cpu", "gpu", ""]),
    "--tile-size": NUMBER_TEXT,
    "--halo": NUMBER_TEXT,
}


@st.composite
def embed_options(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(EMBED_OPTIONS)), max_size=3)):
        argv += [name, draw(EMBED_OPTIONS[name])]
    return argv + sorted(draw(st.sets(st.sampled_from(["--recompute", "--no-progress"]))))


NOT_A_VOLUME = st.sampled_from(
    ["text.tif", "empty.tif", "empty.zarr", "folder.tif", "plain.zarr", "group.zarr"]
) | st.sampled_from(["broken.zarr", "half.zarr", "missing.tif", "missing.zarr", "."])


@examples(60)
@given(
    source=NOT_A_VOLUME | ARGUMENT.filter(lambda text: "/" not in text).map(lambda t: f"new/{t}"),
    options=embed_options(),
    # argparse echoes an unrecognised argument as it is: a line break in it breaks the line
    extra=st.lists(ARGUMENT.filter(lambda text: len(text.splitlines()) <= 1), max_size=1),
)
@example(source="half.zarr", options=[], extra=[])  # zarr's KeyError 'data_type'
@example(source="broken.zarr", options=[], extra=[])  # json's "Expecting value"
def test_embed_refuses_what_is_not_a_volume_in_one_line(
    sources: Path, source: str, options: list[str], extra: list[str]
) -> None:
    assert_cli_refuses(["embed", str(sources / source), *options, *extra])


def _is_device(name: str) -> bool:
    if name == "auto":
        return True
    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


UNUSABLE_OPTION = st.one_of(  # for the 2D image.tif, whatever comes before them
    st.tuples(st.just("--axes"), st.text("TCZYXQAyx", max_size=6).filter(lambda a: len(a) != 2)),
    st.tuples(st.just("--level"), st.sampled_from(["1", "2", "7"])),
    st.tuples(st.just("--channel"), st.sampled_from(["0", "1", "5"])),
    st.tuples(st.just("--time"), st.sampled_from(["0", "1"])),
    st.tuples(st.just("--out"), st.sampled_from(["image.tif", "image.tif/store.zarr"])),
    st.tuples(st.just("--device"), ARGUMENT.filter(lambda name: not _is_device(name))),
)


@examples(40)
@given(unusable=UNUSABLE_OPTION, options=embed_options())
def test_embed_refuses_options_that_do_not_fit_an_image_in_one_line(
    sources: Path, unusable: tuple[str, str], options: list[str]
) -> None:
    # the unusable option comes last, so it wins over the same option among the others and
    # the command stops before loading a model
    name, value = unusable
    if name == "--out":
        value = str(sources / value)
    assert_cli_refuses(["embed", str(sources / "image.tif"), *options, name, value])
