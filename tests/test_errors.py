from __future__ import annotations

import pickle

import pytest

from segmote_monai.errors import CheckpointMismatchError, InputFileError, RequestError


@pytest.mark.parametrize("error", [RequestError("bad box"), InputFileError("a.nii", "unreadable"),
                                   CheckpointMismatchError("m.pt", "other backbone")])
def test_errors_are_value_errors_with_one_line_that_survive_pickling(error):
    assert isinstance(error, ValueError) and "\n" not in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)


def test_where_starlette_is_installed_a_refusal_is_an_http_400_with_its_reason():
    """MONAI Label 0.8.5 answers any other exception with a bare 500; FastAPI answers this one with the reason."""
    exceptions = pytest.importorskip("starlette.exceptions")
    error = InputFileError("boxes", "box 0 lies outside the image")
    assert isinstance(error, exceptions.HTTPException)
    assert (error.status_code, error.detail) == (400, "boxes: box 0 lies outside the image")
    assert str(error) == "boxes: box 0 lies outside the image"
