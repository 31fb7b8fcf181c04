"""Result records that the results, summary and issues tests share."""

from paramdelta.reporting.results import TargetResult

LLAMA = "llama-3.1-8b-instruct"


def failed(target=LLAMA, error="HubError: 503 from the Hub", sha="a" * 40):
    return TargetResult(
        target=target,
        status="failed",
        new_base_repo="meta-llama/Llama-3.1-8B",
        new_base_sha=sha,
        error=error,
        exit_code=4,
        duration_s=12.5,
    )


def published(target=LLAMA, sha="b" * 40):
    return TargetResult(
        target=target,
        status="published",
        output_repo="acme/Llama-3.1-8B-Instruct-ParamDelta",
        new_base_repo="meta-llama/Llama-3.1-8B",
        new_base_sha=sha,
        url="https://huggingface.co/acme/Llama-3.1-8B-Instruct-ParamDelta/commit/c0ffee",
        exit_code=0,
        duration_s=125.4,
    )


def quiet(status):
    return TargetResult(target="mistral", status=status, exit_code=0, duration_s=0.4)
