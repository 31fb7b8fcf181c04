import errno
import re
import signal
from pathlib import Path

import pytest

from paramdelta import errors
from paramdelta.errors import (
    CheckError,
    CheckpointError,
    GitHubError,
    HubError,
    Interrupted,
    LocalFileError,
    MissingLegsError,
    MissingResultError,
    MissingRevisionError,
    NotFoundError,
    ParamDeltaError,
    PublishConflictError,
    UnexpectedError,
    UsageError,
    as_error,
    interruption,
    local_io,
)

README = Path(__file__).resolve().parents[1] / "README.md"

# One class per exit code, in exit-code order (what is not found is a kind of HubError).
BY_CODE = [
    (UnexpectedError, 1),
    (UsageError, 2),
    (CheckpointError, 3),
    (HubError, 4),
    (PublishConflictError, 5),
    (GitHubError, 6),
    (LocalFileError, 7),
    (MissingResultError, 8),
    (CheckError, 9),
    (MissingLegsError, 10),
]


def _error_classes():
    """Every ParamDeltaError subclass the module defines (not the base)."""
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, ParamDeltaError)
        and value is not ParamDeltaError
    ]


def test_each_error_class_has_its_own_exit_code():
    missing = (NotFoundError, MissingRevisionError)
    assert [(cls, cls.exit_code) for cls in _error_classes() if cls not in missing] == BY_CODE
    for cls in missing:
        assert cls.__bases__ == (HubError,) and cls.exit_code == 4
    assert ParamDeltaError.exit_code == 1


def test_the_readme_exit_code_table_is_the_classes_codes():
    section = README.read_text().split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    codes = re.findall(r"^\| (\d+(?:, \d+)*) \|", section, re.MULTILINE)
    assert codes == ["0", *(str(code) for _, code in BY_CODE), "130, 143"]


def test_a_check_error_carries_its_details():
    error = CheckError("perplexity: merged 1168 is over 3 x 258.5", {"ratio": 4.5})
    assert (str(error), error.details) == (
        "perplexity: merged 1168 is over 3 x 258.5",
        {"ratio": 4.5},
    )
    assert CheckError("could not run").details is None


@pytest.mark.parametrize(
    ("os_error", "path", "message"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "/out/x",
            "/out/x: No space left on device",
        ),
        (  # the path given wins over the one the OSError names
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/tmp/a"),
            Path("/tmp/b"),
            "/tmp/b: No such file or directory",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/etc/shadow"),
            None,
            "/etc/shadow: Permission denied",
        ),
        (OSError("disk on fire"), None, "file system: disk on fire"),  # no strerror, no file
    ],
)
def test_an_os_error_is_a_local_file_error_naming_the_path(os_error, path, message):
    error = LocalFileError.from_os_error(os_error, path)
    assert (type(error), str(error), error.exit_code) == (LocalFileError, message, 7)


def test_as_error_keeps_our_errors_and_names_the_rest():
    ours = UsageError("--alpha: must be positive")
    assert as_error(ours) is ours
    missing = as_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/w.st"))
    assert (type(missing), str(missing)) == (LocalFileError, "/w.st: No such file or directory")
    bug = as_error(KeyError("weight"))
    assert (type(bug), bug.exit_code) == (UnexpectedError, 1)
    assert str(bug) == (
        "unexpected KeyError: 'weight' (a bug; set PARAMDELTA_DEBUG=1 for a traceback)"
    )
    assert str(as_error(ValueError("bad"))) == (
        "unexpected ValueError: bad (a bug; set PARAMDELTA_DEBUG=1 for a traceback)"
    )


def test_local_io_names_the_path_and_chains_the_os_error(tmp_path):
    target = tmp_path / "out" / "model.safetensors"
    with pytest.raises(LocalFileError) as e, local_io(target):
        target.write_bytes(b"x")  # its folder does not exist
    assert str(e.value) == f"{target}: No such file or directory"
    assert isinstance(e.value.__cause__, FileNotFoundError)


def test_local_io_lets_other_exceptions_through():
    with pytest.raises(ValueError, match=r"^not a file error$"), local_io("/somewhere"):
        raise ValueError("not a file error")
    with local_io("/somewhere"):
        pass  # nothing raised, nothing changed


@pytest.mark.parametrize(
    ("signum", "code", "text"),
    [(signal.SIGINT, 130, "interrupted (SIGINT)"), (signal.SIGTERM, 143, "interrupted (SIGTERM)")],
)
def test_an_interruption_exits_128_plus_its_signal(signum, code, text):
    stop = Interrupted(signum)
    assert (stop.exit_code, str(stop), stop.signum) == (code, text, signum)
    assert isinstance(stop, KeyboardInterrupt) and not isinstance(stop, Exception)


def test_interruption_turns_a_plain_ctrl_c_into_sigint():
    assert Interrupted().exit_code == 130
    plain = interruption(KeyboardInterrupt())
    assert (type(plain), plain.exit_code) == (Interrupted, 130)
    term = Interrupted(signal.SIGTERM)
    assert interruption(term) is term
