from __future__ import annotations

import pickle
import subprocess
import sys

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


@pytest.mark.parametrize("raised,printed", [
    ("RequestError('prompt_mode must be one of [auto, box], got wrong')",
     "error: prompt_mode must be one of [auto, box], got wrong"),
    ("InputFileError('scan.nii', 'unreadable')", "error: scan.nii: unreadable"),
])
def test_one_line_errors_print_a_refusal_and_exit_1_even_when_wrapped(raised, printed):
    """MONAI's config parser re-raises what a component raised as the cause of its own error."""
    code = ("from segmote_monai.errors import InputFileError, RequestError, one_line_errors\n"
            "one_line_errors()\n"
            f"try:\n    raise {raised}\nexcept ValueError as e:\n    raise RuntimeError('component failed') from e\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip() == printed


def test_other_errors_keep_their_traceback():
    code = "from segmote_monai.errors import one_line_errors\none_line_errors()\nraise KeyError('x')\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" in run.stderr
